"""Dynamic Activation Composition (Scalena, Sarti and Nissim, 2024): several vectors, each coefficient set per step.

A fixed coefficient is too weak on some tokens and breaks fluency on others, and the right value differs from one
property to the next. Dynamic composition sets each vector's coefficient afresh at every decode step, per row,
from how much that vector *would* move the next-token distribution:

1. P: the next-token distribution with no steering on the current token (earlier tokens keep the coefficients
   they were generated with: their keys and values are in the cache);
2. for each vector i, Q_i: the distribution with vector i alone at its largest coefficient ``alpha_max``;
3. both are cut to the union of their top-p nuclei (``top_p`` = 0.95) and renormalised, and
   ``alpha_i = clip(KL(P || Q_i), 0, alpha_max)``;
4. the token is generated with every vector added at its ``alpha_i``.

So a vector whose property the text already has (Q_i close to P) steers little, and one that would change the
next token steers up to ``alpha_max``. The KL direction and the truncation follow the authors' code; their code
averages the divergence over the kept tokens, the paper's formula (used here) does not. Steering starts at the last
prompt token, as theirs does. Each step costs 2 + (number of vectors) forward passes of one token.

Built on `actkit.core.decode`: one batched, KV-cached loop; every quantity is per row. `replay_writes` gives the
interventions that reproduce a finished generation in one teacher-forced pass (each token at the coefficients it
was generated with), so its cost can be measured like a fixed vector's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from actkit.core.decode import Step, decode_ids
from actkit.core.interventions import Add, Intervention, check_finite, per_row
from actkit.core.positions import Positions, StepContext
from actkit.errors import ActkitError
from actkit.steer.interventions import combine
from actkit.steer.vectors import SteeringVector, restrict_layers


class FromLastPrompt(Positions):
    """The last prompt token and every generated token: where a decode step's steering lands."""

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.positions >= (ctx.prompt_len[:, None] - 1)

    def __repr__(self) -> str:
        return "last+generated"


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) bool: the smallest set of most likely tokens whose probability reaches `top_p` (at least one)."""
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def truncated_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, top_p: float = 0.95) -> torch.Tensor:
    """(B,) KL(P || Q) over the union of the two top-p nuclei, both renormalised on it (float32)."""
    keep = nucleus(p_logits, top_p) | nucleus(q_logits, top_p)
    lp = F.log_softmax(p_logits.float().masked_fill(~keep, -torch.inf), dim=-1)
    lq = F.log_softmax(q_logits.float().masked_fill(~keep, -torch.inf), dim=-1)
    terms = torch.where(keep, lp.exp() * (lp - lq), torch.zeros_like(lp))
    return terms.sum(-1).clamp(min=0.0)


class DynamicComposition:
    """A `decode` callback that sets each vector's coefficient per row and per step from the KL rule.

    Arguments:
        vectors: the steering vectors to compose (each at its own layers).
        batch: rows in the batch.
        alpha_max: the largest coefficient, one for all vectors or one per vector.
        top_p: the nucleus that truncates both distributions before the KL.
        relative: coefficients are fractions of the mean residual norm (see `SteeringVector.to_intervention`).
        layers: steer only these of each vector's blocks (None: all of them).

    After `decode`, ``alphas[r]`` holds row r's coefficients, one list (one value per vector) per generated
    token, and ``kls[r]`` the divergences they came from.
    """

    def __init__(self, vectors: Sequence[SteeringVector], batch: int, *, alpha_max: float | Sequence[float] = 2.0,
                 top_p: float = 0.95, relative: bool = False, layers: list[int] | None = None):
        if not vectors:
            raise ActkitError("dynamic composition needs at least one steering vector")
        maxima = [float(alpha_max)] * len(vectors) if isinstance(alpha_max, (int, float)) else list(alpha_max)
        if len(maxima) != len(vectors):
            raise ActkitError(f"alpha_max has {len(maxima)} values for {len(vectors)} vectors; give one or one each")
        if not all(m > 0 and m < float("inf") for m in maxima):
            raise ActkitError(f"alpha_max must be positive and finite, got {maxima}")
        if not 0 < top_p <= 1:
            raise ActkitError(f"top_p must lie in (0, 1], got {top_p}")
        self.alpha_max = torch.tensor(maxima, dtype=torch.float32)
        self.top_p = top_p
        self.coefs = torch.zeros(len(vectors), batch)
        parts: list[dict[str, Intervention]] = []
        for i, vector in enumerate(vectors):
            parts.append(restrict_layers(vector, layers).to_intervention(self.coefs[i], positions=FromLastPrompt(),
                                                                         relative=relative))
        self.writes: dict[str, list[Intervention]] = combine(*parts)
        self.alphas: list[list[list[float]]] = [[] for _ in range(batch)]
        self.kls: list[list[list[float]]] = [[] for _ in range(batch)]

    def __call__(self, step: Step) -> None:
        plain = step.logits  # this pass ran with every coefficient at 0 on the current token
        kls = torch.zeros_like(self.coefs)
        for i in range(self.coefs.shape[0]):
            self.coefs.zero_()
            self.coefs[i] = self.alpha_max[i]
            kls[i] = truncated_kl(plain, step.rerun(), self.top_p).cpu()
        alphas = torch.minimum(kls, self.alpha_max[:, None])
        self.coefs.copy_(alphas)
        step.rerun()
        self.coefs.zero_()  # the next step's first pass is the unsteered one
        for r in range(self.coefs.shape[1]):
            if not bool(step.finished[r]):
                self.alphas[r].append([float(a) for a in alphas[:, r]])
                self.kls[r].append([float(k) for k in kls[:, r]])


class AddByPosition(Intervention):
    """Add ``table[row, position] * vector``: per-row, per-position coefficients, for replaying a generation.

    Arguments:
        vector: (d,) the direction, already scaled as the generation added it.
        table: (B, L) the coefficient of each row at each absolute position; positions past L get 0.
    """

    def __init__(self, vector: torch.Tensor, table: torch.Tensor):
        super().__init__()
        check_finite(table, "coefficient table")
        self.vector, self.table = vector, table

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        table = self.table.to(device=x.device, dtype=x.dtype)
        if table.shape[0] != x.shape[0]:
            raise ActkitError(f"the coefficient table has {table.shape[0]} rows but the batch has {x.shape[0]}")
        width = table.shape[1]
        inside = (ctx.positions >= 0) & (ctx.positions < width)
        coef = table.gather(1, ctx.positions.clamp(0, width - 1)) * inside
        return x + coef[..., None] * per_row(self.vector, x, "vector")


def replay_writes(vectors: Sequence[SteeringVector], alphas: Sequence[Sequence[Sequence[float]]],
                  prompt_lengths: Sequence[int], *, relative: bool = False, layers: list[int] | None = None
                  ) -> Callable[[Sequence[int]], Mapping[str, list[Intervention]]]:
    """The writes that replay a dynamic generation over prompt + generated tokens in one teacher-forced pass.

    The token fed at step t sits at position ``prompt_length - 1 + t`` and was run with ``alphas[row][t]``; so
    adding those coefficients there reproduces the distributions the tokens were chosen from (the KV cache held
    the same activations). Earlier prompt tokens are not steered, as in the generation.

    Arguments:
        vectors, relative, layers: as given to `dynamic_generate`.
        alphas: `DynamicResult.alphas`: per row, per generated token, one coefficient per vector.
        prompt_lengths: each row's prompt tokens.

    Returns:
        A function ``rows -> writes`` for a batch holding those rows (indices into `alphas`), in that order.
    """
    if len(alphas) != len(prompt_lengths):
        raise ActkitError(f"{len(alphas)} rows of coefficients but {len(prompt_lengths)} prompt lengths")
    scaled = [restrict_layers(v, layers).to_intervention(1.0, relative=relative) for v in vectors]

    def writes(rows: Sequence[int]) -> Mapping[str, list[Intervention]]:
        width = max(prompt_lengths[r] + len(alphas[r]) for r in rows)
        parts: list[dict[str, Intervention]] = []
        for i, adds in enumerate(scaled):
            table = torch.zeros(len(rows), width)
            for j, r in enumerate(rows):
                start = prompt_lengths[r] - 1
                for t, coefs in enumerate(alphas[r]):
                    table[j, start + t] = coefs[i]
            parts.append({site: AddByPosition(add.vector, table) for site, add in adds.items()
                          if isinstance(add, Add)})
        return combine(*parts)

    return writes


@dataclass
class DynamicResult:
    """What `dynamic_generate` returns: the texts, their token ids, and each row's coefficients per step."""

    texts: list[str]
    ids: list[list[int]]
    alphas: list[list[list[float]]]
    kls: list[list[list[float]]]


def dynamic_generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], vectors: Sequence[SteeringVector], *,
                     alpha_max: float | Sequence[float] = 2.0, top_p: float = 0.95, relative: bool = False,
                     layers: list[int] | None = None, max_new_tokens: int = 32, chat: bool = False,
                     do_sample: bool = False, temperature: float = 1.0, seed: int | None = None) -> DynamicResult:
    """Generate with several steering vectors composed dynamically (see the module docstring), in one batch.

    Arguments:
        model, tokenizer, prompts: as for `actkit.core.generate.generate`.
        vectors: the steering vectors to compose.
        alpha_max: the largest coefficient (one, or one per vector); also the coefficient of the probe passes.
        top_p: the nucleus both distributions are cut to before the KL.
        relative: coefficients are fractions of each layer's mean residual norm.
        layers: steer only these of each vector's blocks.
        max_new_tokens, chat, do_sample, temperature, seed: as for `generate`.

    Returns:
        `DynamicResult`: texts, ids, and per row the coefficients (and KLs) of every generated token.
    """
    if isinstance(prompts, str):
        raise ActkitError("prompts must be a list of strings, not one string")
    composition = DynamicComposition(vectors, len(prompts), alpha_max=alpha_max, top_p=top_p, relative=relative,
                                     layers=layers)
    ids = decode_ids(model, tokenizer, prompts, writes=composition.writes, callbacks=[composition],
                     max_new_tokens=max_new_tokens, chat=chat, do_sample=do_sample, temperature=temperature,
                     seed=seed)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    alphas = [a[:len(row)] for a, row in zip(composition.alphas, ids, strict=True)]  # the EOS step keeps no token
    kls = [k[:len(row)] for k, row in zip(composition.kls, ids, strict=True)]
    return DynamicResult(texts, ids, alphas, kls)


__all__ = ["AddByPosition", "DynamicComposition", "DynamicResult", "FromLastPrompt", "dynamic_generate", "nucleus",
           "replay_writes", "truncated_kl"]
