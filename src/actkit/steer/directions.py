"""Steering directions from contrast pairs: read activations, then reduce them to one vector per layer.

Reading: each text of each pair is run through the model by `collect` (batched, right-padded, padding never
read); at each layer the activation of a text is the mean over the tokens its read positions select, by default
its last token (`Last`). The mean norm of those tokens is kept too, for relative coefficients.

The methods, on the (N, d) positive and negative activations P and Q (float64), with m = mean(P - Q):

- ``mean-diff`` (CAA): m.
- ``pca-diff`` (representation engineering): the first principal direction of the paired differences P - Q,
  *uncentred* (the top right singular vector of P - Q): the differences are ordered (positive minus negative),
  so their shared component is the signal and centring would remove it.
- ``pca-center``: the first principal direction of the activations of both classes stacked and centred on their
  common mean: the direction of largest variance, which separates the classes when they are far apart.
- ``probe``: the weight vector of an L2-regularized logistic regression (positive = 1), fitted by LBFGS in
  float64 on the activations centred on their mean and scaled by one global factor (neither changes the
  direction of the weights, both make the fit well conditioned).
- ``actadd`` (ActAdd): one pair; the difference of its two activations at the read positions. Turner et al.
  add the difference of the whole aligned prompts; a (d,) vector per layer keeps the difference at the read
  positions (the last token by default; ``read_position="all"`` gives the difference of the mean over tokens).

Directions from the PCA and probe methods have no natural length: they are unit vectors with the sign that
makes them agree with m, then scaled to the norm of m (``normalization="mean-diff-norm"``), so a coefficient
means the same strength whatever the method. ``mean-diff`` and ``actadd`` are kept as they are (``"none"``).
Pass ``normalize="unit"`` for unit vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.collect import collect, context_length
from actkit.core.layers import resolve_layers
from actkit.core.positions import Last, Positions, parse_positions
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.steer.pairs import Pair, as_pairs, pairs_hash
from actkit.steer.vectors import SteeringVector, model_metadata

METHODS: tuple[str, ...] = ("mean-diff", "pca-diff", "pca-center", "probe", "actadd")
_F64 = torch.float64


class _PerText:
    """A reducer keeping, per document, the sum and count of the selected tokens, and the sum of their norms.

    Its memory grows with the number of texts (one (d,) row each), which is what a direction needs.
    """

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.norm_sum = 0.0
        self.tokens = 0

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None) -> None:
        if mask is None or where is None:
            raise ActkitError("reading per-text activations needs a mask and token locations")
        rows = x.detach()[mask].to(_F64).cpu()
        docs = where[..., 0][mask].cpu().tolist()
        if not docs:
            return
        self.norm_sum += float(rows.norm(dim=-1).sum())
        self.tokens += len(docs)
        for i, doc in enumerate(docs):
            if doc in self.sums:
                self.sums[doc] += rows[i]
                self.counts[doc] += 1
            else:
                self.sums[doc] = rows[i].clone()
                self.counts[doc] = 1

    def merge(self, other: _PerText) -> _PerText:
        for doc, total in other.sums.items():
            if doc in self.sums:
                self.sums[doc] += total
                self.counts[doc] += other.counts[doc]
            else:
                self.sums[doc], self.counts[doc] = total.clone(), other.counts[doc]
        self.norm_sum += other.norm_sum
        self.tokens += other.tokens
        return self

    def result(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "norm_sum": self.norm_sum, "tokens": self.tokens}


def read_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: int | Iterable[int] | None,
    *,
    site: str = "resid_post",
    read_position: str | Positions = "last",
    batch_size: int = 8,
) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """One activation per text at each layer: the mean over the tokens `read_position` selects.

    Arguments:
        model: the model.
        tokenizer: its tokenizer (``tokenizer(text)["input_ids"]``).
        texts: the texts; each must fit the model's context.
        layers: block indices (None: all).
        site: the site kind to read (``resid_post``: each block's output).
        read_position: ``"last"`` (default), ``"all"``, ``"from:K"``... or a `Positions` rule.
        batch_size: texts per forward pass.

    Returns:
        ``(acts, mean_norms)``: layer -> (len(texts), d) float64, and layer -> mean L2 norm of the read tokens.
    """
    if not texts:
        raise ActkitError("no texts to read")
    chosen = resolve_layers(model, layers)
    limit = context_length(model, tokenizer)
    for i, text in enumerate(texts):
        length = len(tokenizer(text)["input_ids"])
        if length > limit:  # collect would split it, and "the last token" would stop meaning one token
            raise ActkitError(f"text {i} has {length} tokens, more than the model's context of {limit}; shorten it")
    sites = [str(Site.parse(f"{site}.{layer}")) for layer in chosen]
    found = collect(model, list(texts), sites, {"rows": _PerText}, tokenizer=tokenizer, batch_size=batch_size,
                    positions=parse_positions(read_position))
    acts: dict[int, torch.Tensor] = {}
    norms: dict[int, float] = {}
    for layer, name in zip(chosen, sites, strict=True):
        state = found[name]["rows"].result()
        missing = [i for i in range(len(texts)) if i not in state["sums"]]
        if missing:
            raise ActkitError(f"text {missing[0]} has no token at read positions {read_position!r}; "
                              "check the texts and the read positions")
        acts[layer] = torch.stack([state["sums"][i] / state["counts"][i] for i in range(len(texts))])
        norms[layer] = state["norm_sum"] / max(state["tokens"], 1)
    return acts, norms


def _aligned(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return -direction if float(direction @ reference) < 0 else direction


def _top_direction(rows: torch.Tensor) -> torch.Tensor:
    if rows.shape[0] == 0:
        raise ActkitError("no rows to find a principal direction in")
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    return vh[0]


def mean_diff(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CAA: the mean over pairs of ``positive - negative``.

    Arguments:
        positive, negative: (N, d) activations, row i of each from pair i.

    Returns:
        (d,) float64.
    """
    return (_f64(positive) - _f64(negative)).mean(0)


def pca_diff(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The first principal direction of the uncentred paired differences (see the module docstring for why).

    Arguments:
        positive, negative: (N, d) activations, row i of each from pair i.

    Returns:
        (d,) float64, unit norm, sign agreeing with the mean difference.
    """
    diffs = _f64(positive) - _f64(negative)
    return _aligned(_top_direction(diffs), diffs.mean(0))


def pca_center(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The first principal direction of both classes stacked and centred on their common mean.

    Arguments:
        positive, negative: (N, d) activations.

    Returns:
        (d,) float64, unit norm, sign agreeing with the mean difference.
    """
    p, q = _f64(positive), _f64(negative)
    stacked = torch.cat([p, q])
    return _aligned(_top_direction(stacked - stacked.mean(0)), (p - q).mean(0))


def probe(positive: torch.Tensor, negative: torch.Tensor, *, l2: float = 1e-2, steps: int = 300) -> torch.Tensor:
    """Unit weight direction of an L2-regularized logistic regression separating positive (1) from negative (0).

    Arguments:
        positive, negative: (N, d) activations (the two classes may have different sizes).
        l2: the weight of ``l2 / 2 * |w|^2`` added to the mean cross-entropy, on the standardized features.
        steps: LBFGS iterations at most.

    Returns:
        (d,) float64, unit norm, sign agreeing with the mean difference of the classes.
    """
    p, q = _f64(positive), _f64(negative)
    x = torch.cat([p, q])
    y = torch.cat([torch.ones(len(p), dtype=_F64), torch.zeros(len(q), dtype=_F64)])
    centred = x - x.mean(0)
    scale = float(centred.pow(2).sum(1).mean().sqrt()) or 1.0  # one global factor: the direction is unchanged
    features = centred / scale
    w = torch.zeros(x.shape[1], dtype=_F64, requires_grad=True)
    b = torch.zeros((), dtype=_F64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(loss_fn)
    weights = w.detach()
    norm = weights.norm()
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        raise ActkitError("the probe found no separating direction (the two classes have identical activations)")
    return _aligned(weights / norm, p.mean(0) - q.mean(0))


def actadd(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """ActAdd: the activation difference of one prompt pair.

    Arguments:
        positive, negative: (1, d) activations of the pair.

    Returns:
        (d,) float64.
    """
    if positive.shape[0] != 1 or negative.shape[0] != 1:
        raise ActkitError(f"actadd uses exactly one prompt pair, got {positive.shape[0]}; use mean-diff for more")
    return _f64(positive)[0] - _f64(negative)[0]


def direction(positive: torch.Tensor, negative: torch.Tensor, method: str = "mean-diff",
              normalize: str | None = None) -> torch.Tensor:
    """One direction from (N, d) positive and negative activations, by `method`, normalized as documented.

    Arguments:
        positive, negative: (N, d) activations, row i of each from pair i.
        method: one of ``mean-diff``, ``pca-diff``, ``pca-center``, ``probe``, ``actadd``.
        normalize: ``none``, ``unit`` or ``mean-diff-norm``; None picks the method's default (module docstring).

    Returns:
        (d,) float64.
    """
    if positive.shape != negative.shape or positive.dim() != 2:
        raise ActkitError(f"positive and negative activations must both be (N, d); got {tuple(positive.shape)} "
                          f"and {tuple(negative.shape)}")
    fns = {"mean-diff": mean_diff, "pca-diff": pca_diff, "pca-center": pca_center, "probe": probe,
           "actadd": actadd}
    if method not in fns:
        raise ActkitError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    how = normalize or default_normalization(method)
    if how not in ("none", "unit", "mean-diff-norm"):
        raise ActkitError(f"unknown normalization {how!r}; use none, unit or mean-diff-norm")
    v = fns[method](positive, negative)
    if how == "unit":
        norm = v.norm()
        if float(norm) == 0.0:
            raise ActkitError("the direction is zero (positive and negative activations are identical)")
        return v / norm
    if how == "mean-diff-norm":
        return v / v.norm().clamp(min=1e-30) * mean_diff(positive, negative).norm()
    return v


def default_normalization(method: str) -> str:
    """``none`` for mean-diff and actadd (their length is meaningful), ``mean-diff-norm`` for the others."""
    return "none" if method in ("mean-diff", "actadd") else "mean-diff-norm"


def _f64(t: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t).detach().to("cpu", _F64)


def train_vector(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair] | Sequence[Sequence[str]],
    layers: int | Iterable[int] | None,
    *,
    method: str = "mean-diff",
    site: str = "resid_post",
    read_position: str | Positions = "last",
    batch_size: int = 8,
    normalize: str | None = None,
) -> SteeringVector:
    """Train a steering vector from contrast pairs.

    Arguments:
        model: the model to steer.
        tokenizer: its tokenizer.
        pairs: `Pair` objects (see `read_pairs`) or ``(positive, negative)`` tuples.
        layers: block index or indices (negative from the end); None for every block.
        method: ``mean-diff`` (default), ``pca-diff``, ``pca-center``, ``probe`` or ``actadd`` (module docstring).
        site: the site kind to read and later steer (``resid_post``: each block's output).
        read_position: which tokens of each text give its activation (averaged): ``"last"`` (default) or any
            rule `parse_positions` accepts.
        batch_size: texts per forward pass; results do not depend on it.
        normalize: ``none``, ``unit``, ``mean-diff-norm`` or None for the method's default.

    Returns:
        A `SteeringVector` whose metadata records the model, method, normalization, positions, data hash and
        the mean residual norm at each layer.
    """
    items = as_pairs(pairs)
    if method not in METHODS:
        raise ActkitError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "actadd" and len(items) != 1:
        raise ActkitError(f"actadd uses exactly one prompt pair, got {len(items)}; use mean-diff for more")
    positions = parse_positions(read_position)
    chosen = resolve_layers(model, layers)
    texts = [p.positive for p in items] + [p.negative for p in items]
    acts, norms = read_activations(model, tokenizer, texts, chosen, site=site, read_position=positions,
                                   batch_size=batch_size)
    n = len(items)
    how = normalize or default_normalization(method)
    directions = {layer: direction(acts[layer][:n], acts[layer][n:], method, how).to(torch.float32)
                  for layer in chosen}
    metadata = {
        **model_metadata(model),
        "site": site,
        "layers": chosen,
        "read_positions": repr(positions),
        "read_reduce": "last" if isinstance(positions, Last) else "mean over the selected tokens",
        "method": method,
        "normalization": how,
        "n_pairs": n,
        "data_hash": pairs_hash(items),
        "mean_norms": {str(layer): float(norms[layer]) for layer in chosen},
    }
    return SteeringVector(directions, site=site, metadata=metadata)


__all__ = [
    "METHODS", "actadd", "default_normalization", "direction", "mean_diff", "pca_center", "pca_diff", "probe",
    "read_activations", "train_vector",
]
