"""Behaviour shift against capability cost: what a steering intervention buys, and what it costs the model.

A steering vector is only useful in a window of coefficients: too small and the behaviour does not move, too large
and the model stops modelling text. So every steering result here is reported as a curve, one row per coefficient:

- ``behaviour``: a score of the steered continuations of some prompts (the fraction that are positive, refused,
  mention a topic...), from `generate` (greedy by default, batched, left-padded);
- ``kl``: the mean per-token KL divergence ``KL(base || steered)`` of the next-token distributions on reference
  texts, in nats: how far the steered model's predictions move from the unsteered ones, token by token;
- ``perplexity``: the steered model's perplexity on the same reference texts.

Both costs are measured with the intervention applied by a plain forward pass over the texts. A vector given as
a `SteeringVector` is applied at every token there, whatever positions steer the generations, because in a
forward pass without a cache every token is a prompt token and ``generated`` would steer nothing; so the cost
is the one the model pays at each token it is steered at.

`random_control(vector)` gives the Rogue Scalpel check: a random direction with the same norm at each layer,
whose effect a real direction must clearly exceed before its effect is credited to the direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from actkit.core.collect import token_batches
from actkit.core.generate import generate
from actkit.core.hooks import tap
from actkit.errors import ActkitError
from actkit.evaluate.behaviours import is_refusal, sentiment_label
from actkit.evaluate.perplexity import nll
from actkit.steer.vectors import SteeringVector

#: A behaviour score: completions -> a number (higher = more of the behaviour).
Score = Callable[[Sequence[str]], float]
#: What to sweep: a vector (scaled by the coefficient) or a function coefficient -> writes for ``tap``.
Steer = SteeringVector | Callable[[float], Mapping[str, Any]]


def _fraction(flags: Sequence[bool]) -> float:
    if not flags:
        raise ActkitError("no completions to score")
    return sum(flags) / len(flags)


def positive_fraction(completions: Sequence[str]) -> float:
    """The fraction of completions whose `sentiment_label` is positive."""
    return _fraction([sentiment_label(c) == "positive" for c in completions])


def refusal_fraction(completions: Sequence[str]) -> float:
    """The fraction of completions that are refusals (`is_refusal`)."""
    return _fraction([is_refusal(c) for c in completions])


def mention_fraction(words: Sequence[str]) -> Score:
    """A score: the fraction of completions that contain at least one of `words` (whole words, any case).

    Arguments:
        words: the topic's words (``["wedding", "bride", ...]``); a word matches its plural with an ``s`` too.

    Returns:
        A function completions -> fraction.
    """
    import re

    if not words:
        raise ActkitError("mention_fraction needs at least one word")
    pattern = re.compile(r"\b(" + "|".join(re.escape(w.lower()) for w in words) + r")s?\b")
    return lambda completions: _fraction([bool(pattern.search(c.lower())) for c in completions])


SCORES: dict[str, Score] = {"positive": positive_fraction, "refusal": refusal_fraction}


def kl_to_base(model: Any, tokenizer: Any, texts: Sequence[str], writes: Mapping[str, Any] | None, *,
               batch_size: int = 16) -> float:
    """Mean per-token ``KL(base || steered)`` of the next-token distributions over `texts`, in nats.

    Arguments:
        model: a causal language model.
        tokenizer: its tokenizer (``tokenizer(texts)["input_ids"]``).
        texts: reference texts; every real token position of every text counts once (padding never does).
        writes: the intervention (site -> interventions, as for ``tap``); None or empty gives 0.
        batch_size: texts per forward pass.

    Returns:
        The mean KL over token positions (float64 arithmetic).
    """
    if not texts:
        raise ActkitError("no texts to measure the KL divergence on")
    if not writes:
        return 0.0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    # one row per text, whole and right-padded: every row starts at position 0
    for batch in token_batches(texts, tokenizer, limit=None, batch_size=batch_size, split=False):
        ids, mask = batch.ids.to(device), batch.mask.long().to(device)
        with torch.inference_mode():
            base = model(input_ids=ids, attention_mask=mask).logits.to(torch.float64)
            with tap(model, write=writes):
                steered = model(input_ids=ids, attention_mask=mask).logits.to(torch.float64)
        log_p, log_q = F.log_softmax(base, -1), F.log_softmax(steered, -1)
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
        real = mask.bool()
        total += float(per_token[real].sum())
        count += int(real.sum())
    return total / max(count, 1)


def steered_perplexity(model: Any, tokenizer: Any, texts: Sequence[str], writes: Mapping[str, Any] | None, *,
                       batch_size: int = 16) -> float:
    """Perplexity on `texts` with `writes` applied (the plain model's when `writes` is None or empty)."""
    with tap(model, write=writes or {}):
        total, count = nll(model, tokenizer, texts, batch_size=batch_size)
    if count == 0:
        raise ActkitError("no tokens to score: every text is empty or a single token")
    return math.exp(total / count)


def _score(score: Score | str) -> Score:
    if callable(score):
        return score
    if score not in SCORES:
        raise ActkitError(f"unknown score {score!r}; use one of {', '.join(SCORES)} or pass a function")
    return SCORES[score]


def sweep(
    model: Any,
    tokenizer: Any,
    steer: Steer,
    coefs: Sequence[float],
    prompts: Sequence[str],
    score: Score | str,
    *,
    texts: Sequence[str] | None = None,
    relative: bool = False,
    positions: str | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    chat: bool = False,
    keep_completions: bool = False,
) -> list[dict[str, Any]]:
    """Steer at each coefficient and measure the behaviour, the KL to the base model and the perplexity.

    Arguments:
        model: a causal language model.
        tokenizer: its tokenizer.
        steer: a `SteeringVector` (added at ``coef``, see `SteeringVector.to_intervention`) or a function
            ``coef -> writes`` for anything else (ablations, conditional steering, several vectors).
        coefs: the coefficients, in the order the rows should come back; 0 is the unsteered model.
        prompts: the prompts whose greedy continuations are scored.
        score: completions -> number, or ``"positive"`` / ``"refusal"`` (`positive_fraction`, `refusal_fraction`).
        texts: reference texts for the KL and the perplexity (default: the prompts).
        relative: coefficients are fractions of the mean residual norm (a `SteeringVector` only).
        positions: which tokens to steer while generating (a `SteeringVector` only; default all).
        max_new_tokens: tokens generated per prompt.
        batch_size: prompts per `generate` call and texts per forward pass.
        chat: wrap the prompts with the tokenizer's chat template.
        keep_completions: also return each row's completions.

    Returns:
        One dict per coefficient: ``coef``, ``behaviour``, ``kl`` (nats per token), ``perplexity`` and, when
        asked, ``completions``.
    """
    if not coefs:
        raise ActkitError("no coefficients to sweep")
    if not prompts:
        raise ActkitError("no prompts to steer")
    scorer = _score(score)
    reference = list(texts) if texts is not None else list(prompts)
    gen_writes: Callable[[float], Mapping[str, Any]]
    cost_writes: Callable[[float], Mapping[str, Any]]
    if isinstance(steer, SteeringVector):
        gen_writes, cost_writes = _vector_writes(steer, positions, relative)
    elif callable(steer):
        if relative or positions is not None:
            raise ActkitError("relative and positions apply to a SteeringVector; build them into the writes")
        gen_writes = cost_writes = steer
    else:
        raise ActkitError(f"steer must be a SteeringVector or a function coef -> writes, got {type(steer).__name__}")
    rows: list[dict[str, Any]] = []
    for c in coefs:
        coef = float(c)
        steered = coef != 0.0
        completions = generate(model, tokenizer, list(prompts), writes=gen_writes(coef) if steered else None,
                               max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size)
        writes = cost_writes(coef) if steered else None
        row: dict[str, Any] = {
            "coef": coef,
            "behaviour": float(scorer(completions)),
            "kl": kl_to_base(model, tokenizer, reference, writes, batch_size=batch_size),
            "perplexity": steered_perplexity(model, tokenizer, reference, writes, batch_size=batch_size),
        }
        if keep_completions:
            row["completions"] = completions
        rows.append(row)
    return rows


def _vector_writes(vector: SteeringVector, positions: str | None, relative: bool
                   ) -> tuple[Callable[[float], Mapping[str, Any]], Callable[[float], Mapping[str, Any]]]:
    """The writes for generating (at `positions`) and for measuring the cost (at every token)."""

    def for_generation(coef: float) -> Mapping[str, Any]:
        return vector.to_intervention(coef, positions=positions, relative=relative)

    def for_cost(coef: float) -> Mapping[str, Any]:
        return vector.to_intervention(coef, relative=relative)

    return for_generation, for_cost


def random_control(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A random direction at each layer of `vector`, with the same norm there (the Rogue Scalpel check).

    Arguments:
        vector: the real vector.
        seed: the seed of the Gaussian draw (the global random state is not touched).

    Returns:
        A `SteeringVector` with the same layers, norms, site and metadata (``method="random"``).
    """
    g = torch.Generator().manual_seed(seed)
    directions = {}
    for layer, v in vector.directions.items():
        r = torch.randn(v.shape[0], generator=g, dtype=torch.float64)
        directions[layer] = (r / r.norm() * float(v.norm())).to(torch.float32)
    meta = {**vector.metadata, "method": "random", "random_seed": seed}
    return SteeringVector(directions, site=vector.site, metadata=meta)


__all__ = ["SCORES", "Score", "Steer", "kl_to_base", "mention_fraction", "positive_fraction", "random_control",
           "refusal_fraction", "steered_perplexity", "sweep"]
