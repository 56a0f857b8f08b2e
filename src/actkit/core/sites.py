"""Sites name *what* an activation is, independent of where a given architecture keeps it.

Grammar, for the named sites: ``kind`` for model-wide sites (``embed``, ``logits``), ``kind.LAYER`` for per-block
sites (``resid_post.12``) and ``kind.LAYER.EXPERT`` for per-expert sites (``expert_out.5.7``). A ``*`` in the layer
or expert slot is a pattern that `Anatomy.expand` turns into every matching site.

Any submodule is a site too: ``module:PATH:SIDE``, where PATH is what ``model.get_submodule`` takes
(``model.layers.3.mlp.shared_expert.down_proj``; empty for the model itself) and SIDE is ``input`` (the first
positional argument, or the ``hidden_states`` keyword) or ``output`` (the output, or the first element of a tuple
output). ``input.K`` and ``output.K`` name positional argument K and element K of a tuple output: a transformers 5
MoE router returns ``(logits, top-k weights, top-k indices)``, so ``module:model.layers.0.mlp.gate:output.2`` holds
the experts it picked. A ``*`` in a path component (``module:model.layers.*.mlp.down_proj:input``) is a pattern.
Module sites share the hook engine with the named sites: positions, padding, KV-cache decode and per-row writes
behave the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from actkit.errors import ActkitError

#: kind -> (number of indices, meaning). The order is the order a reader meets them in a forward pass.
SITE_KINDS: dict[str, tuple[int, str]] = {
    "embed": (0, "token embeddings, after any scaling (B, T, d)"),
    "resid_pre": (1, "residual stream entering block i (B, T, d)"),
    "attn_in": (1, "normalized input of the attention block: what the q, k and v projections read (B, T, d)"),
    "attn_hidden": (1, "input of the attention output projection: the heads' outputs side by side (B, T, H*d_head)"),
    "attn_out": (1, "attention output added to the residual (B, T, d)"),
    "mlp_in": (1, "normalized input of the MLP or MoE block (B, T, d)"),
    "router": (1, "router logits of an MoE block (B, T, E)"),
    "expert_out": (2, "output of expert e before gating, routed tokens only (N_e, d); read-only"),
    "mlp_hidden": (1, "input of the down projection, act(gate) * up for GLU MLPs (B, T, d_ff)"),
    "mlp_out": (1, "MLP or MoE output added to the residual (B, T, d)"),
    "resid_post": (1, "residual stream leaving block i (B, T, d)"),
    "logits": (0, "final logits (B, T, V)"),
}

#: The kind of a site given by module path; `Site.path` and `Site.side` hold the rest.
MODULE = "module"
_MODULE_FORM = "module:PATH:input or module:PATH:output (for example 'module:model.layers.3.mlp.down_proj:input')"


@dataclass(frozen=True, order=True)
class Site:
    """One activation site: a kind, and a block (and expert) index where the kind needs them.

    A module site (kind ``"module"``) holds instead the module's `path`, its `side` (``"input"`` or ``"output"``)
    and which positional argument or tuple element (`element`) carries the activation.
    """

    kind: str
    layer: int | None = None
    expert: int | None = None
    path: str | None = None
    side: str | None = None
    element: int = 0

    def __str__(self) -> str:
        if self.kind == MODULE:
            return f"{MODULE}:{self.path}:{self.side}" + (f".{self.element}" if self.element else "")
        parts = [self.kind] + [str(i) for i in (self.layer, self.expert) if i is not None]
        return ".".join(parts)

    @classmethod
    def module(cls, path: str, side: str = "output", element: int = 0) -> Site:
        """The site at a submodule's input or output: ``Site.module("model.layers.3.mlp", "input")``."""
        if side not in ("input", "output"):
            raise ActkitError(f"module site {path!r}: side must be 'input' or 'output', got {side!r}")
        if element < 0:
            raise ActkitError(f"module site {path!r}: the element index must be non-negative, got {element}")
        return cls(MODULE, path=path.strip(), side=side, element=element)

    @classmethod
    def parse(cls, text: str | Site) -> Site:
        """Parse ``"resid_post.12"`` or ``"module:PATH:input"`` into a `Site`; a clear `ActkitError` on bad input."""
        if isinstance(text, Site):
            return text
        return _parse_text(str(text))

    @classmethod
    def _from_text(cls, text: str) -> Site:
        raw_text = text.strip()
        if raw_text.startswith(MODULE + ":"):
            return _parse_module(raw_text)
        parts = raw_text.split(".")
        kind, raw = parts[0], parts[1:]
        if kind not in SITE_KINDS:
            raise ActkitError(f"unknown site kind {kind!r} in {text!r}; valid kinds: {', '.join(SITE_KINDS)}, or "
                              f"{_MODULE_FORM}")
        arity = SITE_KINDS[kind][0]
        if len(raw) != arity:
            form = {0: kind, 1: f"{kind}.LAYER", 2: f"{kind}.LAYER.EXPERT"}[arity]
            raise ActkitError(f"site {text!r} should look like {form!r} (for example {_example(kind)!r})")
        try:
            idx = [int(r) for r in raw]
        except ValueError:
            raise ActkitError(f"site {text!r}: indices must be integers, as in {_example(kind)!r}") from None
        if any(i < 0 for i in idx):
            raise ActkitError(f"site {text!r}: indices must be non-negative")
        return cls(kind, idx[0] if idx else None, idx[1] if len(idx) > 1 else None)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Site:
    """`Site.parse` of a string, remembered: a site is immutable, and a server parses the same few names for every
    request it steers."""
    return Site._from_text(text)


def _parse_module(text: str) -> Site:
    body = text[len(MODULE) + 1:]
    path, sep, side = body.rpartition(":")
    if not sep:
        raise ActkitError(f"site {text!r} should look like {_MODULE_FORM}")
    base, dot, index = side.partition(".")
    if base not in ("input", "output"):
        raise ActkitError(f"site {text!r}: the side {side!r} must be input, output, input.K or output.K; "
                          f"a module site looks like {_MODULE_FORM}")
    element = 0
    if dot:
        if not index.isdigit():
            raise ActkitError(f"site {text!r}: {side!r} needs a non-negative integer after the dot, as in 'output.1'")
        element = int(index)
    return Site.module(path, base, element)


def _example(kind: str) -> str:
    return {0: kind, 1: f"{kind}.3", 2: f"{kind}.3.0"}[SITE_KINDS[kind][0]]
