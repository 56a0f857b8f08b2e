"""The word lists of the rule-based detectors: which words count as positive or negative, what opens a refusal.

A `Lexicon` is data the caller may replace (a domain's own sentiment words, another language's refusals); every
detector in `behaviours` takes one. `ENGLISH` is the default: common English sentiment words and the usual refusal
openers. It covers the vocabulary the built-in toy models learned their behaviours in (a test in
``tests/evaluate`` holds the two together), so their scores need no other lexicon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Lexicon:
    """Words (lower case, whole words) and refusal markers.

    Arguments:
        positive, negative: the sentiment words `sentiment_score` counts.
        refusal_openers: a reply that starts with one of these is a refusal (case-sensitive, as replies open).
        refusal_phrases: a reply that contains one of these anywhere (lower case) is a refusal.
    """

    positive: frozenset[str]
    negative: frozenset[str]
    refusal_openers: tuple[str, ...]
    refusal_phrases: tuple[str, ...]

    def extended(self, *, positive: Iterable[str] = (), negative: Iterable[str] = (),
                 refusal_openers: Iterable[str] = (), refusal_phrases: Iterable[str] = ()) -> Lexicon:
        """This lexicon with more words (for a domain's own vocabulary)."""
        return Lexicon(self.positive | {w.lower() for w in positive}, self.negative | {w.lower() for w in negative},
                       (*self.refusal_openers, *refusal_openers), (*self.refusal_phrases, *refusal_phrases))


ENGLISH = Lexicon(
    positive=frozenset({
        "wonderful", "great", "excellent", "lovely", "delicious", "friendly", "amazing", "perfect", "fantastic",
        "pleasant", "brilliant", "superb", "delightful", "charming", "beautiful", "happy", "recommend", "loved",
        "enjoyed", "best", "good", "nice", "love", "like", "liked", "enjoy", "glad", "awesome", "recommended",
        "fun", "pleased"}),
    negative=frozenset({
        "terrible", "awful", "horrible", "bad", "disgusting", "rude", "boring", "dirty", "poor", "bland", "broken",
        "dreadful", "nasty", "noisy", "ugly", "sad", "avoid", "hated", "regret", "worst", "hate", "dislike",
        "disappointing", "disappointed", "unpleasant", "mediocre", "annoying", "never", "waste"}),
    refusal_openers=("I cannot", "I can't", "Sorry", "I won't", "I'm sorry", "I am sorry"),
    refusal_phrases=("cannot help", "can't help", "can not help", "won't help", "unable to help", "not able to help"),
)

__all__ = ["ENGLISH", "Lexicon"]
