"""The serving engine: continuous batching of token requests, each row with its own steering.

One background thread runs the loop. Each iteration admits waiting requests up to ``max_batch`` (each one's prompt
is run ALONE, a batch of one without padding, so its first token and its prompt log-probabilities are those of
`actkit.generate` / a plain forward), then runs one decode step for all active rows together, samples one token
per row, and removes the rows that finished (EOS, ``max_new_tokens``, cancel, error) at once.

The batch's KV cache is one left-padded `DynamicCache`; it is re-packed (each row's keys and values left-padded to
the longest, concatenated along the batch) only when rows join or leave. Every decode step passes the attention
mask (zeros on padding) and explicit position ids (each row's count of real tokens), so a row's attention and
positions are those it would have alone. A request's writes are built for one row; when the batch's rows change
they are restricted to that request's row and registered through `tap` with each row's prompt length (so
``Prompt()`` and ``Generated()`` mean what they mean in `actkit.generate`), and the hooks stay registered for the
decode steps until the rows change again. The rows' plain adds at a site (steering vectors) are folded into one
add of a (rows, d) vector with per-row coefficients and position spans, each row computed exactly as its own
`Add`; any other write is restricted to its row with `OnRows`. An exception raised by one request's write ends
that request (``Finished(reason="error")``) and leaves the other rows of the same forward untouched.

A request may also ask for per-token probe scores (``monitor``: read in its prefill and in the decode steps, no
extra pass) and go through a latent guard (``guard``: `actkit.monitor.ProbeGate` scores its prompt in its prefill,
so the decision to flag, refuse or steer it is made before its first token, for that row alone).
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from actkit.core.anatomy import Anatomy
from actkit.core.generate import eos_ids, position_limit
from actkit.core.hooks import READ_ONLY, Tap, tap
from actkit.core.interventions import Add, Intervention, OnRows
from actkit.core.positions import All, From, Generated, Last, Positions, Prompt, StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.monitor import Probe, guard_writes
from actkit.monitor.guard import ACTIONS
from actkit.steer import combine


@dataclass
class GenerationRequest:
    """One request, already tokenized (the caller applies the chat template).

    Attributes:
        prompt_ids: the prompt's token ids (at least one).
        max_new_tokens: tokens to generate at most; 0 runs the prompt only (for its log-probabilities).
        temperature: 0 for greedy decoding (argmax), else sampling from softmax(logits / temperature).
        top_p: nucleus sampling: the smallest set of tokens whose probability reaches top_p.
        seed: the seed of this request's own random generator (None: an unpredictable one).
        writes: site -> intervention(s), built for ONE row exactly as ``actkit generate`` builds them.
        prompt_logprobs: None, or k >= 0: each prompt token's log-probability (from token 1 on) and the top k.
        logprobs: None, or k >= 0: the same for every generated token.
        eos_token_ids: the ids that end generation (None: the model's generation config's).
        monitor: name -> `Probe`: every prompt token's score and each generated token's (the score at the position
            that produced it, as `actkit.monitor.monitor_generate` gives it), read in the passes that generate.
        guard: a latent guard decided on the prompt in its prefill, before any token (`Guard`).
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    writes: Mapping[str, Intervention | list[Intervention]] | None = None
    prompt_logprobs: int | None = None
    logprobs: int | None = None
    eos_token_ids: frozenset[int] | None = None
    monitor: Mapping[str, Probe] | None = None
    guard: Guard | None = None


@dataclass(frozen=True)
class Guard:
    """A latent guard: the prompt's score on `probe` (`actkit.monitor.ProbeGate`, in the prefill) decides.

    Attributes:
        probe: the probe; a score above its threshold flags the prompt.
        action: ``flag`` (generate as usual; the decision is reported), ``refuse`` (a flagged request generates
            nothing and ends with ``Finished(reason="refused")``) or ``steer`` (`writes` apply to a flagged request
            from its prefill on, exactly as `actkit.monitor.guarded_generate` applies them).
        writes: steer's writes, built for one row, at sites the probe's site precedes.
    """

    probe: Probe
    action: str = "flag"
    writes: Mapping[str, Intervention | list[Intervention]] | None = None


@dataclass
class Token:
    """One generated token (an EOS token ends the stream and is not sent as a Token). ``scores``: the monitor's
    scores of the position that produced it. The first token of a request also carries what `Finished` carries
    about the prompt (log-probabilities, the monitor's prompt scores, the guard's decision), so a stream can send
    them first and a reply cut by a stop string keeps them."""

    id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    prompt_logprobs: list[tuple[float | None, dict[int, float]]] | None = None
    scores: dict[str, float] | None = None
    prompt_scores: dict[str, list[float]] | None = None
    guard: tuple[float, bool] | None = None


@dataclass
class Finished:
    """The last event of a stream. ``completion_tokens`` counts the Token events sent (the EOS is not one).
    ``prompt_scores`` holds the monitor's scores of the prompt tokens; ``guard`` the guard's (score, flagged)."""

    reason: str  # "stop" (EOS), "length" (max_new_tokens), "cancelled", "error", "refused" (by the guard)
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: list[tuple[float | None, dict[int, float]]] | None = None
    error: str | None = None
    prompt_scores: dict[str, list[float]] | None = None
    guard: tuple[float, bool] | None = None


class Stream:
    """The events of one request: `Token` events, then one `Finished`."""

    def __init__(self) -> None:
        self._events: queue.Queue[Token | Finished] = queue.Queue()
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[Token | Finished]:
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, Finished):
                return

    def get(self, timeout: float | None = None) -> Token | Finished:
        """The next event; `queue.Empty` after `timeout` seconds without one."""
        return self._events.get(timeout=timeout)

    def drain(self, timeout: float | None = None) -> list[Token | Finished]:
        """The next event and every one already queued behind it (up to the `Finished`); `queue.Empty` after
        `timeout` seconds without one. One wait for many tokens: what a consumer on another thread wants."""
        events = [self._events.get(timeout=timeout)]
        while not isinstance(events[-1], Finished):
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        return events

    def cancel(self) -> None:
        """End the request before its next step (a client disconnect, a stop string); its row is freed."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, event: Token | Finished) -> None:
        self._events.put(event)


@dataclass
class _Row:
    """A request being served: where it stands, and the first error its writes raised."""

    request: GenerationRequest
    stream: Stream
    eos: frozenset[int]
    generator: torch.Generator | None
    generated: int = 0
    pending: int = -1  # the last sampled token, not yet in the cache
    error: str | None = None
    prompt_logprobs: list[tuple[float | None, dict[int, float]]] | None = None
    prompt_scores: dict[str, list[float]] | None = None
    scores: dict[str, float] | None = None  # the monitor's scores of the position read last (the next token's)
    guard: tuple[float, bool] | None = None
    writes: list[tuple[str, list[Intervention]]] = field(init=False)

    def __post_init__(self) -> None:
        self.writes = [(str(Site.parse(raw)), _as_list(values)) for raw, values in (self.request.writes or {}).items()]

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def monitored(self) -> dict[str, list[tuple[str, Probe]]]:
        """site -> the (name, probe) pairs this request monitors there."""
        out: dict[str, list[tuple[str, Probe]]] = {}
        for name, probe in (self.request.monitor or {}).items():
            out.setdefault(probe.site, []).append((name, probe))
        return out

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = f"{type(error).__name__}: {error}"


class _GuardedPositions(Positions):
    """A row's positions rule; an exception ends that row's request and selects nothing instead of propagating."""

    def __init__(self, inner: Positions, row: _Row):
        self.inner = inner
        self.row = row

    def select(self, ctx: StepContext) -> torch.Tensor:
        if self.row.error is None:
            try:
                return self.inner.mask(ctx)
            except Exception as error:
                self.row.fail(error)
        return torch.zeros_like(ctx.valid)


class _Guarded(Intervention):
    """One request's write in the shared batch: if it raises, that request fails and its row keeps its value,
    so the forward goes on for the other rows unchanged."""

    def __init__(self, inner: OnRows, row: _Row):
        super().__init__(_GuardedPositions(inner.positions, row))
        self.inner = inner
        self.row = row

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.row.error is not None:
            return x
        try:
            return self.inner(x, mask, ctx)
        except Exception as error:
            self.row.fail(error)
            return x

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.inner.edit(x, ctx)


_FAR = 2**62
#: The position rules a folded add turns into one span [lo, hi) of absolute positions per row (exact types only:
#: a subclass may select otherwise).
_SPANS: dict[type[Positions], Callable[[Positions, int], tuple[int, int]]] = {
    All: lambda p, n: (0, _FAR),
    Prompt: lambda p, n: (0, n),
    Generated: lambda p, n: (n, _FAR),
    Last: lambda p, n: (n - 1, n),
    From: lambda p, n: (cast(From, p).start, _FAR),
}


class _Spans(Positions):
    """Per row, the tokens at absolute positions in [lo, hi): the rows' rules of a folded add in one comparison.

    In a decode step the engine knows each row's one position, so it tells the spans first (`step`): the step's
    mask is then worked out in Python and kept while it does not change (in decode it rarely does), instead of
    four tensor operations per step.
    """

    def __init__(self, bounds: list[tuple[int, int]], device: torch.device):
        both = torch.tensor(bounds, dtype=torch.long, device=device).reshape(-1, 2)
        self.bounds = bounds
        self.lo, self.hi = both[:, :1], both[:, 1:]
        self.current: torch.Tensor | None = None  # the mask of the decode step about to run
        self._kept: tuple[tuple[bool, ...], torch.Tensor] | None = None

    def step(self, positions: list[int]) -> None:
        """The next pass is a decode step whose row r feeds its token at `positions[r]`."""
        key = tuple(lo <= p < hi for p, (lo, hi) in zip(positions, self.bounds, strict=True))
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, torch.tensor(key, device=self.lo.device)[:, None])
        self.current = self._kept[1]

    def mask(self, ctx: StepContext) -> torch.Tensor:
        current, self.current = self.current, None
        if current is not None and ctx.positions.shape == current.shape:  # the step `step` described
            return current
        return super().mask(ctx)

    def select(self, ctx: StepContext) -> torch.Tensor:
        return (ctx.positions >= self.lo) & (ctx.positions < self.hi)


class _Fold(Add):
    """The k-th `Add` of several rows at one site, as ONE add of a (B, d) vector with (B,) coefficients: each row
    gets ``x + coef * vector`` at its own positions, computed exactly as its own `Add` computes it, and the other
    rows keep their values bit for bit. If it raises, all its rows fail and keep their values."""

    def __init__(self, vector: torch.Tensor, coef: torch.Tensor, spans: _Spans, rows: list[_Row]):
        super().__init__(vector, coef, spans)
        self.spans = spans
        self.rows = rows
        self.delta = coef[:, None] * vector  # (B, d): each row's coef * vector, as its own Add computes it
        self._step: tuple[torch.Tensor, torch.Tensor] | None = None  # a decode step's mask, and delta * mask

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        try:
            delta = self.delta
            if x.dim() != 3 or x.dtype != delta.dtype or x.device != delta.device or x.shape[0] != delta.shape[0] \
                    or x.shape[-1] != delta.shape[-1]:
                return super().__call__(x, mask, ctx)  # the general path (and its errors)
            if x.shape[1] == 1 and mask.shape == (x.shape[0], 1):  # a decode step: one add
                if self._step is None or self._step[0] is not mask:
                    self._step = (mask, (delta * mask)[:, None, :])  # delta where selected, else 0: x + 0 is x
                return x + self._step[1]
            return torch.where(mask[..., None], x + delta[:, None, :], x)  # no step-by-step broadcasting rules
        except Exception as error:
            for row in self.rows:
                row.fail(error)
            return x


def _foldable(value: Intervention) -> tuple[torch.Tensor, float | torch.Tensor, Positions] | None:
    """(vector (d,), coefficient, positions) of a plain one-row `Add` whose positions are a span rule, else None."""
    if type(value) is not Add or type(value.positions) not in _SPANS:
        return None
    vector, coef = value.vector, value.coef
    if not isinstance(vector, torch.Tensor) or not (vector.dim() == 1 or (vector.dim() == 2 and vector.shape[0] == 1)):
        return None
    if isinstance(coef, torch.Tensor):
        if coef.numel() != 1 or coef.dim() > 1:
            return None
    elif isinstance(coef, bool) or not isinstance(coef, (int, float)):
        return None
    return vector.reshape(-1), coef, value.positions


def _only(rows: int, i: int) -> torch.Tensor:
    out = torch.zeros(rows, dtype=torch.bool)
    out[i] = True
    return out


def _batch_writes(rows: list[_Row], dtype: torch.dtype, device: torch.device) -> dict[str, list[Intervention]]:
    """The writes of a batch, each row's restricted to it.

    At each site, the rows whose writes there are all plain adds are folded into one `_Fold` per rank (their first
    adds, their second adds, ...), built in the model's `dtype`; any other row keeps its own writes there, each
    restricted to its row (`OnRows`). Rows touch disjoint rows of the activation, so the order between rows does
    not matter; within a row, its writes keep their order.
    """
    by_site: dict[str, list[tuple[int, list[Intervention]]]] = {}
    for i, row in enumerate(rows):
        mine: dict[str, list[Intervention]] = {}
        for site, values in row.writes:
            mine.setdefault(site, []).extend(values)
        for site, values in mine.items():
            by_site.setdefault(site, []).append((i, values))
    writes: dict[str, list[Intervention]] = {}
    for site, entries in by_site.items():
        out = writes.setdefault(site, [])
        folded: list[tuple[int, list[tuple[torch.Tensor, float | torch.Tensor, Positions]]]] = []
        loose: list[tuple[int, list[Intervention]]] = []
        for i, values in entries:
            adds = [_foldable(v) for v in values]
            if all(a is not None for a in adds):
                folded.append((i, [a for a in adds if a is not None]))
            else:
                loose.append((i, values))
        if len({(v.shape[0], v.dtype) for _, adds in folded for v, _, _ in adds}) > 1:
            loose = entries  # the rows disagree on the site's width: each succeeds or fails on its own
            folded = []
        for i, values in loose:
            out.extend(_Guarded(OnRows(v, _only(len(rows), i)), rows[i]) for v in values)
        for rank in range(max((len(adds) for _, adds in folded), default=0)):
            members = [(i, adds[rank]) for i, adds in folded if len(adds) > rank]
            index = torch.tensor([i for i, _ in members], device=device)
            vector = torch.zeros(len(rows), members[0][1][0].shape[0], dtype=dtype, device=device)
            vector[index] = torch.stack([v.to(device) for _, (v, _, _) in members]).to(dtype)
            coef = torch.zeros(len(rows), dtype=dtype, device=device)
            coef[index] = torch.tensor([float(c) for _, (_, c, _) in members], dtype=dtype, device=device)
            bounds = [(0, 0)] * len(rows)  # [0, 0): no token
            for i, (_, _, p) in members:
                bounds[i] = _SPANS[type(p)](p, rows[i].prompt_len)
            out.append(_Fold(vector, coef, _Spans(bounds, device), [rows[i] for i, _ in members]))
    return writes


def _prompt_reads(row: _Row) -> dict[str, list[Callable[..., None]]]:
    """The prefill's reads of a monitored row: every prompt token's score (``row.prompt_scores``) and the last
    one's, which is the first generated token's (``row.scores``)."""
    reads: dict[str, list[Callable[..., None]]] = {}
    for site, probes in row.monitored.items():
        def read(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext, probes: list[tuple[str, Probe]] = probes
                 ) -> None:
            if row.prompt_scores is None:
                row.prompt_scores, row.scores = {}, {}
            assert row.scores is not None
            for name, probe in probes:
                scores = probe.project(x[0]).tolist()
                row.prompt_scores[name] = scores
                row.scores[name] = scores[-1]
        reads[site] = [read]
    return reads


def _batch_reads(rows: list[_Row]) -> dict[str, list[Callable[..., None]]]:
    """The decode steps' reads of the monitored rows: each one's score of the token it reads, which is the score
    of the token sampled next (``row.scores``)."""
    by_site: dict[str, list[tuple[int, str, Probe]]] = {}
    for i, row in enumerate(rows):
        for site, probes in row.monitored.items():
            by_site.setdefault(site, []).extend((i, name, probe) for name, probe in probes)
    reads: dict[str, list[Callable[..., None]]] = {}
    for site, wanted in by_site.items():
        index = sorted({i for i, _, _ in wanted})
        distinct = list({id(p): p for _, _, p in wanted}.values())  # each probe once
        column = {id(p): k for k, p in enumerate(distinct)}
        weight = torch.stack([p.weight for p in distinct], dim=1)  # (d, P)
        bias = torch.tensor([p.bias for p in distinct], dtype=torch.float32)

        def read(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext, wanted: list[tuple[int, str, Probe]] = wanted,
                 index: list[int] = index, weight: torch.Tensor = weight, bias: torch.Tensor = bias,
                 column: dict[int, int] = column) -> None:
            if x.shape[-1] != weight.shape[0]:
                raise ActkitError(f"a probe has size {weight.shape[0]} but the site has size {x.shape[-1]}")
            last = x[index, -1].to(torch.float32)
            scores = (last @ weight.to(x.device) + bias.to(x.device)).tolist()
            at = {i: k for k, i in enumerate(index)}
            for i, name, probe in wanted:
                rows[i].scores = {**(rows[i].scores or {}), name: scores[at[i]][column[id(probe)]]}
        reads[site] = [read]
    return reads


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _top(logprobs: torch.Tensor, k: int) -> list[dict[int, float]]:
    """The k most likely tokens of each row of (N, V) log-probabilities."""
    if k == 0:
        return [{} for _ in range(logprobs.shape[0])]
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return [dict(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Left-pad `t` with zeros along `dim` (-1 or -2) to `width`."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    return F.pad(t, (0, 0, missing, 0) if dim == -2 else (missing, 0))


class Engine:
    """Continuous batching over one model, each row with its own steering.

    Arguments:
        model: a causal language model of a full-attention decoder family (Llama, Qwen, Mistral, GPT-2, Mixtral,
            ...); a model whose KV cache cannot be re-packed by rows (sliding-window layers shorter than its
            context, recurrent state) is refused here, rather than generating wrong text.
        tokenizer: its tokenizer, kept as ``engine.tokenizer`` for the callers that tokenize (requests come as
            token ids; generation stops at the EOS ids of the model's generation config, as in `actkit.generate`).
        max_batch: rows decoded together at most.
        max_queue: requests waiting at most; `submit` refuses beyond.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_batch: int = 8, max_queue: int = 256):
        if not _is_int(max_batch) or max_batch < 1:
            raise ActkitError(f"max_batch must be an integer of at least 1, got {max_batch!r}")
        if not _is_int(max_queue) or max_queue < 1:
            raise ActkitError(f"max_queue must be an integer of at least 1, got {max_queue!r}")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._anatomy = Anatomy.of(model)
        limit = position_limit(model)
        if limit is None:
            raise ActkitError(f"{type(model).__name__} does not state its context length (max_position_embeddings); "
                              "the engine needs it to refuse prompts that do not fit")
        self._limit = limit
        first = next(model.parameters())
        self._device, self._dtype = first.device, first.dtype
        self.tokenizer = tokenizer
        self._eos = frozenset(eos_ids(model, None))
        get_embeddings = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if callable(get_embeddings) else None
        self._vocab = int(getattr(embeddings, "num_embeddings", 0)) or None
        parameters = _forward_parameters(model)
        self._keep_last = "logits_to_keep" in parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._check_cache()
        self._cond = threading.Condition()
        self._waiting: deque[tuple[GenerationRequest, Stream]] = deque()
        self._closed = False
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self._active: list[_Row] = []  # touched by the loop thread only, like the cache
        self._hooks = ExitStack()  # the batch's write hooks, registered while its rows stay the same
        self._writes_rows: list[_Row] = []  # the rows they were built for
        self._held: _Held | None = None  # their tap, and the parts of a decode step's context that stay the same
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None

    @property
    def context_length(self) -> int:
        """The most positions a request may use: its prompt plus its new tokens."""
        return self._limit

    def _check_cache(self) -> None:
        """Run one token and check that every cache layer is a plain key/value layer this engine can re-pack."""
        with torch.inference_mode():
            out = self.model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=self._device), use_cache=True)
        cache = _cache_of(out)
        layers = getattr(cache, "layers", None)
        if not isinstance(cache, DynamicCache) or not layers:
            raise ActkitError(f"{type(self.model).__name__} keeps a {type(cache).__name__} cache, which the serving "
                              "engine cannot batch; serve a full-attention decoder (Llama, Qwen, Mistral, GPT-2, ...)")
        for i, layer in enumerate(layers):
            window = getattr(layer, "sliding_window", None) if isinstance(layer, DynamicSlidingWindowLayer) else None
            plain = type(layer) is DynamicLayer or (window is not None and window >= self._limit)
            if not plain or not isinstance(layer.keys, torch.Tensor) or layer.keys.shape[-2] != 1:
                what = f"a sliding window of {window} tokens" if window is not None else type(layer).__name__
                raise ActkitError(f"{type(self.model).__name__}'s layer {i} keeps {what} in its cache, which the "
                                  "serving engine cannot re-pack by rows; serve a model with full attention in every "
                                  "layer")

    # ---- the caller's side (any thread) ----

    def start(self) -> None:
        """Start the background scheduling thread."""
        with self._cond:
            if self._thread is not None:
                raise ActkitError("the engine was already started")
            if self._closed:
                raise ActkitError("the engine is shut down; create a new one")
            self._thread = threading.Thread(target=self._run, name="actkit-serve-engine", daemon=True)
            self._thread.start()

    def submit(self, request: GenerationRequest) -> Stream:
        """Queue a request; returns its stream. Thread-safe.

        Raises:
            ActkitError: for a bad request (empty prompt, unknown token ids, bad sampling values, writes at unknown
                or read-only sites), a prompt that does not fit the context with its new tokens, a full queue, or
                an engine that was shut down.
        """
        self._check(request)
        stream = Stream()
        with self._cond:
            if self._closed:
                raise ActkitError("the engine is shut down and accepts no more requests")
            if len(self._waiting) >= self.max_queue:
                raise ActkitError(f"the queue is full ({self.max_queue} requests waiting); retry later")
            self._waiting.append((request, stream))
            self._cond.notify()
        return stream

    def load(self) -> dict[str, int]:
        """How many requests are being decoded (``running``) and queued (``waiting``) now."""
        with self._cond:
            return {"running": len(self._active), "waiting": len(self._waiting)}

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting; let active and queued requests finish within `timeout` seconds, cancel the rest, and
        join the thread (which returns after the step running at the deadline)."""
        with self._cond:
            self._closed = True
            self._deadline = min(self._deadline, time.monotonic() + max(0.0, timeout))
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        else:
            self._cancel_waiting()

    def _check(self, request: GenerationRequest) -> None:
        if not isinstance(request, GenerationRequest):
            raise ActkitError(f"submit takes a GenerationRequest, not a {type(request).__name__}")
        ids = request.prompt_ids
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ActkitError("the prompt is empty: give at least one token id")
        if not all(_is_int(t) and 0 <= t and (self._vocab is None or t < self._vocab) for t in ids):
            raise ActkitError(f"the prompt holds token ids that are not integers in 0..{(self._vocab or 0) - 1}")
        n = request.max_new_tokens
        if not _is_int(n) or n < 0:
            raise ActkitError(f"max_new_tokens must be an integer of at least 0, got {n!r}")
        if len(ids) + n > self._limit:
            raise ActkitError(f"the prompt is {len(ids)} tokens; with max_new_tokens={n} that is {len(ids) + n} "
                              f"positions, but the model's context is {self._limit} tokens")
        t = request.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ActkitError(f"temperature must be a finite number of at least 0, got {t!r}")
        p = request.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ActkitError(f"top_p must be in (0, 1], got {p!r}")
        if request.seed is not None and not _is_int(request.seed):
            raise ActkitError(f"seed must be an integer, got {request.seed!r}")
        for name in ("prompt_logprobs", "logprobs"):
            k = getattr(request, name)
            if k is not None and (not _is_int(k) or k < 0):
                raise ActkitError(f"{name} must be None or an integer of at least 0, got {k!r}")
        if request.eos_token_ids is not None and not all(_is_int(t) for t in request.eos_token_ids):
            raise ActkitError("eos_token_ids must be integers")
        for name, probe in (request.monitor or {}).items():
            if not isinstance(probe, Probe):
                raise ActkitError(f"monitor {name!r}: {type(probe).__name__} is not a Probe")
            self._anatomy.point(Site.parse(probe.site))
        guard = request.guard
        if guard is not None:
            if not isinstance(guard, Guard) or not isinstance(guard.probe, Probe):
                raise ActkitError("guard must be a Guard holding a Probe")
            if guard.action not in ACTIONS:
                raise ActkitError(f"unknown guard action {guard.action!r}; use one of {', '.join(ACTIONS)}")
            self._anatomy.point(Site.parse(guard.probe.site))
        writes: dict[str, Intervention | list[Intervention]] = dict(request.writes or {})
        if guard is not None and guard.action == "steer":
            writes = dict(combine(writes, guard.writes))
        for raw, values in writes.items():
            site = Site.parse(raw)
            if site.kind in READ_ONLY:
                raise ActkitError(f"site {site} is read-only: {READ_ONLY[site.kind]}")
            self._anatomy.point(site)
            for value in _as_list(values):
                if not isinstance(value, Intervention):
                    raise ActkitError(f"write at {site}: {type(value).__name__} is not an Intervention")

    # ---- the loop (the engine thread) ----

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._active and not self._closed:
                    self._cond.wait()
                idle = not self._waiting and not self._active
                if self._closed and (idle or time.monotonic() >= self._deadline):
                    break
            self._step()
        for row in self._active:
            self._finish(row, "cancelled")
        self._release(list(range(len(self._active))))
        self._close_writes()
        self._cancel_waiting()

    def _step(self) -> None:
        try:
            self._drop_cancelled()
            self._admit()
            if self._active:
                self._decode()
        except Exception as error:  # the model itself failed (no request's write): end the batch, keep serving
            for row in self._active:
                row.fail(error)
                self._finish(row, "error")
            self._release(list(range(len(self._active))))
            self._close_writes()

    def _cancel_waiting(self) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for request, stream in waiting:
            stream._put(Finished("cancelled", len(request.prompt_ids), 0))

    def _drop_cancelled(self) -> None:
        gone = [i for i, row in enumerate(self._active) if row.stream.cancelled]
        for i in gone:
            self._finish(self._active[i], "cancelled")
        self._release(gone)

    def _admit(self) -> None:
        joined: list[tuple[_Row, DynamicCache]] = []
        while len(self._active) + len(joined) < self.max_batch:
            with self._cond:
                if not self._waiting:
                    break
                request, stream = self._waiting.popleft()
            if stream.cancelled:
                stream._put(Finished("cancelled", len(request.prompt_ids), 0))
                continue
            row = _Row(request, stream, request.eos_token_ids if request.eos_token_ids is not None else self._eos,
                       self._generator(request))
            try:
                cache = self._prefill(row)
            except Exception as error:
                row.fail(error)
                self._finish(row, "error")
                continue
            if cache is not None:
                joined.append((row, cache))
        if joined:
            self._join(joined)

    def _generator(self, request: GenerationRequest) -> torch.Generator | None:
        if request.temperature == 0:
            return None
        generator = torch.Generator(device=self._device)
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request.seed)
        return generator

    def _prefill(self, row: _Row) -> DynamicCache | None:
        """Run the prompt alone; returns its cache if the row goes on to the batch."""
        request = row.request
        ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self._device)
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                  "position_ids": torch.arange(ids.shape[1], device=self._device)[None],
                                  "use_cache": request.max_new_tokens > 0}
        if self._keep_last and request.prompt_logprobs is None:
            inputs["logits_to_keep"] = 1
        self._close_writes()
        writes: dict[str, list[Intervention]] = combine(request.writes)
        gate = None
        if request.guard is not None:  # the gate first at its site: it reads the prompt before the row's writes
            guard = request.guard
            steer = guard.action == "steer"
            guarding, gate = guard_writes(guard.probe, "steer" if steer else "flag", guard.writes if steer else None)
            writes = combine(guarding, writes)
        reads = _prompt_reads(row)
        with torch.inference_mode():
            if writes or reads:
                with tap(self.model, write=writes, read=reads) as state:
                    state.expect(_prompt_context(inputs["position_ids"]))
                    out = self.model(**inputs)
            else:
                out = self.model(**inputs)
        if gate is not None:
            assert gate.scores is not None and gate.decision is not None and request.guard is not None
            row.guard = (float(gate.scores[0]), bool(gate.decision[0]))
            if row.guard[1] and request.guard.action == "refuse":
                self._finish(row, "refused")
                return None
            if row.guard[1] and request.guard.action == "steer":  # first, as in the prefill
                row.writes = [(str(Site.parse(raw)), _as_list(values))
                              for raw, values in (request.guard.writes or {}).items()] + row.writes
        if request.prompt_logprobs is not None:
            logprobs = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
            chosen = logprobs.gather(1, ids[0, 1:, None]).reshape(-1).tolist()
            row.prompt_logprobs = [(None, {}), *zip(chosen, _top(logprobs, request.prompt_logprobs), strict=True)]
        if request.max_new_tokens == 0:
            self._finish(row, "length")
            return None
        if self._sample([row], out.logits[:, -1]):
            return None
        return _cache_of(out)

    def _decode(self) -> None:
        rows = self._active
        assert self._cache is not None and self._mask is not None
        ones = torch.ones(len(rows), 1, dtype=self._mask.dtype, device=self._device)
        mask = torch.cat([self._mask, ones], dim=1)
        positions = [r.prompt_len + r.generated - 1 for r in rows]
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=self._device),
            "attention_mask": mask,
            "position_ids": torch.tensor(positions, device=self._device)[:, None],
            self._cache_arg: self._cache, "use_cache": True}
        if self._keep_last:
            inputs["logits_to_keep"] = 1
        out = self._forward(rows, inputs, positions)
        self._mask = mask
        done = []
        for i, row in enumerate(rows):
            if row.error is not None:
                self._finish(row, "error")
                done.append(i)
        live = [i for i in range(len(rows)) if rows[i].error is None]
        ended = self._sample([rows[i] for i in live], out.logits[live, -1])
        self._release(sorted(done + [live[j] for j in ended]))

    def _forward(self, rows: list[_Row], inputs: dict[str, Any], positions: list[int]) -> Any:
        """One decode step of the batch `rows` (row r feeding its token at `positions[r]`), each row's writes and
        reads restricted to it. The batch's hooks stay registered from step to step while its rows stay the same,
        and the step's context (each token's position, each row's prompt length) comes from what the engine
        knows, not from the inputs."""
        if any(row.writes or row.request.monitor for row in rows):
            self._hold_writes(rows)
            assert self._held is not None
            self._held.expect(inputs["position_ids"], positions)
        else:
            self._close_writes()
        with torch.inference_mode():
            return self.model(**inputs)

    def _hold_writes(self, rows: list[_Row]) -> None:
        """Register the hooks of the batch `rows` unless they are registered already."""
        held = self._writes_rows  # held, not their ids: a freed row's id may be reused by a new row
        if len(held) == len(rows) and all(a is b for a, b in zip(held, rows, strict=True)):
            return
        self._close_writes()
        lengths = torch.tensor([r.prompt_len for r in rows], device=self._device)
        writes = _batch_writes(rows, self._dtype, self._device)
        state = self._hooks.enter_context(tap(self.model, write=writes, read=_batch_reads(rows),
                                              prompt_lengths=lengths))
        spans = [w.spans for values in writes.values() for w in values if isinstance(w, _Fold)]
        self._held = _Held(state, lengths, spans)
        self._writes_rows = list(rows)

    def _close_writes(self) -> None:
        """Remove the batch's hooks (before a prefill, when the batch empties, at the end)."""
        self._hooks.close()
        self._writes_rows = []
        self._held = None

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Pick and send each row's next token from its (V,) logits; returns the indices of the rows that ended."""
        logits = logits.float()
        greedy = logits.argmax(dim=-1).tolist()
        ended = []
        for i, row in enumerate(rows):
            request = row.request
            token = greedy[i] if row.generator is None else self._draw(logits[i], request, row.generator)
            if token in row.eos:
                self._finish(row, "stop")
                ended.append(i)
                continue
            first = row.generated == 0
            event = Token(token, scores=row.scores, prompt_logprobs=row.prompt_logprobs if first else None,
                          prompt_scores=row.prompt_scores if first else None, guard=row.guard if first else None)
            if request.logprobs is not None:
                logprobs = torch.log_softmax(logits[i], dim=-1)
                event.logprob = float(logprobs[token])
                event.top_logprobs = _top(logprobs[None], request.logprobs)[0]
            row.stream._put(event)
            row.generated += 1
            row.pending = token
            if row.generated >= request.max_new_tokens:
                self._finish(row, "length")
                ended.append(i)
        return ended

    @staticmethod
    def _draw(logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator) -> int:
        """Sample from softmax(logits / T), keeping the smallest set of tokens whose probability reaches top_p."""
        probs = torch.softmax(logits / request.temperature, dim=-1)
        ordered, order = probs.sort(descending=True)
        if request.top_p < 1:
            ordered = ordered * ((ordered.cumsum(0) - ordered) < request.top_p)
        return int(order[torch.multinomial(ordered, 1, generator=generator)])

    def _finish(self, row: _Row, reason: str) -> None:
        row.stream._put(Finished(reason, row.prompt_len, row.generated, row.prompt_logprobs,
                                 row.error if reason == "error" else None, row.prompt_scores, row.guard))

    # ---- the batch's cache ----

    def _join(self, joined: list[tuple[_Row, DynamicCache]]) -> None:
        """Add rows (each with its own prefill cache) to the batch: left-pad everything to the longest, concatenate."""
        parts: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]] = []
        if self._cache is not None and self._mask is not None:
            parts.append((_layers(self._cache), self._mask))
        for row, cache in joined:
            parts.append((_layers(cache), torch.ones(1, row.prompt_len, dtype=torch.long, device=self._device)))
        width = max(mask.shape[1] for _, mask in parts)
        layers = [(torch.cat([_pad_left(p[0][i][0], width, -2) for p in parts]),
                   torch.cat([_pad_left(p[0][i][1], width, -2) for p in parts]))
                  for i in range(len(parts[0][0]))]
        self._cache = DynamicCache(layers)
        self._mask = torch.cat([_pad_left(mask, width, -1) for _, mask in parts])
        self._active = self._active + [row for row, _ in joined]

    def _release(self, gone: list[int]) -> None:
        """Drop rows from the batch and the padding columns no remaining row needs."""
        if not gone:
            return
        keep = [i for i in range(len(self._active)) if i not in set(gone)]
        self._active = [self._active[i] for i in keep]
        if not keep or self._cache is None or self._mask is None:
            self._cache = self._mask = None
            self._close_writes()
            return
        index = torch.tensor(keep, device=self._device)
        mask = self._mask[index]
        start = int(torch.nonzero(mask.sum(0)).min())
        self._cache = DynamicCache([(k[index, :, start:], v[index, :, start:]) for k, v in _layers(self._cache)])
        self._mask = mask[:, start:]


def _prompt_context(positions: torch.Tensor) -> StepContext:
    """The context of a prefill of one prompt at `positions` (1, T): every token real, all of them prompt."""
    length = positions.shape[1]
    rows = torch.zeros(1, dtype=torch.long, device=positions.device)
    return StepContext(positions, torch.ones_like(positions, dtype=torch.bool), rows + length, rows, rows)


class _Held:
    """The tap of a batch's hooks, with the parts of a decode step's `StepContext` that stay the same while the
    batch's rows do (every token real, the prompt lengths, the row numbers) and the spans of its folded adds."""

    def __init__(self, state: Tap, lengths: torch.Tensor, spans: list[_Spans]):
        self.state = state
        self.lengths = lengths
        self.spans = spans
        self.rows = torch.arange(lengths.shape[0], device=lengths.device)
        self.offsets = torch.zeros_like(self.rows)
        self.valid = torch.ones(lengths.shape[0], 1, dtype=torch.bool, device=lengths.device)

    def expect(self, positions: torch.Tensor, known: list[int]) -> None:
        """The context of a decode step whose tokens are at `positions` (B, 1), which are `known` (B,)."""
        self.state.expect(StepContext(positions, self.valid, self.lengths, self.rows, self.offsets))
        for spans in self.spans:
            spans.step(known)


def _cache_of(output: Any) -> Any:
    """The cache a forward returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values), (B, heads, length, head size): plain layers, as `_check_cache` made sure."""
    out = []
    for layer in cast(list[DynamicLayer], cache.layers):
        assert layer.keys is not None and layer.values is not None
        out.append((layer.keys, layer.values))
    return out


def _forward_parameters(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


__all__ = ["Engine", "Finished", "GenerationRequest", "Stream", "Token"]
