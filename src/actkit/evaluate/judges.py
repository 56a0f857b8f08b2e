"""Judges of steered text: concept presence, relevance to the instruction and fluency, each 0, 1 or 2.

AxBench scores every continuation on three criteria, 0-2 each, and combines them by their harmonic mean, so that a
continuation that is broken on any one criterion scores 0 (`harmonic`). Every judge here has one interface:
``judge.score(prompts, completions) -> list[Criteria]`` and ``judge.calibration`` (the thresholds it uses, stated
in every report). Three kinds, named as on the command line (`make_judge`):

- ``rules``: the concept by a rule on words (`Concept.rule`: ``positive`` counts the lexicon's sentiment words,
  ``refusal`` applies the refusal rules, ``words:a,b`` counts topic words; 2 for two hits or more, 1 for one);
  the instruction by the words a continuation shares with its prompt (0: empty, or a refusal when refusing is
  not the concept; 1: no content word of the prompt; 2: at least one); fluency from the likelihood (below).
- ``embed``: the concept and the instruction by MiniLM-L6 sentence embeddings (mean-pooled, unit length). The
  concept score of a text is ``cos(e, mean of the positive pair texts) - cos(e, mean of the negative ones)``; its
  thresholds are calibrated on labelled examples, the pairs' texts: 1 from the midpoint between the negative and
  the positive texts' mean scores, 2 from three quarters of the way to the positive mean. The instruction score
  is ``cos(prompt, continuation)``, calibrated on the unsteered model's continuations of the development prompts
  (matched: each with its own prompt; unmatched: with the next prompt's) in the same way. Fluency from the
  likelihood.
- ``openai:URL``: any OpenAI-compatible chat endpoint (``actkit serve``, vLLM, a hosted model) reads a rubric
  written for actkit and answers the three scores; replies are parsed robustly (`parse_scores`), a malformed reply
  or a failed request is retried a bounded number of times, then the judge stops with a clear error.

Fluency (``rules`` and ``embed``): the unsteered model's mean per-token negative log-likelihood of the continuation
given its prompt, calibrated on labelled examples: the unsteered continuations of the development prompts
(fluent) and the same continuations with their words shuffled (not fluent). 2 up to a quarter of the way from the
fluent mean to the shuffled mean, 1 up to the midpoint, 0 beyond (and for an empty continuation).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from actkit.errors import ActkitError
from actkit.evaluate.behaviours import is_refusal, sentiment_score
from actkit.evaluate.lexicon import ENGLISH, Lexicon
from actkit.evaluate.likelihood import continuation_logprobs, encode
from actkit.steer.pairs import Pair

CRITERIA = ("concept", "instruction", "fluency")
JUDGES = ("rules", "embed", "openai:URL")
_WORD = re.compile(r"[a-z']+")
_STOP = frozenset({"about", "after", "again", "also", "because", "been", "before", "being", "could", "does",
                   "from", "have", "here", "into", "just", "like", "more", "most", "much", "only", "other", "over",
                   "please", "some", "such", "than", "that", "their", "them", "then", "there", "these", "they",
                   "this", "very", "were", "what", "when", "where", "which", "while", "will", "with", "would",
                   "your", "user", "assistant"})


@dataclass(frozen=True)
class Criteria:
    """One continuation's scores, each 0, 1 or 2."""

    concept: int
    instruction: int
    fluency: int

    @property
    def harmonic(self) -> float:
        return harmonic(self.concept, self.instruction, self.fluency)


def harmonic(*scores: float) -> float:
    """The harmonic mean of the scores, 0 when any is 0 (a text broken on one criterion scores 0).

    Arguments:
        scores: non-negative numbers (at least one).

    Returns:
        ``len(scores) / sum(1 / s)``, or 0.0.
    """
    if not scores:
        raise ActkitError("harmonic needs at least one score")
    if any(s < 0 for s in scores):
        raise ActkitError(f"scores must be non-negative, got {scores}")
    if any(s == 0 for s in scores):
        return 0.0
    return len(scores) / sum(1.0 / s for s in scores)


@dataclass(frozen=True)
class Concept:
    """What a steering vector should bring into the text.

    Arguments:
        name: a short description (``"weddings"``, ``"positive sentiment"``); the embed and openai judges and the
            prompting baseline read it.
        instruction: the prompting baseline's instruction, written before the prompt.
        rule: how the ``rules`` judge finds it: ``positive``, ``refusal`` or ``words:w1,w2,...``.
    """

    name: str
    instruction: str
    rule: str = ""

    def rule_score(self, text: str, lexicon: Lexicon = ENGLISH) -> int:
        """The ``rules`` judge's concept score of `text`: 0, 1 or 2 (see the module docstring)."""
        kind = self.rule.split(":", 1)[0]
        if kind == "positive":
            return min(max(sentiment_score(text, lexicon), 0), 2)
        if kind == "refusal":
            return 2 if is_refusal(text, lexicon) else 0
        if kind == "words":
            words = {w.strip().lower() for w in self.rule.split(":", 1)[1].split(",") if w.strip()}
            hits = sum(w in words or (w.endswith("s") and w[:-1] in words) for w in _WORD.findall(text.lower()))
            return min(hits, 2)
        raise ActkitError(f"concept {self.name!r} has no rule the rules judge can apply ({self.rule!r}); give "
                          "positive, refusal or words:w1,w2,...")


def check_rule(rule: str) -> None:
    """Refuse a concept rule the ``rules`` judge cannot apply."""
    kind, _, words = rule.partition(":")
    if kind in ("positive", "refusal") and not words:
        return
    if kind == "words" and any(w.strip() for w in words.split(",")):
        return
    raise ActkitError(f"unknown concept rule {rule!r}; use positive, refusal or words:w1,w2,...")


class Judge(Protocol):
    """Scores continuations of prompts (0-2 per criterion) and states its calibration."""

    name: str

    @property
    def calibration(self) -> dict[str, Any]: ...

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Criteria]: ...


def _thresholds(low: Sequence[float], high: Sequence[float]) -> dict[str, float]:
    """Thresholds from labelled examples: 1 from the midpoint of the two class means, 2 from three quarters of the
    way from the low mean to the high mean."""
    lo, hi = sum(low) / len(low), sum(high) / len(high)
    return {"low_mean": lo, "high_mean": hi, "one": (lo + hi) / 2, "two": lo + 0.75 * (hi - lo)}


def _grade(value: float, t: dict[str, float]) -> int:
    return 2 if value >= t["two"] else 1 if value >= t["one"] else 0


@dataclass
class Fluency:
    """Fluency from the unsteered model's mean per-token NLL of a continuation given its prompt (module docstring).

    Arguments:
        model, tokenizer: the unsteered model.
        fluent: continuations known fluent (the unsteered ones) of `prompts`.
        prompts: their prompts.
        seed: the seed of the word shuffle that makes the disfluent examples.
    """

    model: Any
    tokenizer: Any
    fluent: Sequence[str]
    prompts: Sequence[str]
    seed: int = 0
    calibration: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        shuffled = []
        for text in self.fluent:
            words = text.split()
            rng.shuffle(words)
            shuffled.append(" " + " ".join(words))
        keep = [i for i, t in enumerate(self.fluent) if t.split()]
        if not keep:
            raise ActkitError("cannot calibrate fluency: every unsteered continuation is empty")
        good = self.nll([self.prompts[i] for i in keep], [self.fluent[i] for i in keep])
        bad = self.nll([self.prompts[i] for i in keep], [shuffled[i] for i in keep])
        g, b = sum(good) / len(good), sum(bad) / len(bad)
        b = max(b, g + 1e-6)
        self.calibration = {"fluent_mean_nll": g, "shuffled_mean_nll": b, "two_at_most": g + (b - g) / 4,
                            "one_at_most": (g + b) / 2}

    def nll(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Mean per-token NLL of each completion given its prompt (inf for an empty completion)."""
        rows = [encode(self.tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
        logps = continuation_logprobs(self.model, rows)
        return [float(-lp.mean()) if len(lp) else float("inf") for lp in logps]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[int]:
        c = self.calibration
        return [2 if v <= c["two_at_most"] else 1 if v <= c["one_at_most"] else 0
                for v in self.nll(prompts, completions)]


def _content(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 4 and w not in _STOP}


@dataclass
class RulesJudge:
    """The ``rules`` judge: the lexicons and refusal rules (module docstring)."""

    concept: Concept
    fluency: Fluency
    lexicon: Lexicon = ENGLISH
    name: str = "rules"

    def __post_init__(self) -> None:
        check_rule(self.concept.rule)

    @property
    def calibration(self) -> dict[str, Any]:
        return {"concept": f"rule {self.concept.rule}: 2 for two hits or more, 1 for one",
                "instruction": "0 empty or an unwanted refusal, 1 no content word of the prompt, 2 otherwise",
                "fluency": self.fluency.calibration}

    def _instruction(self, prompt: str, completion: str) -> int:
        if not _WORD.findall(completion.lower()):
            return 0
        if is_refusal(completion, self.lexicon):
            return 1 if self.concept.rule == "refusal" else 0
        return 2 if _content(prompt) & _content(completion) else 1

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Criteria]:
        fluency = self.fluency.score(prompts, completions)
        return [Criteria(self.concept.rule_score(c, self.lexicon), self._instruction(p, c), f)
                for p, c, f in zip(prompts, completions, fluency, strict=True)]


class Embedder:
    """Mean-pooled, unit-length sentence embeddings from a bare encoder (MiniLM-L6: ``actkit.load("minilm-l6")``)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else "." for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state.to(torch.float64)
            mask = enc["attention_mask"].to(torch.float64)[..., None]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1, dtype=torch.float64)


@dataclass
class EmbedJudge:
    """The ``embed`` judge: sentence-embedding similarity, thresholds calibrated on labelled examples."""

    concept: Concept
    fluency: Fluency
    embed: Callable[[Sequence[str]], torch.Tensor]
    pairs: Sequence[Pair]
    prompts: Sequence[str]
    unsteered: Sequence[str]
    name: str = "embed"
    _calibration: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.prompts) < 2:
            raise ActkitError("the embed judge calibrates on at least 2 development prompts")
        pos = self.embed([p.positive for p in self.pairs])
        neg = self.embed([p.negative for p in self.pairs])
        self._pos, self._neg = pos.mean(0), neg.mean(0)
        concept = _thresholds(self._concept(neg).tolist(), self._concept(pos).tolist())
        e_p, e_c = self.embed(list(self.prompts)), self.embed(list(self.unsteered))
        matched = (e_p * e_c).sum(-1).tolist()
        unmatched = (e_p * e_c.roll(-1, 0)).sum(-1).tolist()
        self._calibration = {"concept": concept, "instruction": _thresholds(unmatched, matched),
                             "fluency": self.fluency.calibration}

    @property
    def calibration(self) -> dict[str, Any]:
        return self._calibration

    def _concept(self, e: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize
        return e @ unit(self._pos, dim=0) - e @ unit(self._neg, dim=0)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Criteria]:
        e_c, e_p = self.embed(list(completions)), self.embed(list(prompts))
        concept = self._concept(e_c).tolist()
        relevance = (e_p * e_c).sum(-1).tolist()
        fluency = self.fluency.score(prompts, completions)
        out = []
        for c, r, f, text in zip(concept, relevance, fluency, completions, strict=True):
            empty = not text.strip()
            out.append(Criteria(0 if empty else _grade(c, self._calibration["concept"]),
                                0 if empty else _grade(r, self._calibration["instruction"]), f))
        return out


RUBRIC = """You grade one continuation written by a language model. Score three criteria, each 0, 1 or 2.

concept: does the continuation show the concept "{concept}"?
  0 = not at all; 1 = weakly or in passing; 2 = clearly.
instruction: is the continuation a sensible continuation of, or answer to, the prompt?
  0 = unrelated or no answer; 1 = loosely related; 2 = clearly related.
fluency: is the continuation fluent, grammatical text?
  0 = broken, repetitive or gibberish; 1 = understandable with flaws; 2 = fluent.

Prompt:
<<<{prompt}>>>

Continuation:
<<<{completion}>>>

Reply with exactly three lines and nothing else:
concept: N
instruction: N
fluency: N"""


def parse_scores(reply: str) -> Criteria | None:
    """The three scores in a judge's reply, or None when the reply does not hold all three.

    Accepts ``name: N`` lines (any case, with ``=``, ``-``, markdown bold or ``N/2``), or a JSON object
    ``{"concept": N, ...}`` anywhere in the reply. A score outside 0-2 or a missing criterion gives None.
    """
    obj = _json_object(reply)
    if obj is not None and any(key in obj for key in CRITERIA):
        found = {key: _integer(obj.get(key)) for key in CRITERIA}
    else:
        found = {}
        for key in CRITERIA:
            hits = re.findall(rf"\b{key}\W{{0,4}}[:=\-]\W{{0,3}}(\d+)(?![\d.])(?:\s*/\s*2)?", reply,
                              flags=re.IGNORECASE)
            found[key] = int(hits[0]) if len(set(hits)) == 1 else None
    if any(v is None or not 0 <= v <= 2 for v in found.values()):
        return None
    return Criteria(*(int(found[key]) for key in CRITERIA))  # type: ignore[arg-type]


def _json_object(reply: str) -> dict[str, Any] | None:
    match = re.search(r"\{[^{}]*\}", reply)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _integer(value: Any) -> int | None:
    """An integer score from JSON (``2``, ``2.0`` or ``"2"``), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass
class OpenAIJudge:
    """The ``openai:URL`` judge: a chat model behind an OpenAI-compatible endpoint reads `RUBRIC`.

    Arguments:
        concept: the concept.
        url: the base URL as OpenAI clients take it (``http://localhost:8000/v1``); requests go to
            ``URL/chat/completions``.
        model: the model name sent with each request (None: the first one ``URL/models`` lists).
        attempts: tries per continuation (a failed request or a malformed reply uses one) before a clear error.
        timeout: seconds per request.
        backoff: seconds to wait before the second try, doubled at each further one.
        api_key: sent as a bearer token when given.
    """

    concept: Concept
    url: str
    model: str | None = None
    attempts: int = 3
    timeout: float = 30.0
    backoff: float = 0.5
    api_key: str | None = None
    name: str = "openai"

    def __post_init__(self) -> None:
        if not re.match(r"https?://", self.url):
            raise ActkitError(f"judge URL {self.url!r} must start with http:// or https:// "
                              "(for example openai:http://localhost:8000/v1)")
        if self.attempts < 1:
            raise ActkitError(f"attempts must be at least 1, got {self.attempts}")
        self.url = self.url.rstrip("/")
        self.name = f"openai:{self.url}"

    @property
    def calibration(self) -> dict[str, Any]:
        return {"rubric": "RUBRIC in actkit.evaluate.judges, 0-2 per criterion", "model": self.model,
                "attempts": self.attempts, "temperature": 0}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = httpx.request(method, self.url + path, json=body, headers=headers, timeout=self.timeout)
                if response.status_code == 200:
                    return response.json()
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except (httpx.HTTPError, ValueError) as error:
                last = f"{type(error).__name__}: {error}"
        raise ActkitError(f"the judge endpoint {self.url + path} failed {self.attempts} time(s); last: {last}. "
                          "Check that the server runs and the URL ends where OpenAI clients expect (…/v1)")

    def _model(self) -> str:
        if self.model is None:
            listing = self._request("GET", "/models")
            try:
                self.model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise ActkitError(f"the judge endpoint {self.url}/models lists no model; name one") from None
        return self.model

    def grade(self, prompt: str, completion: str) -> Criteria:
        """One continuation's scores; malformed replies are retried, then a clear error."""
        body = {"model": self._model(), "temperature": 0, "max_tokens": 64, "messages": [
            {"role": "user", "content": RUBRIC.format(concept=self.concept.name, prompt=prompt,
                                                      completion=completion)}]}
        reply = ""
        for _ in range(self.attempts):
            answer = self._request("POST", "/chat/completions", body)
            try:
                reply = str(answer["choices"][0]["message"]["content"])
            except (KeyError, IndexError, TypeError):
                reply = json.dumps(answer)[:200]
                continue
            scores = parse_scores(reply)
            if scores is not None:
                return scores
        shown = reply if len(reply) <= 160 else reply[:157] + "..."
        raise ActkitError(f"the judge at {self.url} gave no parsable scores in {self.attempts} tries (last reply: "
                          f"{shown!r}); it must answer 'concept: N', 'instruction: N', 'fluency: N' with N in 0-2")

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Criteria]:
        return [self.grade(p, c) for p, c in zip(prompts, completions, strict=True)]


def check_judge(spec: str) -> None:
    """Refuse a judge name that is not ``rules``, ``embed`` or ``openai:URL``."""
    if spec in ("rules", "embed") or (spec.startswith("openai:") and len(spec) > len("openai:")):
        return
    raise ActkitError(f"unknown judge {spec!r}; use rules, embed or openai:URL (an OpenAI-compatible endpoint, "
                      "for example openai:http://localhost:8000/v1)")


def make_judge(
    spec: str,
    concept: Concept,
    *,
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    prompts: Sequence[str],
    unsteered: Sequence[str],
    embedder: Callable[[Sequence[str]], torch.Tensor] | None = None,
    judge_model: str | None = None,
    api_key: str | None = None,
    lexicon: Lexicon = ENGLISH,
) -> Judge:
    """A judge by name, calibrated where it needs to be.

    Arguments:
        spec: ``rules``, ``embed`` or ``openai:URL``.
        concept: the concept steered towards.
        model, tokenizer: the unsteered model (fluency of ``rules`` and ``embed``).
        pairs: labelled concept examples (the training pairs) for ``embed``'s calibration.
        prompts: development prompts, and `unsteered` their unsteered continuations (labelled fluent and on topic).
        embedder: texts -> unit embeddings, for ``embed`` (an `Embedder` over MiniLM-L6).
        judge_model, api_key: for ``openai:URL``.
        lexicon: the words of the ``rules`` judge.

    Returns:
        A `Judge`.
    """
    check_judge(spec)
    if spec.startswith("openai:"):
        return OpenAIJudge(concept, spec.removeprefix("openai:"), model=judge_model, api_key=api_key)
    fluency = Fluency(model, tokenizer, unsteered, prompts)
    if spec == "rules":
        return RulesJudge(concept, fluency, lexicon)
    if embedder is None:
        raise ActkitError("the embed judge needs sentence embeddings: pass embedder=Embedder(*load('minilm-l6'))")
    return EmbedJudge(concept, fluency, embedder, pairs, prompts, unsteered)


__all__ = ["CRITERIA", "JUDGES", "RUBRIC", "Concept", "Criteria", "EmbedJudge", "Embedder", "Fluency", "Judge",
           "OpenAIJudge", "RulesJudge", "check_judge", "check_rule", "harmonic", "make_judge", "parse_scores"]
