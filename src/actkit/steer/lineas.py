"""LinEAS: per-layer affine maps on activations, trained end to end with a distributional loss.

Rodriguez et al. (2025), "LinEAS: End-to-end Learning of Activation Steering with a Distributional Loss". At each
steered block ``l`` the activation becomes ``T_l(x) = (1 + delta_l) * x + b_l`` (coordinate-wise; optionally plus a
low-rank term ``(x @ down_l) @ up_l``). All maps are trained together, through the frozen model, so that the
activations of *source* texts, steered by every map upstream, match in distribution those of *target* texts:

    loss = sum_l mean_k W2^2( {z_ik / s_l}_i , {v_jk / s_l}_j )  +  penalty

where ``z_i`` is source text i's activation at block l after the maps (the mean over its read positions), ``v_j``
target text j's activation read once without steering, ``W2^2`` the squared 1-D Wasserstein distance between the
two empirical distributions of coordinate k (the sorted-quantile form: with as many texts on each side it is the
mean squared difference of the sorted values; otherwise the integral of the squared difference of the two quantile
functions, exact), and ``s_l`` the root-mean-square coordinate of the target activations at block l (so that
blocks with large residual norms do not drown the others; the paper's loss is the ``s_l = 1`` case). The texts
need not be paired, and a handful on each side is enough.

The penalty is a sparse-group lasso on the deviation from the identity, ``lambda_1 * (|delta|_1 + |beta|_1) +
lambda_g * sum_l |(delta_l, beta_l)|_2`` with ``b_l = s_l * beta_l``, applied by its proximal operator after each
Adam step (soft thresholding, then group shrinkage), so a coordinate or a whole block whose map is not needed is
exactly the identity: the penalty selects neurons and layers. The model's weights are never touched: gradients are
taken with respect to the maps only.

A trained `LinEAS` is a set of `AffineMap` interventions (``strength`` s interpolates: ``x + s * (T(x) - x)``,
s = 0 is the plain model), saved as safetensors with the same JSON metadata as vector files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.collect import context_length, token_batches
from actkit.core.hooks import Read, tap
from actkit.core.interventions import Intervention, check_finite
from actkit.core.layers import resolve_layers
from actkit.core.positions import Positions, StepContext, parse_positions
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.io import atomic_file, check_output_file, read_safetensors
from actkit.steer.directions import read_activations
from actkit.steer.pairs import Pair, pairs_hash
from actkit.steer.vectors import SteeringVector, check_fits, check_metadata, model_metadata

#: The ``kind`` entry of a LinEAS file's safetensors header (vector files have none).
KIND = "lineas"
FORMAT_VERSION = "1"
#: Texts needed on each side at least: a distribution of one sample has no shape to match.
MIN_TEXTS = 2
_PARTS = ("scale", "shift", "down", "up")


class AffineMap(Intervention):
    """``x + strength * (delta * x + shift + (x @ down) @ up)``: one block's LinEAS map, at the selected tokens.

    Arguments:
        delta: (d,) the scale's deviation from 1.
        shift: (d,) the shift.
        down, up: (d, r) and (r, d) for the optional low-rank term, or None.
        strength: how much of the map to apply (1: as trained; 0: the identity, bit for bit).
        positions: which tokens to change (default all).
    """

    def __init__(self, delta: torch.Tensor, shift: torch.Tensor, down: torch.Tensor | None = None,
                 up: torch.Tensor | None = None, strength: float = 1.0, positions: Positions | None = None):
        super().__init__(positions)
        if delta.shape != shift.shape or delta.dim() != 1:
            raise ActkitError(f"the scale and shift must both be (d,); got {tuple(delta.shape)} and "
                              f"{tuple(shift.shape)}")
        if (down is None) != (up is None):
            raise ActkitError("a low-rank term needs both its down (d, r) and up (r, d) matrices")
        if down is not None and up is not None and (down.shape[0] != delta.shape[0] or up.shape[1] != delta.shape[0]
                                                    or down.shape[1] != up.shape[0]):
            raise ActkitError(f"the low-rank matrices have shapes {tuple(down.shape)} and {tuple(up.shape)}; "
                              f"expected (d, r) and (r, d) with d = {delta.shape[0]}")
        for name, value in (("scale", delta), ("shift", shift), ("low-rank term", down), ("low-rank term", up)):
            if value is not None:
                check_finite(value.detach(), f"LinEAS {name}")
        check_finite(float(strength), "LinEAS strength")
        self.delta, self.shift, self.down, self.up = delta, shift, down, up
        self.strength = float(strength)
        trained = delta.requires_grad or shift.requires_grad or (up is not None and up.requires_grad)
        self.identity = self.strength == 0.0 or (
            not trained and not bool(delta.any()) and not bool(shift.any()) and (up is None or not bool(up.any())))

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.identity:  # returns the very tensor: the plain model, bit for bit
            return x
        return super().__call__(x, mask, ctx)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if x.shape[-1] != self.delta.shape[0]:
            raise ActkitError(f"the LinEAS map has size {self.delta.shape[0]} but the site has size {x.shape[-1]}; "
                              "use a map trained for this model")
        delta = self.delta.to(device=x.device, dtype=x.dtype)
        shift = self.shift.to(device=x.device, dtype=x.dtype)
        change = x * delta + shift
        if self.down is not None and self.up is not None:
            change = change + (x @ self.down.to(device=x.device, dtype=x.dtype)) @ self.up.to(x.device, x.dtype)
        return x + self.strength * change if self.strength != 1.0 else x + change


@dataclass
class LinEAS:
    """Trained LinEAS maps, one per block, with the facts needed to use them correctly.

    Arguments:
        maps: block index -> {"scale": (d,) delta, "shift": (d,), and optionally "down": (d, r), "up": (r, d)};
            float32 tensors. The map at a block is ``(1 + scale) * x + shift + (x @ down) @ up``.
        site: the site kind the maps act on (``resid_post``: the output of each block).
        metadata: JSON-ready facts (model, losses, penalties, data hash...).
    """

    maps: dict[int, dict[str, torch.Tensor]]
    site: str = "resid_post"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.maps:
            raise ActkitError("a LinEAS needs at least one layer")
        Site.parse(f"{self.site}.0")
        for layer, parts in self.maps.items():
            missing = [p for p in ("scale", "shift") if p not in parts]
            if missing:
                raise ActkitError(f"the LinEAS map of layer {layer} lacks its {' and '.join(missing)}")
            unknown = sorted(set(parts) - set(_PARTS))
            if unknown:
                raise ActkitError(f"the LinEAS map of layer {layer} has unknown parts {unknown}")
            AffineMap(parts["scale"], parts["shift"], parts.get("down"), parts.get("up"))  # checks shapes, values
        widths = {int(parts["scale"].shape[0]) for parts in self.maps.values()}
        if len(widths) != 1:
            raise ActkitError(f"the LinEAS maps have different sizes {sorted(widths)}; all layers need one size")
        self.maps = {int(k): {p: t.detach().to("cpu", torch.float32).contiguous() for p, t in v.items()}
                     for k, v in sorted(self.maps.items())}

    @property
    def layers(self) -> list[int]:
        """The block indices, ascending."""
        return sorted(self.maps)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.maps.values()))["scale"].shape[0])

    def active(self) -> dict[int, int]:
        """Block -> how many coordinates its map changes (a non-zero scale deviation or shift)."""
        return {layer: int(((m["scale"] != 0) | (m["shift"] != 0)).sum()) for layer, m in self.maps.items()}

    @property
    def rank(self) -> int:
        """The rank of the low-rank term (0: diagonal maps only)."""
        return max((int(m["down"].shape[1]) for m in self.maps.values() if "down" in m), default=0)

    def summary(self) -> list[dict[str, Any]]:
        """Per block, what ``actkit vector inspect`` and ``GET /v1/steering`` show: the site, how many coordinates
        the diagonal part changes and their fraction (the rest keep the identity: what the sparsity penalty
        selected), the norms of the scale deviation and of the shift, and the low-rank term's rank."""
        active = self.active()
        return [{"layer": layer, "site": f"{self.site}.{layer}", "active": active[layer],
                 "active_fraction": active[layer] / self.hidden_size, "scale_norm": float(m["scale"].norm()),
                 "shift_norm": float(m["shift"].norm()), "rank": int(m["down"].shape[1]) if "down" in m else 0}
                for layer, m in self.maps.items()]

    def to_intervention(self, strength: float = 1.0, positions: Positions | str | None = None,
                        layers: Sequence[int] | None = None) -> dict[str, Intervention]:
        """The writes that steer a model with these maps, for ``tap(model, write=...)`` or `generate`.

        Arguments:
            strength: ``x + strength * (T(x) - x)``; 1 is the map as trained, 0 the plain model.
            positions: which tokens to steer (default all, as in training).
            layers: only these of the maps' blocks (negative: from the end of the model); None: all.

        Returns:
            site -> `AffineMap`, one per block.
        """
        if not math.isfinite(strength):
            raise ActkitError(f"the strength must be a finite number (got {strength})")
        where = parse_positions(positions) if positions is not None else None
        chosen = self.layers
        if layers:
            n = int(self.metadata.get("num_layers") or 0)
            chosen = [w + n if w < 0 and n else w for w in layers]
            missing = [w for w in chosen if w not in self.maps]
            if missing:
                raise ActkitError(f"the LinEAS file has no map at block(s) {missing}; it has "
                                  f"{', '.join(map(str, self.layers))}")
        return {f"{self.site}.{layer}": AffineMap(self.maps[layer]["scale"], self.maps[layer]["shift"],
                                                  self.maps[layer].get("down"), self.maps[layer].get("up"),
                                                  strength=strength, positions=where)
                for layer in chosen}


def wasserstein_1d(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared 1-D Wasserstein distance between two empirical distributions, per coordinate.

    Arguments:
        source: (n, d) samples; target: (m, d) samples (uniform weights; n and m may differ).

    Returns:
        (d,) ``W2^2`` of each column: the integral over t in (0, 1] of the squared difference of the two quantile
        functions; with n = m, the mean squared difference of the sorted columns. Differentiable in `source`.
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ActkitError(f"the samples have shapes {tuple(source.shape)} and {tuple(target.shape)}; "
                          "expected (n, d) and (m, d)")
    n, m = int(source.shape[0]), int(target.shape[0])
    if n == 0 or m == 0:
        raise ActkitError("a Wasserstein distance needs samples on both sides")
    a, b = torch.sort(source, dim=0).values, torch.sort(target.to(source.dtype), dim=0).values
    if n == m:
        return ((a - b) ** 2).mean(0)
    # quantile breakpoints k/n and k/m on a common grid of 1/(n m): each interval maps to one sample of each side
    ends = sorted({i * m for i in range(1, n + 1)} | {j * n for j in range(1, m + 1)})
    starts = [0, *ends[:-1]]
    weights = torch.tensor([(e - s) / (n * m) for s, e in zip(starts, ends, strict=True)], dtype=source.dtype,
                           device=source.device)
    ia = torch.tensor([-(-e // m) - 1 for e in ends], device=source.device)
    ib = torch.tensor([-(-e // n) - 1 for e in ends], device=source.device)
    return (weights[:, None] * (a[ia] - b[ib]) ** 2).sum(0)


def distribution_loss(source: dict[int, torch.Tensor], target: dict[int, torch.Tensor],
                      scales: dict[int, float] | None = None) -> torch.Tensor:
    """LinEAS's loss without the penalty: ``sum_l mean_k W2^2(source_l[:, k] / s_l, target_l[:, k] / s_l)``.

    Arguments:
        source: block -> (n, d) steered source activations; target: block -> (m, d) target activations.
        scales: block -> s_l (default 1 at every block).

    Returns:
        A scalar tensor.
    """
    total = torch.zeros((), dtype=torch.float64)
    for layer, z in source.items():
        s = 1.0 if scales is None else scales[layer]
        total = total + wasserstein_1d(z.to(torch.float64) / s, target[layer].to(torch.float64) / s).mean()
    return total


def train_lineas(
    model: nn.Module,
    tokenizer: Any,
    source: Sequence[str],
    target: Sequence[str],
    layers: int | Iterable[int] | None = None,
    *,
    site: str = "resid_post",
    read_position: str | Positions = "all",
    steps: int = 100,
    lr: float = 0.01,
    l1: float = 1e-3,
    group: float = 1e-3,
    rank: int = 0,
    batch_size: int = 16,
    seed: int = 0,
    progress: Any = None,
) -> LinEAS:
    """Train LinEAS maps that move the source texts' activations to the target texts' distribution.

    Arguments:
        model: the model (its weights are never changed; gradients flow to the maps only).
        tokenizer: its tokenizer.
        source, target: unpaired texts, at least `MIN_TEXTS` each (the paper uses 32 per side).
        layers: block indices to place maps at (None: every block).
        site: the site kind the maps act on.
        read_position: the tokens whose mean is a text's activation (``"all"``, ``"last"``, ``"from:K"``...).
            The maps themselves act on every token.
        steps: Adam steps (each a full pass over the source texts).
        lr: Adam's learning rate (the shift is learned in units of each block's RMS coordinate).
        l1, group: the sparse-group lasso weights (per coordinate; per block).
        rank: the rank of an optional low-rank term (0: diagonal maps only, the default).
        batch_size: texts per forward pass.
        seed: the seed of the low-rank term's initialization.
        progress: called as ``progress(step, loss)`` after each step, if given.

    Returns:
        The `LinEAS`; its metadata records the loss before and after training, the settings and the data hash.
    """
    for name, value, least in (("steps", steps, 1), ("batch_size", batch_size, 1), ("rank", rank, 0)):
        if not isinstance(value, int) or value < least:
            raise ActkitError(f"{name} must be an integer of at least {least} (got {value!r})")
    for name, number in (("lr", lr), ("l1", l1), ("group", group)):
        if not math.isfinite(number) or number < 0 or (name == "lr" and number == 0):
            raise ActkitError(f"{name} must be a finite {'positive' if name == 'lr' else 'non-negative'} number "
                              f"(got {number})")
    for side, texts in (("source", source), ("target", target)):
        if len(texts) < MIN_TEXTS:
            raise ActkitError(f"LinEAS needs at least {MIN_TEXTS} {side} texts to match distributions (got "
                              f"{len(texts)}); give a handful on each side (the paper uses 32)")
    chosen = resolve_layers(model, layers)
    where = parse_positions(read_position)
    targets, _ = read_activations(model, tokenizer, target, chosen, site=site, read_position=where,
                                  batch_size=batch_size)
    width = int(next(iter(targets.values())).shape[1])
    scales = {layer: max(float(v.pow(2).mean().sqrt()), 1e-12) for layer, v in targets.items()}
    limit = context_length(model, tokenizer)
    for i, text in enumerate(source):
        length = len(tokenizer(text)["input_ids"])
        if length > limit:
            raise ActkitError(f"source text {i} has {length} tokens, more than the model's context of {limit}")
    device = next(model.parameters()).device
    delta = {layer: torch.zeros(width, device=device, requires_grad=True) for layer in chosen}
    beta = {layer: torch.zeros(width, device=device, requires_grad=True) for layer in chosen}
    low: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    g = torch.Generator().manual_seed(seed)
    for layer in chosen if rank else []:
        down = (torch.randn(width, rank, generator=g) / math.sqrt(width)).to(device).requires_grad_(True)
        low[layer] = (down, torch.zeros(rank, width, device=device, requires_grad=True))
    params = [*delta.values(), *beta.values(), *(t for pair in low.values() for t in pair)]
    optimizer = torch.optim.Adam(params, lr=lr)
    batches = list(token_batches(source, tokenizer, limit=None, batch_size=batch_size, split=False))

    def maps() -> dict[str, Intervention]:
        return {f"{site}.{layer}": AffineMap(delta[layer], beta[layer] * scales[layer],
                                             *(low[layer] if layer in low else (None, None)))
                for layer in chosen}

    def steered_loss() -> torch.Tensor:
        pooled: dict[int, list[torch.Tensor]] = {layer: [] for layer in chosen}

        def sink(layer: int) -> Any:
            def read(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
                m = mask.to(x.dtype).unsqueeze(-1)
                counts = m.sum(1)
                if bool((counts == 0).any()):
                    raise ActkitError(f"a source text has no token at read positions {read_position!r}")
                pooled[layer].append((x * m).sum(1) / counts)
            return read

        reads = {f"{site}.{layer}": Read(sink(layer), where) for layer in chosen}
        with tap(model, read=reads, write=maps()):
            for batch in batches:
                model(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device))
        steered = {layer: torch.cat(rows) for layer, rows in pooled.items()}
        return distribution_loss(steered, {k: v.to(device) for k, v in targets.items()}, scales)

    history: list[float] = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = steered_loss()
        history.append(float(loss.detach()))
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # the maps only: the model gets no .grad
        for p, grad in zip(params, grads, strict=True):
            p.grad = torch.zeros_like(p) if grad is None else grad.to(p.dtype)
        optimizer.step()
        with torch.no_grad():
            _prox(optimizer, delta, beta, lr, l1, group)
        if progress is not None:
            progress(step, history[-1])
    with torch.no_grad():
        final = float(steered_loss())
    out: dict[int, dict[str, torch.Tensor]] = {}
    for layer in chosen:
        parts = {"scale": delta[layer].detach(), "shift": (beta[layer] * scales[layer]).detach()}
        if layer in low:
            parts["down"], parts["up"] = (t.detach() for t in low[layer])
        out[layer] = parts
    pairs = [Pair(t, s) for t, s in zip(target, source, strict=False)]
    meta = {**model_metadata(model), "method": KIND, "site": site,
            "read_positions": str(read_position), "n_source": len(source), "n_target": len(target),
            "data_hash": pairs_hash(pairs) if len(source) == len(target) else None,
            "steps": steps, "lr": lr, "l1": l1, "group": group, "rank": rank,
            "loss_start": history[0], "loss_end": final, "block_scales": {str(k): v for k, v in scales.items()}}
    return LinEAS(out, site=site, metadata={k: v for k, v in meta.items() if v is not None})


def train_from_pairs(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], layers: int | Iterable[int] | None,
                     **options: Any) -> LinEAS:
    """`train_lineas` with a pairs file's sides as unpaired texts: negatives are the source, positives the target.

    So the maps steer towards the positive side, as a mean-difference vector at a positive coefficient does.
    """
    return train_lineas(model, tokenizer, [p.negative for p in pairs], [p.positive for p in pairs], layers,
                        **options)


def _prox(optimizer: torch.optim.Adam, delta: dict[int, torch.Tensor], beta: dict[int, torch.Tensor], lr: float,
          l1: float, group: float) -> None:
    """The proximal step of the sparse-group lasso, in the metric of Adam's step.

    Adam moves coordinate i by about ``lr / sqrt(v_i)`` per unit of gradient, so the matching proximal step soft
    thresholds it by ``lr * l1 / sqrt(v_i)``; then each block is shrunk towards the identity by ``lr * group / r``
    (r the mean of ``sqrt(v_i)`` over the block; the group prox has no closed form in a diagonal metric).
    """
    beta2, eps = optimizer.defaults["betas"][1], optimizer.defaults["eps"]
    for layer in delta:
        roots = []
        for p in (delta[layer], beta[layer]):
            state = optimizer.state[p]
            step = float(state["step"])
            root = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt() + eps
            p.copy_(torch.sign(p) * torch.clamp(p.abs() - lr * l1 / root, min=0.0))
            roots.append(root)
        norm = float(torch.sqrt(delta[layer].pow(2).sum() + beta[layer].pow(2).sum()))
        mean_root = float(torch.cat(roots).mean())
        factor = max(0.0, 1.0 - lr * group / mean_root / norm) if norm > 0 else 0.0
        delta[layer].mul_(factor)
        beta[layer].mul_(factor)


def save_lineas(lineas: LinEAS, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `lineas` as a safetensors file, atomically: tensors ``<part>.<block>``, JSON metadata in the header.

    Arguments:
        lineas: the maps; their metadata must be JSON-serializable.
        path: the file to write; its folder is created if missing.
        overwrite: replace an existing file (the CLI's ``--force``); otherwise an existing file is an error.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    p = check_output_file(path, overwrite=overwrite)
    meta = {**lineas.metadata, "site": lineas.site, "layers": lineas.layers, "hidden_size": lineas.hidden_size}
    try:
        blob = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ActkitError(f"the LinEAS metadata cannot be written as JSON: {error}") from None
    tensors = {f"{part}.{layer}": t for layer, parts in lineas.maps.items() for part, t in parts.items()}
    with atomic_file(p, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"format_version": FORMAT_VERSION, "kind": KIND, "actkit": blob})
    return p


def is_lineas_file(path: str | Path) -> bool:
    """Whether `path` is a safetensors file written by `save_lineas` (False for anything else, unreadable too)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:  # type: ignore[no-untyped-call]
            return (handle.metadata() or {}).get("kind") == KIND
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False


def load_lineas(path: str | Path, model: nn.Module | None = None) -> LinEAS:
    """Read a file written by `save_lineas`, and check it against `model` when given.

    Arguments:
        path: the safetensors file.
        model: the model the maps will steer: a different hidden size or block count, or a block the model lacks,
            raises `ActkitError` saying what differs; a different model name or other config fields only warn.

    Returns:
        The `LinEAS`, float32, on the CPU.
    """
    p = Path(path)
    header, tensors = read_safetensors(p, "LinEAS file")
    if header.get("kind") != KIND or "actkit" not in header:
        raise ActkitError(f"{str(p)!r} is not a LinEAS file (train one with actkit vector train --method lineas)")
    if header.get("format_version") != FORMAT_VERSION:
        raise ActkitError(f"{str(p)!r} has format version {header.get('format_version')!r}; this actkit reads "
                          f"version {FORMAT_VERSION}")
    try:
        meta = json.loads(header["actkit"])
    except json.JSONDecodeError as error:
        raise ActkitError(f"{str(p)!r}: the actkit metadata is not valid JSON ({error.msg})") from None
    if not isinstance(meta, dict):
        raise ActkitError(f"{str(p)!r}: the actkit metadata is not a JSON object")
    check_metadata(meta, str(p))
    maps: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        part, _, index = name.partition(".")
        if part not in _PARTS or not index.isdigit():
            raise ActkitError(f"{str(p)!r}: unexpected tensor {name!r}; tensors are named '<part>.<block>' with "
                              f"part one of {', '.join(_PARTS)}")
        maps.setdefault(int(index), {})[part] = t.to(torch.float32)
    listed = meta.get("layers")
    if isinstance(listed, list) and sorted(listed) != sorted(maps):
        raise ActkitError(f"{str(p)!r}: the metadata lists layers {listed} but the file holds {sorted(maps)}")
    try:
        lineas = LinEAS(maps, site=str(meta.get("site", "resid_post")), metadata=meta)
    except ActkitError as error:
        raise ActkitError(f"{str(p)!r}: {error}") from None
    if lineas.hidden_size != meta.get("hidden_size", lineas.hidden_size):
        raise ActkitError(f"{str(p)!r}: the maps have size {lineas.hidden_size} but the metadata says hidden size "
                          f"{meta.get('hidden_size')}")
    if model is not None:
        shifts = {layer: parts["shift"] for layer, parts in lineas.maps.items()}
        check_fits(SteeringVector(shifts, site=lineas.site, metadata=meta), model, source=str(p))
    return lineas


__all__ = ["KIND", "MIN_TEXTS", "AffineMap", "LinEAS", "distribution_loss", "is_lineas_file", "load_lineas",
           "save_lineas", "train_from_pairs", "train_lineas", "wasserstein_1d"]
