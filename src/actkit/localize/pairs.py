"""Prompt pairs: a clean and a corrupt prompt of the same token length, and the answer and foil tokens.

Patching compares the two runs position by position, so the prompts must tokenize to the same length (the usual
practice: swap a word for a word of the same token count, such as one name for another). Prompts of different
lengths are refused, showing where the two tokenizations first differ; actkit does not guess an alignment.

Answers are single tokens. An answer given without leading whitespace after a prompt that does not end in
whitespace is read as a new word (``Anna`` after ``... a book to`` is the token `` Anna``), which is what a
person typing ``--answer Anna`` means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from actkit.errors import ActkitError


@dataclass(frozen=True)
class PromptPair:
    """Token ids (1, T) of both prompts, the answer and foil token ids, and the tokens as text for labels."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    answer: int
    foil: int | None
    tokens: list[str]

    @property
    def length(self) -> int:
        return int(self.clean.shape[1])


def _ids(tokenizer: Any, text: str, **kwargs: Any) -> list[int]:
    return [int(i) for i in tokenizer(text, **kwargs)["input_ids"]]


def answer_token(tokenizer: Any, prompt: str, text: str, what: str = "answer") -> int:
    """The one token id of `text` as the continuation of `prompt` (see the module docstring for spaces)."""
    if not text.strip():
        raise ActkitError(f"the {what} is empty; give the token the model should predict, such as 'Anna'")
    word = text if text[:1].isspace() or prompt[-1:].isspace() else " " + text
    ids = _ids(tokenizer, word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ActkitError(f"the {what} {word!r} is {len(ids)} tokens {pieces}, not one; patching metrics compare "
                          "single next tokens, so give a word the tokenizer keeps whole (or its first token)")
    return ids[0]


def prompt_pair(tokenizer: Any, clean: str, corrupt: str, answer: str, foil: str | None = None) -> PromptPair:
    """Tokenize a pair for patching; refuses prompts whose token lengths differ, naming both tokenizations."""
    a, b = _ids(tokenizer, clean), _ids(tokenizer, corrupt)
    if not a:
        raise ActkitError("the clean prompt is empty")
    if len(a) != len(b):
        raise ActkitError(f"the clean prompt is {len(a)} tokens and the corrupt prompt {len(b)}: patching compares "
                          f"the runs position by position, so both must tokenize to the same length (swap words "
                          f"for words of the same token count). {first_difference(tokenizer, a, b)}")
    if a == b:
        raise ActkitError("the clean and corrupt prompts are the same tokens, so every patching effect is zero; "
                          "change the corrupt prompt")
    answer_id = answer_token(tokenizer, clean, answer)
    foil_id = None if foil is None else answer_token(tokenizer, clean, foil, "foil")
    if foil_id == answer_id:
        raise ActkitError("the answer and the foil are the same token; the logit difference would always be 0")
    labels = [tokenizer.decode([i]) for i in a]
    return PromptPair(torch.tensor([a]), torch.tensor([b]), answer_id, foil_id, labels)


def first_difference(tokenizer: Any, clean: list[int], corrupt: list[int], context: int = 3) -> str:
    """Where two tokenizations first differ, with up to `context` tokens either side from each: short enough to
    read for prompts of hundreds of tokens, where printing both in full would hide the one change."""
    at = next((k for k, (x, y) in enumerate(zip(clean, corrupt, strict=False)) if x != y), min(len(clean), len(corrupt)))
    start = max(0, at - context)

    def around(name: str, ids: list[int]) -> str:
        shown = ids[start:at + context + 1]
        if not shown:
            return f"{name} ends before it"
        pieces = [tokenizer.decode([i]) for i in shown]
        ends = " (the end)" if start + len(shown) == len(ids) else ""
        return f"{name} tokens {start}-{start + len(shown) - 1}: {pieces}{ends}"

    return f"They first differ at token {at}; {around('clean', clean)}; {around('corrupt', corrupt)}."


def name_mover_pairs(tokenizer: Any, sentences: Iterable[tuple[str, str]]) -> list[PromptPair]:
    """Name-mover sentences as patching pairs, the subject swapped.

    Clean: "When Anna and Tom went to the shop, Tom gave a book to" (answer Anna, foil Tom). Corrupt: the second
    mention of the repeated name becomes the other name ("..., Anna gave a book to"), which flips the answer:
    the standard subject swap of the IOI literature, the same length in tokens when every name is one token.

    Arguments:
        tokenizer: the model's tokenizer.
        sentences: (prompt, answer) pairs; the prompt names the answer once and the subject twice (the built-in
            corpus has them: ``[(d.prompt, d.label) for d in actkit.builtin.corpus.eval_set("name_mover", n)]``).

    Returns:
        One `PromptPair` per sentence.
    """
    pairs = []
    for prompt, answer in sentences:
        words = prompt.replace(",", " ,").split()
        subject = next((w for w in words if w != answer and words.count(w) == 2), None)
        if subject is None:
            raise ActkitError(f"{prompt!r} names no subject twice; a name-mover sentence repeats its subject "
                              "(\"When Anna and Tom went out, Tom gave a book to\")")
        head, sep, tail = prompt.rpartition(f" {subject} ")
        corrupt = f"{head}{sep.replace(subject, answer)}{tail}"
        pairs.append(prompt_pair(tokenizer, prompt, corrupt, answer, subject))
    return pairs
