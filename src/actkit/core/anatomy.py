"""Where each site lives in each model family: one declarative table per family.

A `Family` says, relative to the base model (``model.base_model``) and to each block, which module holds a site
and whether the activation is that module's input or output. Adding an architecture is adding a table with
`register_family` (and a parity test), never a new code path. Sites whose module a block lacks (the router of a
dense layer in a partly-MoE model) are simply unavailable at that block.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from torch import nn

from actkit.core.sites import MODULE, SITE_KINDS, Site
from actkit.errors import ActkitError

Side = Literal["input", "output"]


@dataclass(frozen=True)
class Hook:
    """A module path and which side of it carries the activation (tuple outputs: the first element)."""

    path: str
    side: Side = "output"


@dataclass(frozen=True)
class Experts:
    """Fused experts: one module whose forward takes (hidden (N, d), top-k indices, top-k weights).

    ``layout="fused_glu"`` means ``gate_up_proj`` is (E, 2F, d) with gate rows first, ``down_proj`` is (E, d, F)
    and the module has ``act_fn``: transformers 5's layout for Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE.
    ``shared_down`` is the down projection of a shared expert that runs beside the routed ones (Qwen2-MoE), relative
    to the block: it writes to the residual stream like the dense MLP's down projection.
    """

    path: str = "mlp.experts"
    layout: Literal["fused_glu"] = "fused_glu"
    shared_down: str | None = None


@dataclass(frozen=True)
class Family:
    """The anatomy table of one architecture family.

    Arguments:
        name: the family's name, as shown to users.
        model_types: the ``config.model_type`` values it covers.
        layers: path of the block list, relative to the base model.
        embed: the `embed` site, relative to the base model.
        block: per-block site kind -> `Hook` relative to the block (``resid_pre``/``resid_post`` are implicit).
        experts: the fused experts of MoE blocks, if any.
        roots: prefixes tried in turn before the paths (multimodal wrappers keep the text model one level down).
        encoder: True for bidirectional encoders (no generation).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    embed: Hook
    block: dict[str, Hook] = field(default_factory=dict)
    experts: Experts | None = None
    roots: tuple[str, ...] = ("",)
    encoder: bool = False


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Teach actkit a new architecture: map its ``model_type`` values to a table. Returns the family."""
    unknown = set(family.block) - set(SITE_KINDS)
    if unknown:
        raise ActkitError(f"family {family.name!r} maps unknown site kinds {sorted(unknown)}")
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def families() -> list[Family]:
    """The registered families, once each, in registration order (by identity: the tables hold dicts, so they
    do not hash)."""
    unique: dict[int, Family] = {}
    for family in _FAMILIES.values():
        unique.setdefault(id(family), family)
    return list(unique.values())


def family_of(model_type: str) -> Family | None:
    """The table registered for a config's ``model_type``, or None when actkit has none."""
    return _FAMILIES.get(model_type)


@dataclass(frozen=True)
class HookPoint:
    """A resolved site: the module to hook, the side, for experts the expert index, and for module sites which
    positional argument or tuple element carries the activation."""

    site: Site
    module: nn.Module
    side: Side
    expert: int | None = None
    experts_layout: str | None = None
    element: int = 0


class Anatomy:
    """The sites of one loaded model and the modules behind them.

    Use `Anatomy.of(model)`; `point(site)` resolves a site, `sites()` lists the available ones, `expand(...)`
    turns patterns such as ``"resid_post.*"`` into sites.
    """

    def __init__(self, model: nn.Module, family: Family, root: nn.Module, blocks: Sequence[nn.Module]):
        self.model = model
        self.family = family
        self.root = root
        self.blocks = list(blocks)
        config = getattr(model, "config", None)
        text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
        self.hidden_size: int = int(getattr(text, "hidden_size", 0) or 0)
        self.num_experts: int = int(
            getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None) or 0
        )

    @classmethod
    def of(cls, model: nn.Module) -> Anatomy:
        """Find the family table of `model` and locate its blocks; an unknown architecture gets a clear error."""
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        family = _FAMILIES.get(str(model_type))
        if family is None:
            known = ", ".join(sorted(_FAMILIES))
            raise ActkitError(
                f"actkit has no anatomy table for {type(model).__name__} (model_type {model_type!r}). "
                f"Known model types: {known}. Register one with actkit.register_family(Family(name=..., "
                f"model_types=({model_type!r},), layers='layers', embed=Hook('embed_tokens'), block={{...}})); "
                "see actkit/core/families.py for the tables of similar models."
            )
        base = getattr(model, "base_model", model)
        for prefix in family.roots:
            root = _get(base, prefix) if prefix else base
            layers = _get(root, family.layers) if root is not None else None
            if isinstance(layers, nn.ModuleList):
                return cls(model, family, root, list(layers))  # type: ignore[arg-type]
        raise ActkitError(
            f"{type(model).__name__} matched the {family.name!r} table but has no block list at "
            f"{family.layers!r}; this transformers version may lay the model out differently"
        )

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def point(self, site: str | Site) -> HookPoint:
        """Resolve one site to its module and side; names the valid range or the available sites on error."""
        s = Site.parse(site)
        if s.kind == MODULE:
            return self._module_point(s)
        if s.kind == "embed":
            module = _get(self.root, self.family.embed.path)
            if module is None:
                raise ActkitError(f"{type(self.model).__name__} has no embedding module at {self.family.embed.path!r}")
            return HookPoint(s, module, self.family.embed.side)
        if s.kind == "logits":
            head = output_head(self.model)
            if head is None:
                raise ActkitError(
                    f"{type(self.model).__name__} has no output head, so it has no 'logits' site; load the model "
                    "with its language-model head (for example AutoModelForCausalLM or AutoModelForMaskedLM)"
                )
            return HookPoint(s, head, "output")
        assert s.layer is not None
        if s.layer >= self.n_layers:
            raise ActkitError(
                f"site {s}: block {s.layer} does not exist; {type(self.model).__name__} has {self.n_layers} blocks "
                f"(valid indices 0..{self.n_layers - 1})"
            )
        block = self.blocks[s.layer]
        if s.kind in ("resid_pre", "resid_post"):
            return HookPoint(s, block, "input" if s.kind == "resid_pre" else "output")
        if s.kind == "expert_out":
            return self._expert_point(s, block)
        hook = self.family.block.get(s.kind)
        module = _get(block, hook.path) if hook else None
        if hook is None or module is None:
            available = ", ".join(str(x) for x in self._block_sites(s.layer))
            raise ActkitError(f"site {s} is not available in {type(self.model).__name__}; block {s.layer} has: {available}")
        return HookPoint(s, module, hook.side)

    def _module_point(self, s: Site) -> HookPoint:
        assert s.path is not None and s.side in ("input", "output")
        module = _get(self.model, s.path)
        if module is None:
            names = [name for name, _ in self.model.named_modules() if name]
            close = difflib.get_close_matches(s.path, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
                "; list the paths with [name for name, _ in model.named_modules()]")
            raise ActkitError(f"site {s}: {type(self.model).__name__} has no submodule {s.path!r}{hint}")
        return HookPoint(s, module, "input" if s.side == "input" else "output", element=s.element)

    def _expand_modules(self, pattern: Site) -> list[Site]:
        """Module sites whose path matches a pattern with ``*`` components (``model.layers.*.mlp``)."""
        assert pattern.path is not None and pattern.side is not None
        parts = pattern.path.split(".")
        out = []
        for name, _ in self.model.named_modules():
            pieces = name.split(".")
            if name and len(pieces) == len(parts) and all(fnmatchcase(a, b) for a, b in zip(pieces, parts, strict=True)):
                out.append(Site.module(name, pattern.side, pattern.element))
        if not out:
            raise ActkitError(f"pattern {str(pattern)!r} matches no submodule of {type(self.model).__name__}")
        return out

    def _expert_point(self, s: Site, block: nn.Module) -> HookPoint:
        spec = self.family.experts
        module = _get(block, spec.path) if spec else None
        if spec is None or module is None:
            raise ActkitError(f"site {s}: block {s.layer} of {type(self.model).__name__} is not a mixture of experts")
        count = int(getattr(module, "num_experts", self.num_experts))
        assert s.expert is not None
        if s.expert >= count:
            raise ActkitError(f"site {s}: expert {s.expert} does not exist; valid experts are 0..{count - 1}")
        return HookPoint(s, module, "input", expert=s.expert, experts_layout=spec.layout)

    def _block_sites(self, layer: int) -> list[Site]:
        block = self.blocks[layer]
        out = [Site("resid_pre", layer)]
        for kind, hook in self.family.block.items():
            if _get(block, hook.path) is not None:
                out.append(Site(kind, layer))
        spec = self.family.experts
        experts = _get(block, spec.path) if spec else None
        if experts is not None:
            out += [Site("expert_out", layer, e) for e in range(int(getattr(experts, "num_experts", 0)))]
        out.append(Site("resid_post", layer))
        return sorted(out, key=lambda x: (list(SITE_KINDS).index(x.kind), x.expert or 0))

    def sites(self, kind: str | None = None) -> list[Site]:
        """Every available site in forward order (or those of one kind)."""
        out: list[Site] = [Site("embed")]
        for layer in range(self.n_layers):
            out += self._block_sites(layer)
        if output_head(self.model) is not None:
            out.append(Site("logits"))
        return [s for s in out if kind is None or s.kind == kind]

    def expand(self, patterns: str | Site | Iterable[str | Site]) -> list[Site]:
        """Turn site strings and patterns (``"resid_post.*"``, ``"mlp_hidden.*"``) into resolved sites."""
        items = [patterns] if isinstance(patterns, (str, Site)) else list(patterns)
        out: list[Site] = []
        for item in items:
            text = str(item)
            if text.startswith(MODULE + ":") and "*" in text:
                out += self._expand_modules(Site.parse(text))
                continue
            if "*" not in text:
                site = Site.parse(text)
                self.point(site)
                out.append(site)
                continue
            kind = text.split(".")[0]
            Site.parse(text.replace("*", "0"))  # validates the kind and the arity
            prefix = text.split("*")[0]
            matches = [s for s in self.sites(kind) if str(s).startswith(prefix)]
            if not matches:
                raise ActkitError(f"pattern {text!r} matches no site of {type(self.model).__name__}")
            out += matches
        return list(dict.fromkeys(out))


def output_head(model: nn.Module) -> nn.Module | None:
    """The module that produces the logits (``lm_head`` and its kin), or None for a bare encoder or decoder."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Module) else None


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None
