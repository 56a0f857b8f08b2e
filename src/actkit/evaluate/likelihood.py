"""Likelihood scores of steering (Pres et al.): how a steered model ranks the completion that shows a behaviour.

Generation scores depend on decoding and on a judge; the log-probability of fixed completions depends on neither.
For each contrast pair the two texts are split at their longest common token prefix: the prefix is the context,
the two remainders are the behaviour-matching and the non-matching completions (for CAA's A/B lines that is the
question with the shared ``" ("``, then ``"A)"`` against ``"B)"``). The **margin** of a pair is

    log p(matching | context) - log p(non-matching | context)

summed over each completion's tokens, under the steered model (the writes applied at every token). A steering
method that works raises the margin above the unsteered model's.

All scores here come from one teacher-forced pass per batch (`continuation_logprobs`): contexts and
continuations are given as token ids, rows are right-padded, and padding is never scored. When a pair's two texts
share no first token, there is no context to predict the first token from: the first token of each text is then
the context (and is not scored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from actkit.core.collect import context_length
from actkit.core.hooks import tap
from actkit.errors import ActkitError
from actkit.steer.pairs import Pair, as_pairs

#: A scored row: the context's token ids and the continuation's token ids.
Row = tuple[list[int], list[int]]
#: The intervention of a teacher-forced pass: one for every row, or a function of the batch's row indices giving
#: the writes for those rows in that order (a method that steered each row its own way while generating).
Writes = Mapping[str, Any] | Callable[[list[int]], Mapping[str, Any]] | None


def encode(tokenizer: Any, context: str, continuation: str) -> Row:
    """Token ids of `context` (special tokens as the tokenizer adds them) and of `continuation` (none added).

    An empty context makes the continuation's first token the context (it has nothing to be predicted from).
    """
    if context:
        return list(tokenizer(context)["input_ids"]), list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(continuation)["input_ids"])
    return ids[:1], ids[1:]


def _batches(rows: Sequence[Row], batch_size: int) -> Iterator[list[tuple[int, Row]]]:
    indexed = list(enumerate(rows))
    for start in range(0, len(indexed), batch_size):
        yield indexed[start:start + batch_size]


def continuation_log_softmax(
    model: Any,
    rows: Sequence[Row],
    writes: Writes = None,
    *,
    batch_size: int = 8,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """For each row, the next-token log-distributions at its continuation's tokens.

    Arguments:
        model: a causal language model.
        rows: (context ids, continuation ids); every context holds at least one token.
        writes: the intervention applied at every token (None: the plain model), or per batch (`Writes`).
        batch_size: rows per forward pass.

    Yields:
        ``(row index, continuation ids (n,), log-probabilities (n, V) in float64)`` in row order.
    """
    if batch_size < 1:
        raise ActkitError(f"batch_size must be at least 1, got {batch_size}")
    limit = context_length(model)
    device = next(model.parameters()).device
    pad = 0
    for batch in _batches(rows, batch_size):
        lengths = []
        for i, (ctx, cont) in batch:
            if not ctx:
                raise ActkitError(f"row {i}: the context holds no token; a continuation needs one to follow")
            if len(ctx) + len(cont) > limit:
                raise ActkitError(f"row {i} has {len(ctx) + len(cont)} tokens, more than the model's context of "
                                  f"{limit}; shorten the prompt or the continuation")
            lengths.append(len(ctx) + len(cont))
        width = max(lengths)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (_, (ctx, cont)) in enumerate(batch):
            full = ctx + cont
            ids[r, :len(full)] = torch.tensor(full, dtype=torch.long)
            mask[r, :len(full)] = 1
        chosen = writes([i for i, _ in batch]) if callable(writes) else writes
        with torch.inference_mode(), (tap(model, write=chosen) if chosen else nullcontext()):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for r, (i, (ctx, cont)) in enumerate(batch):
            start = len(ctx)
            scores = logits[r, start - 1:start - 1 + len(cont)].to(torch.float64)
            yield i, torch.tensor(cont, dtype=torch.long), F.log_softmax(scores, -1).cpu()


def continuation_logprobs(model: Any, rows: Sequence[Row], writes: Mapping[str, Any] | None = None, *,
                          batch_size: int = 8) -> list[torch.Tensor]:
    """The log-probability of each continuation token given everything before it: one (n,) float64 per row."""
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(rows)
    for i, cont, log_p in continuation_log_softmax(model, rows, writes, batch_size=batch_size):
        out[i] = log_p.gather(-1, cont[:, None])[:, 0] if len(cont) else torch.zeros(0, dtype=torch.float64)
    return out


def split_pair(tokenizer: Any, pair: Pair) -> tuple[Row, Row]:
    """A pair as (matching row, non-matching row): its texts cut at their longest common token prefix."""
    pos, neg = list(tokenizer(pair.positive)["input_ids"]), list(tokenizer(pair.negative)["input_ids"])
    common = 0
    while common < min(len(pos), len(neg)) and pos[common] == neg[common]:
        common += 1
    common = max(common, 1)
    return (pos[:common], pos[common:]), (neg[:common], neg[common:])


def likelihood_margins(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair] | Sequence[Sequence[str]],
    writes: Mapping[str, Any] | None = None,
    *,
    context: Callable[[str], str] | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The log-probability margin of the behaviour-matching over the non-matching completion, per pair and on average.

    Arguments:
        model: a causal language model.
        tokenizer: its tokenizer.
        pairs: contrast pairs (``positive`` shows the behaviour); see the module docstring for the split.
        writes: the steering intervention, applied at every token (None: the unsteered model).
        context: rewrite each pair's shared context before scoring (the prompting baseline puts its instruction
            there); the completions are kept as token ids.
        batch_size: rows per forward pass.

    Returns:
        ``{"margins": [per pair, nats], "mean": float, "accuracy": fraction of pairs with margin > 0}``.
    """
    items = as_pairs(pairs)
    rows: list[Row] = []
    for pair in items:
        matching, other = split_pair(tokenizer, pair)
        if context is not None:
            text = tokenizer.decode(matching[0], skip_special_tokens=True)
            ctx = list(tokenizer(context(text))["input_ids"])
            matching, other = (ctx, matching[1]), (ctx, other[1])
        rows += [matching, other]
    logps = continuation_logprobs(model, rows, writes, batch_size=batch_size)
    margins = [float(logps[2 * k].sum() - logps[2 * k + 1].sum()) for k in range(len(items))]
    return {"margins": margins, "mean": sum(margins) / len(margins),
            "accuracy": sum(m > 0 for m in margins) / len(margins)}


def kl_on_continuations(model: Any, base_rows: Sequence[Row], rows: Sequence[Row], writes: Writes = None, *,
                        batch_size: int = 8) -> float:
    """Mean per-token ``KL(base || method)`` over continuation tokens, in nats.

    Arguments:
        model: the model.
        base_rows: (context, continuation) as the unsteered model sees them.
        rows: the same continuations as the method sees them (its own context: the prompting baseline adds an
            instruction); each must have the same continuation ids as its base row.
        writes: the method's intervention (None: none), or per batch (`Writes`).
        batch_size: rows per forward pass.

    Returns:
        The mean over all continuation tokens (0 when there are none).
    """
    if len(base_rows) != len(rows):
        raise ActkitError(f"{len(base_rows)} base rows but {len(rows)} method rows")
    base = {i: lp for i, _, lp in continuation_log_softmax(model, base_rows, None, batch_size=batch_size)}
    total, count = 0.0, 0
    for i, _, log_q in continuation_log_softmax(model, rows, writes, batch_size=batch_size):
        log_p = base.pop(i)
        if log_p.shape != log_q.shape:
            raise ActkitError(f"row {i}: the base and method continuations differ in length")
        total += float((log_p.exp() * (log_p - log_q)).sum())
        count += log_p.shape[0]
    return total / count if count else 0.0


__all__ = ["Row", "Writes", "continuation_log_softmax", "continuation_logprobs", "encode", "kl_on_continuations",
           "likelihood_margins", "split_pair"]
