"""The hook engine: read and write activations at sites, for the duration of a ``with`` block.

``tap(model, read={...}, write={...})`` registers one PyTorch hook per touched module, plus one pre-hook on the
text model that works out, for every forward pass, each token's absolute position (left or right padding and
KV-cache decode steps included) and each row's prompt length. Reads and writes then select tokens by `Positions`
rules on those absolute positions. Named sites (``resid_post.3``) and module sites (``module:PATH:input``, any
submodule) go through the same hooks. Hooks are removed when the block exits, exception or not; parameters are never
touched; writes return new tensors, so the same code serves inference and autograd (attribution patching).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy, HookPoint
from actkit.core.experts import expert_output, routed_tokens
from actkit.core.interventions import Intervention
from actkit.core.positions import All, Positions, StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError

#: Sites whose values are derived rather than carried by the forward pass, so writing them would change nothing.
READ_ONLY = {"expert_out": "per-expert outputs are recomputed from the fused weights",
             "router": "routing is decided inside the router from these logits; write its choice at the router's "
                       "module site instead (module:PATH:output.1 for the top-k weights, output.2 for the indices)"}


@dataclass
class Read:
    """Where read values go and which tokens count.

    Arguments:
        sink: a reducer (anything with ``update(x, mask, where=...)``) or a function ``fn(x, mask, ctx)``.
        positions: which tokens to read (default all real tokens).
    """

    sink: Any
    positions: Positions = field(default_factory=All)

    def __call__(self, x: torch.Tensor, ctx: StepContext, mask: torch.Tensor | None = None) -> None:
        mask = self.positions.mask(ctx) if mask is None else mask
        if hasattr(self.sink, "update"):
            self.sink.update(x, mask, where=ctx.where())
        else:
            self.sink(x, mask, ctx)


class Capture:
    """A sink that keeps every value it reads (detached copies): for tests and patching, not for long runs.

    Unlike reducers its memory grows with the tokens read. ``values[i]`` and ``masks[i]`` are the i-th pass.
    """

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def update(self, x: torch.Tensor, mask: torch.Tensor, where: torch.Tensor | None = None) -> None:
        self.values.append(x.detach().clone())
        self.masks.append(mask.detach().clone())

    @property
    def last(self) -> torch.Tensor:
        if not self.values:
            raise ActkitError("nothing was captured: the model never reached this site inside the tap")
        return self.values[-1]


class Tap:
    """The live state of a `tap` block: the anatomy, and the context of the latest forward pass."""

    def __init__(self, model: nn.Module, anatomy: Anatomy, prompt_lengths: torch.Tensor | None):
        self.model = model
        self.anatomy = anatomy
        self.prompt_lengths = prompt_lengths
        self.context: StepContext | None = None
        self.documents: torch.Tensor | None = None
        self.offsets: torch.Tensor | None = None
        self._prompt_ids: torch.Tensor | None = None
        self._prompt_len: torch.Tensor | None = None
        self._arg_names = _parameter_names(anatomy.root)
        self._expected: StepContext | None = None

    def expect(self, context: StepContext) -> None:
        """Use `context` for the next forward pass instead of working it out from the pass's inputs.

        For a caller that knows every token's position already (a serving engine's decode step): it saves the
        dozen small tensor operations per pass that were most of the cost of steering a small model. It applies to the
        next pass only, and only if its shape is that pass's (batch, tokens); otherwise the pass works out its own.
        """
        self._expected = context

    def reset(self) -> None:
        """Forget the recorded prompt: the next pass without a cache starts a new prompt."""
        self._prompt_ids = None
        self._prompt_len = None

    def on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = dict(zip(self._arg_names, args, strict=False))
        inputs.update(kwargs)
        expected, self._expected = self._expected, None
        ref = _reference(inputs)
        if expected is not None and ref is not None and tuple(ref.shape[:2]) == expected.shape:
            self.context = expected
        else:
            self.context = self._context(inputs)

    def _context(self, inputs: dict[str, Any]) -> StepContext:
        ids = inputs.get("input_ids")
        ref = _reference(inputs)
        if ref is None:
            raise ActkitError("the model was called without input_ids or inputs_embeds")
        batch, length = int(ref.shape[0]), int(ref.shape[1])
        device = ref.device
        cache = inputs.get("cache", inputs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        attn = inputs.get("attention_mask")
        if isinstance(attn, torch.Tensor) and attn.dim() == 2 and attn.shape[1] >= length:
            full = attn.to(torch.long)
            positions = (full.cumsum(-1) - 1)[:, -length:]
            valid = full[:, -length:].bool()
        else:
            positions = (past + torch.arange(length, device=device)).expand(batch, length)
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        positions = positions.masked_fill(~valid, -1)
        prompt_len = self._prompt(ids, valid, positions, past)
        rows = torch.arange(batch, device=device)
        documents = self.documents if self.documents is not None else rows
        offsets = self.offsets if self.offsets is not None else torch.zeros_like(rows)
        return StepContext(positions, valid, prompt_len, documents, offsets)

    def _prompt(self, ids: torch.Tensor | None, valid: torch.Tensor, positions: torch.Tensor, past: int) -> torch.Tensor:
        if self.prompt_lengths is not None:
            return torch.as_tensor(self.prompt_lengths, device=valid.device).reshape(-1)
        known = self._prompt_len is not None and self._prompt_len.shape[0] == valid.shape[0]
        if past > 0:  # a decode step: the prompt is what was recorded, or everything before this pass
            if known:
                assert self._prompt_len is not None
                return self._prompt_len
            first = torch.where(valid, positions, positions.max() + 1).min(dim=1).values
            return first
        if known and ids is not None and self._prompt_ids is not None:
            width = self._prompt_ids.shape[1]
            if ids.shape[1] > width and torch.equal(ids[:, :width], self._prompt_ids):
                assert self._prompt_len is not None
                return self._prompt_len  # a no-cache recomputation that extends the recorded prompt
        self._prompt_ids = ids.detach().clone() if ids is not None else None
        self._prompt_len = valid.sum(dim=1)
        return self._prompt_len

    def fallback_context(self, x: torch.Tensor) -> StepContext:
        """Context for a module called outside the model's forward (every token real, all prompt)."""
        batch, length = int(x.shape[0]), int(x.shape[1]) if x.dim() > 2 else 1
        positions = torch.arange(length, device=x.device).expand(batch, length)
        rows = torch.arange(batch, device=x.device)
        return StepContext(positions, torch.ones_like(positions, dtype=torch.bool),
                           torch.full_like(rows, length), rows, torch.zeros_like(rows))


def _reference(inputs: dict[str, Any]) -> torch.Tensor | None:
    """The (B, T, ...) tensor that gives a pass its shape: the token ids, or the embeddings given instead."""
    ids = inputs.get("input_ids")
    return ids if ids is not None else inputs.get("inputs_embeds")


def _parameter_names(module: nn.Module) -> list[str]:
    forward = getattr(module.forward, "__func__", module.forward)
    try:
        return list(_remembered_names(forward))  # `inspect.signature` is slow, and every `tap` asks
    except TypeError:  # a forward that cannot be a dictionary key
        return list(_names_of(forward))


def _names_of(function: Callable[..., Any]) -> tuple[str, ...]:
    try:
        return tuple(p for p in inspect.signature(function).parameters if p not in ("self", "args", "kwargs"))
    except (TypeError, ValueError):
        return ()


_remembered_names = functools.lru_cache(maxsize=256)(_names_of)


@dataclass
class _Group:
    """Everything hooked at one (module, side): per element (positional argument or tuple element, in order),
    writes first, in site order, then reads; so a write at element k may use what a read at an earlier one saw."""

    point: HookPoint
    writes: list[tuple[Site, Intervention]] = field(default_factory=list)
    reads: list[tuple[Site, Read]] = field(default_factory=list)
    experts: list[tuple[Site, Read]] = field(default_factory=list)

    def plan(self) -> list[tuple[int, list[tuple[Site, Intervention]], list[tuple[Site, Read]]]]:
        """(element, its writes, its reads) for every element touched, in element order."""
        elements = sorted({s.element for s, _ in self.writes} | {s.element for s, _ in self.reads})
        return [(e, [w for w in self.writes if w[0].element == e], [r for r in self.reads if r[0].element == e])
                for e in elements]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _as_read(value: Any) -> Read:
    if isinstance(value, Read):
        return value
    if hasattr(value, "update") or callable(value):
        return Read(value)
    raise ActkitError(f"cannot read into {type(value).__name__}: give a reducer, a Read(...) or a function")


def _shape_for(x: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, tuple[int, ...] | None, StepContext]:
    """View x as (B, T, ...) against the context; MoE routers work on flattened (B*T, E) tokens."""
    batch, length = ctx.shape
    if x.dim() == 2 and x.shape[0] == batch * length:
        return x.reshape(batch, length, -1), tuple(x.shape), ctx
    if x.dim() >= 2 and x.shape[0] == batch and x.shape[1] <= length:
        return x, None, ctx.tail(int(x.shape[1]))
    raise ActkitError(f"activation of shape {tuple(x.shape)} does not match the batch {batch} x {length} tokens")


def _tensor(value: Any, site: Site, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ActkitError(f"site {site}: {what} is a {type(value).__name__}, not a tensor; choose another element")
    return value


def _output_element(module: nn.Module, output: Any, element: int, site: Site, write: bool) -> torch.Tensor:
    """Element `element` of a module's output: the output itself when it is a tensor, else a tuple element."""
    if isinstance(output, torch.Tensor):
        if element:
            raise ActkitError(f"site {site}: {type(module).__name__} returns one tensor, not a tuple; use the side "
                              "'output' without an element")
        return output
    if write and not isinstance(output, (tuple, list)):
        raise ActkitError(f"site {site}: {type(module).__name__} returns a {type(output).__name__}; only tensor and "
                          "tuple outputs can be written: write a site inside it")
    try:
        value = output[element]
    except (IndexError, KeyError, TypeError):
        raise ActkitError(f"site {site}: the output of {type(module).__name__} has no element {element}") from None
    return _tensor(value, site, f"element {element} of the output of {type(module).__name__}")


class _Hooks:
    def __init__(self, state: Tap, groups: list[_Group]):
        self.state = state
        self.groups = groups

    def make(self, group: _Group) -> Callable[..., Any]:
        plan = group.plan()
        if group.point.side == "output":
            def on_output(module: nn.Module, args: tuple, output: Any) -> Any:
                if isinstance(output, torch.Tensor) and len(plan) == 1 and plan[0][0] == 0:
                    new = self.process(plan[0][1], plan[0][2], output)
                    return None if new is output else new
                items = output
                for element, writes, reads in plan:
                    x = _output_element(module, items, element, (writes or reads)[0][0], bool(writes))
                    new = self.process(writes, reads, x)
                    if new is not x:
                        items = type(output)((*items[:element], new, *items[element + 1:]))
                return None if items is output else items
            return on_output

        def on_input(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if group.experts:
                self.read_experts(group, module, args, kwargs)
            changed = False
            for element, writes, reads in plan:
                site = (writes or reads)[0][0]
                if len(args) > element:
                    x = _tensor(args[element], site, f"positional argument {element}")
                elif element == 0 and "hidden_states" in kwargs:
                    x = _tensor(kwargs["hidden_states"], site, "the hidden_states argument")
                else:
                    raise ActkitError(f"cannot find the input of {type(module).__name__} for site {site}: it was "
                                      f"called with {len(args)} positional arguments and keywords {sorted(kwargs)}")
                new = self.process(writes, reads, x)
                if new is x:
                    continue
                changed = True
                if len(args) > element:
                    args = (*args[:element], new, *args[element + 1:])
                else:
                    kwargs = {**kwargs, "hidden_states": new}
            return (args, kwargs) if changed else None
        return on_input

    def process(self, writes: list[tuple[Site, Intervention]], reads: list[tuple[Site, Read]],
                x: torch.Tensor) -> torch.Tensor:
        ctx = self.state.context or self.state.fallback_context(x)
        view, flat_shape, ctx = _shape_for(x, ctx)
        out = view
        for site, intervention in writes:
            try:
                out = intervention(out, intervention.positions.mask(ctx), ctx)
            except ActkitError as error:
                raise ActkitError(f"writing {site}: {error}") from None
        for _site, read in reads:
            read(out, ctx)
        if out is view:
            return x
        return out.reshape(flat_shape) if flat_shape is not None else out

    def read_experts(self, group: _Group, module: nn.Module, args: tuple, kwargs: dict) -> None:
        names = ["hidden_states", "top_k_index", "top_k_weights"]
        values = dict(zip(names, args, strict=False))
        values.update({k: v for k, v in kwargs.items() if k in names})
        hidden, index = values["hidden_states"], values["top_k_index"]
        ctx = self.state.context or self.state.fallback_context(hidden[None])
        batch, length = ctx.shape
        if hidden.shape[0] != batch * length:
            raise ActkitError(f"experts saw {hidden.shape[0]} tokens but the pass has {batch} x {length}")
        where = ctx.where().reshape(-1, 2)
        for site, read in group.experts:
            assert site.expert is not None and group.point.experts_layout is not None
            rows = routed_tokens(index, site.expert)
            out = expert_output(module, group.point.experts_layout, hidden[rows], site.expert)
            mask = read.positions.mask(ctx).reshape(-1)[rows]
            if hasattr(read.sink, "update"):
                read.sink.update(out, mask, where=where[rows])
            else:
                read.sink(out, mask, ctx)


@contextmanager
def tap(
    model: nn.Module,
    read: Mapping[str, Any] | Mapping[Site, Any] | None = None,
    write: Mapping[str, Any] | Mapping[Site, Any] | None = None,
    *,
    prompt_lengths: torch.Tensor | Sequence[int] | None = None,
) -> Iterator[Tap]:
    """Read and write activations at sites while the block runs.

    Arguments:
        model: a Hugging Face model of a family in the anatomy.
        read: site (named, ``"resid_post.3"``, or a module site, ``"module:model.layers.3.mlp:input"``; see
            `actkit.core.sites`) -> a reducer, a function ``fn(x, mask, ctx)``, a `Read` (sink and positions) or a list of them.
            Reads at a site see its value after that site's writes.
        write: site -> an `Intervention` (with its own positions) or a list of them, applied in order.
        prompt_lengths: (B,) prompt length per row, when the default (the first pass without a cache is the
            prompt; a decode step or a longer pass with the same prefix continues it) does not fit.

    Returns:
        A `Tap` whose ``context`` is the `StepContext` of the latest pass. All hooks are removed on exit, also
        when the block raises.
    """
    anatomy = Anatomy.of(model)
    lengths = None if prompt_lengths is None else torch.as_tensor(prompt_lengths)
    state = Tap(model, anatomy, lengths)
    groups: dict[tuple[int, str], _Group] = {}

    def group_of(site: Site) -> _Group:
        point = anatomy.point(site)
        key = (id(point.module), point.side)
        if key not in groups:
            groups[key] = _Group(point)
        return groups[key]

    for raw, values in (write or {}).items():
        site = Site.parse(raw)
        if site.kind in READ_ONLY:
            raise ActkitError(f"site {site} is read-only: {READ_ONLY[site.kind]}")
        for intervention in _as_list(values):
            if not isinstance(intervention, Intervention):
                raise ActkitError(f"write at {site}: {type(intervention).__name__} is not an Intervention")
            group_of(site).writes.append((site, intervention))
    for raw, values in (read or {}).items():
        site = Site.parse(raw)
        for value in _as_list(values):
            group = group_of(site)
            (group.experts if site.kind == "expert_out" else group.reads).append((site, _as_read(value)))

    hooks = _Hooks(state, list(groups.values()))
    handles = [anatomy.root.register_forward_pre_hook(state.on_forward, with_kwargs=True)]
    try:
        for group in groups.values():
            module = group.point.module
            if group.point.side == "output":
                handles.append(module.register_forward_hook(hooks.make(group)))
            else:
                handles.append(module.register_forward_pre_hook(hooks.make(group), with_kwargs=True))
        yield state
    finally:
        for handle in handles:
            handle.remove()
