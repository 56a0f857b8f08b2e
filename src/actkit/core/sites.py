"""Sites name *what* an activation is, independent of where a given architecture keeps it.

Grammar: ``kind`` for model-wide sites (``embed``, ``logits``), ``kind.LAYER`` for per-block sites
(``resid_post.12``) and ``kind.LAYER.EXPERT`` for per-expert sites (``expert_out.5.7``). A ``*`` in the layer
or expert slot is a pattern that `Anatomy.expand` turns into every matching site.
"""

from __future__ import annotations

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


@dataclass(frozen=True, order=True)
class Site:
    """One activation site: a kind, and a block (and expert) index where the kind needs them."""

    kind: str
    layer: int | None = None
    expert: int | None = None

    def __str__(self) -> str:
        parts = [self.kind] + [str(i) for i in (self.layer, self.expert) if i is not None]
        return ".".join(parts)

    @classmethod
    def parse(cls, text: str | Site) -> Site:
        """Parse ``"resid_post.12"`` into a `Site`; raises `ActkitError` with the grammar on bad input."""
        if isinstance(text, Site):
            return text
        parts = str(text).strip().split(".")
        kind, raw = parts[0], parts[1:]
        if kind not in SITE_KINDS:
            raise ActkitError(f"unknown site kind {kind!r} in {text!r}; valid kinds: {', '.join(SITE_KINDS)}")
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
        return cls(kind, *idx)


def is_pattern(text: str) -> bool:
    """Whether a site string holds a ``*`` wildcard (``"resid_post.*"``, ``"expert_out.3.*"``)."""
    return "*" in text


def _example(kind: str) -> str:
    return {0: kind, 1: f"{kind}.3", 2: f"{kind}.3.0"}[SITE_KINDS[kind][0]]
