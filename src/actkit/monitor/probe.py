"""Probes: linear read-outs of a behaviour at one site, trained on labelled texts and scored with held-out AUROC.

A `Probe` scores a token's activation x at its site as ``x . weight + bias`` (float32); a text's score is that of
its last token (``reduce="last"``) or the mean over its tokens (``"mean"``), padding never read. Scores above
``threshold`` are positive; `train_probe` sets the threshold at a stated false-positive rate on the negatives of
its training split and reports AUROC and accuracy on a held-out split it never fitted on.

The methods, on the (N, d) activations of the positive (label 1) and negative (label 0) training texts, with means
mu1 and mu0 (float64):

- ``mean-diff``: weight = (mu1 - mu0) / |mu1 - mu0|, bias putting the midpoint of the two means at 0; what
  AxBench finds among the best concept detectors, and the direction a CAA steering vector steers along.
- ``logistic``: L2-regularized logistic regression fitted by LBFGS on standardized features (each dimension
  centred and scaled by its standard deviation), mapped back to the raw activations; scores are logits.
- ``pca``: the first principal direction of the training activations centred on their mean, signed to agree
  with mu1 - mu0, bias at the midpoint of the two means: unsupervised except for the sign.
- ``vector``: a steering vector's direction (`probe_from_vector`), unit norm, bias 0.

Files are safetensors: one float32 tensor ``weight`` and, in the header, ``format_version`` and ``actkit_probe``
(one JSON object: site, bias, threshold, method, reduce and the model fields of `model_metadata`). Loading against
a model refuses a probe made for another configuration.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.layers import resolve_layers
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.io import atomic_file, check_output_file, read_safetensors
from actkit.steer.directions import read_activations
from actkit.steer.vectors import CONFIG_FIELDS, SteeringVector, model_metadata

FORMAT_VERSION = "1"
METHODS: tuple[str, ...] = ("mean-diff", "logistic", "pca")
REDUCES: tuple[str, ...] = ("last", "mean")
_F64 = torch.float64


@dataclass
class Probe:
    """A linear read-out at one site: score(x) = x . weight + bias (float32), per token.

    Arguments:
        site: a site name with its block, e.g. ``"resid_post.3"``.
        weight: (hidden,) float32.
        bias: the offset added to every projection.
        threshold: scores above it are positive (chosen at a stated false-positive rate).
        method: ``mean-diff``, ``logistic``, ``pca`` or ``vector``.
        reduce: how a text's score comes from its tokens: ``"last"`` token or ``"mean"`` over its tokens.
        metadata: JSON-ready facts: the model fields (`model_metadata`), fpr, held-out auroc and accuracy, ...
    """

    site: str
    weight: torch.Tensor
    bias: float
    threshold: float
    method: str
    reduce: str = "last"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parsed = Site.parse(self.site)
        if parsed.layer is None:
            raise ActkitError(f"a probe's site needs a block index (e.g. 'resid_post.3'), got {self.site!r}")
        self.site = str(parsed)
        w = torch.as_tensor(self.weight).detach().to("cpu", torch.float32).reshape(-1)
        if w.numel() == 0 or not bool(torch.isfinite(w).all()):
            raise ActkitError("a probe's weight must be a non-empty vector of finite numbers")
        self.weight = w
        for name in ("bias", "threshold"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ActkitError(f"a probe's {name} must be a finite number, got {value}")
            setattr(self, name, value)
        if self.reduce not in REDUCES:
            raise ActkitError(f"unknown reduce {self.reduce!r}; use one of {', '.join(REDUCES)}")

    @property
    def layer(self) -> int:
        """The block index of the probe's site."""
        layer = Site.parse(self.site).layer
        assert layer is not None
        return layer

    @property
    def kind(self) -> str:
        """The site kind (``resid_post``, ``mlp_hidden``...)."""
        return Site.parse(self.site).kind

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., hidden) activations -> (...) float32 scores ``x . weight + bias``."""
        if x.shape[-1] != self.weight.shape[0]:
            raise ActkitError(f"the probe has size {self.weight.shape[0]} but the activations have size {x.shape[-1]}")
        return (x.to(torch.float32) @ self.weight.to(x.device) + self.bias).to(torch.float32)

    def score(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16) -> torch.Tensor:
        """Each text's score: `project` of its activation at the site, reduced by ``reduce``.

        Arguments:
            model: the model the probe was made for.
            tokenizer: its tokenizer.
            texts: the texts; each must fit the model's context.
            batch_size: texts per forward pass (results do not depend on it).

        Returns:
            (N,) float32 scores on the CPU.
        """
        feats = text_activations(model, tokenizer, texts, [self.layer], kind=self.kind, reduce=self.reduce,
                                 batch_size=batch_size)[self.layer]
        return self.project(feats)

    def predict(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) bool: scores above the threshold."""
        return scores > self.threshold


def text_activations(model: nn.Module, tokenizer: Any, texts: Sequence[str], layers: Sequence[int] | None, *,
                     kind: str = "resid_post", reduce: str = "last", batch_size: int = 16) -> dict[int, torch.Tensor]:
    """One activation per text at each block: its last token's, or the mean over its tokens.

    Returns:
        block -> (N, d) float64 on the CPU. A text longer than the context or an empty list raises `ActkitError`.
    """
    if isinstance(texts, str):
        raise ActkitError("texts must be a list of strings, not one string")
    if reduce not in REDUCES:
        raise ActkitError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCES)}")
    acts, _ = read_activations(model, tokenizer, list(texts), layers, site=kind,
                               read_position="last" if reduce == "last" else "all", batch_size=batch_size)
    return acts


def auroc(scores: torch.Tensor | Sequence[float], labels: torch.Tensor | Sequence[int]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative (ties 1/2).

    Arguments:
        scores: (N,) scores.
        labels: (N,) 0 or 1; both classes must be present.
    """
    s = torch.as_tensor(scores, dtype=_F64).reshape(-1)
    y = check_labels(labels)
    if s.shape[0] != y.shape[0]:
        raise ActkitError(f"{s.shape[0]} scores but {y.shape[0]} labels")
    pos, neg = s[y == 1], s[y == 0]
    ranks = _average_ranks(torch.cat([pos, neg]))
    n1, n0 = pos.shape[0], neg.shape[0]
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties given their average rank (Mann-Whitney)."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    i, n = 0, values.shape[0]
    while i < n:
        j = i
        while j + 1 < n and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def threshold_at_fpr(negative_scores: torch.Tensor | Sequence[float], fpr: float) -> float:
    """The lowest threshold with at most `fpr` of `negative_scores` strictly above it.

    Arguments:
        negative_scores: scores of negative (label 0) calibration texts.
        fpr: the false-positive rate allowed, in [0, 1).

    Returns:
        A threshold t: ``mean(negative_scores > t) <= fpr``; it is one of the scores, so the rate is met exactly
        when ``fpr * N`` is a whole number and the scores are distinct.
    """
    if not 0.0 <= fpr < 1.0:
        raise ActkitError(f"the false-positive rate must be in [0, 1), got {fpr}")
    s = torch.as_tensor(negative_scores, dtype=_F64).reshape(-1)
    if s.numel() == 0:
        raise ActkitError("no negative scores to set a threshold on")
    ordered = torch.sort(s, descending=True).values
    allowed = int(math.floor(fpr * s.numel() + 1e-9))  # how many negatives may lie above
    return float(ordered[allowed])


def check_labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """(N,) int64 labels, each 0 or 1, both present; `ActkitError` naming the problem otherwise."""
    raw = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    bad = [v for v in raw if not (isinstance(v, (int, bool)) or (isinstance(v, float) and v in (0.0, 1.0)))
           or v not in (0, 1)]
    if bad:
        raise ActkitError(f"labels must be 0 or 1 (two classes); got {bad[0]!r}. Give label 1 to texts that show the "
                          "behaviour and 0 to those that do not")
    y = torch.tensor([int(v) for v in raw], dtype=torch.long)
    counts = [int((y == c).sum()) for c in (0, 1)]
    if min(counts) == 0:
        missing = 0 if counts[0] == 0 else 1
        raise ActkitError(f"all {len(raw)} labels are {1 - missing}: a probe needs both classes (0 and 1); add texts "
                          f"with label {missing}")
    return y


def split_held_out(labels: torch.Tensor, held_out: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A stratified split: (train indices, held-out indices), the same fraction of each class held out.

    Each class needs at least 2 examples (one to fit, one to test); `ActkitError` otherwise.
    """
    if not 0.0 < held_out < 1.0:
        raise ActkitError(f"the held-out fraction must be between 0 and 1, got {held_out}")
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for c in (0, 1):
        members = [i for i, v in enumerate(labels.tolist()) if v == c]
        if len(members) < 2:
            raise ActkitError(f"too few examples for a held-out split: class {c} has {len(members)} text(s); give at "
                              "least 2 of each class (more for a meaningful AUROC)")
        rng.shuffle(members)
        k = min(max(1, round(held_out * len(members))), len(members) - 1)
        test += members[:k]
        train += members[k:]
    return sorted(train), sorted(test)


def fit_direction(features: torch.Tensor, labels: torch.Tensor, method: str, *, l2: float = 1e-2,
                  steps: int = 300) -> tuple[torch.Tensor, float]:
    """(weight, bias) of a linear probe on (N, d) features and 0/1 labels, by `method` (module docstring).

    Returns:
        (d,) float64 weight and the bias, in the coordinates of `features`.
    """
    x = torch.as_tensor(features).to("cpu", _F64)
    y = check_labels(labels)
    pos, neg = x[y == 1], x[y == 0]
    mu1, mu0 = pos.mean(0), neg.mean(0)
    diff = mu1 - mu0
    mid = (mu1 + mu0) / 2
    if method == "mean-diff":
        norm = float(diff.norm())
        if norm == 0.0:
            raise ActkitError("the two classes have the same mean activation: mean-diff finds no direction")
        w = diff / norm
        return w, float(-(w @ mid))
    if method == "pca":
        centred = x - x.mean(0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        w = vh[0]
        if float(w @ diff) < 0:
            w = -w
        return w, float(-(w @ mid))
    if method == "logistic":
        return _logistic(x, y.to(_F64), l2=l2, steps=steps)
    raise ActkitError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")


def _logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float, steps: int) -> tuple[torch.Tensor, float]:
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=_F64, requires_grad=True)
    b = torch.zeros((), dtype=_F64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(loss_fn)
    raw = w.detach() / std
    return raw, float(b.detach() - (raw * mean).sum())


def train_probe(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | torch.Tensor,
    *,
    layers: int | Sequence[int] | None = None,
    kind: str = "resid_post",
    method: str = "mean-diff",
    reduce: str = "last",
    fpr: float = 0.01,
    held_out: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
) -> Probe:
    """Train a probe on labelled texts, choose its block, and measure it on a held-out split.

    The texts are split (stratified, `seed`) into a training part and a held-out part. Among several candidate
    blocks, the one chosen has the best AUROC on a validation part of the training split (each block fitted on
    the rest); the probe is then fitted on the whole training split, its threshold set at `fpr` on the training
    negatives, and its AUROC and accuracy measured on the held-out texts, which nothing was fitted or chosen on.

    Arguments:
        model: the model.
        tokenizer: its tokenizer.
        texts: the texts (each must fit the model's context).
        labels: 0 or 1 per text (1: the behaviour is present).
        layers: candidate block indices (negative from the end); None: every block.
        kind: the site kind to read (``resid_post``; any per-block kind works).
        method: ``mean-diff``, ``logistic`` or ``pca``.
        reduce: ``last`` (the last token of each text) or ``mean`` (the mean over its tokens).
        fpr: the false-positive rate the threshold is set at.
        held_out: the fraction of each class held out for the reported AUROC and accuracy.
        seed: the seed of the split.
        batch_size: texts per forward pass.

    Returns:
        The `Probe`; its metadata holds the model fields, ``auroc``, ``accuracy``, ``fpr``, the held-out ``tpr``
        at the threshold, the split sizes and ``layer_auroc`` (validation AUROC of each candidate block).
    """
    if method not in METHODS:
        raise ActkitError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    if isinstance(texts, str):
        raise ActkitError("texts must be a list of strings, not one string")
    if len(texts) != len(labels):
        raise ActkitError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
    y = check_labels(labels)
    if not 0.0 <= fpr < 1.0:
        raise ActkitError(f"the false-positive rate must be in [0, 1), got {fpr}")
    split_held_out(y, held_out, seed)  # too few examples: say so before reading any activation
    candidates = resolve_layers(model, layers)
    feats = text_activations(model, tokenizer, texts, candidates, kind=kind, reduce=reduce, batch_size=batch_size)
    probe = probe_from_features(feats, y, kind=kind, method=method, reduce=reduce, fpr=fpr, held_out=held_out,
                                seed=seed)
    probe.metadata = {**model_metadata(model), **probe.metadata}
    return probe


def probe_from_features(
    features: dict[int, torch.Tensor],
    labels: Sequence[int] | torch.Tensor,
    *,
    kind: str = "resid_post",
    method: str = "mean-diff",
    reduce: str = "last",
    fpr: float = 0.01,
    held_out: float = 0.25,
    seed: int = 0,
) -> Probe:
    """`train_probe` on activations already read: block -> (N, d) features of the N labelled texts.

    The split, block choice, fit, threshold and held-out measurement are `train_probe`'s; the metadata holds the
    measurements but not the model fields (`train_probe` adds them).
    """
    if method not in METHODS:
        raise ActkitError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    if not features:
        raise ActkitError("no blocks to train a probe at")
    y = check_labels(labels)
    if not 0.0 <= fpr < 1.0:
        raise ActkitError(f"the false-positive rate must be in [0, 1), got {fpr}")
    train, test = split_held_out(y, held_out, seed)
    candidates = sorted(features)
    scores_by_layer: dict[int, float] = {}
    if len(candidates) > 1:
        y_train = y[train]
        try:
            fit_i, val_i = split_held_out(y_train, 0.3, seed + 1)
        except ActkitError:
            fit_i = val_i = list(range(len(train)))  # too few to carve a validation part: choose on the fit
        for layer in candidates:
            x = features[layer][train]
            w, b = fit_direction(x[fit_i], y_train[fit_i], method)
            scores_by_layer[layer] = auroc(x[val_i] @ w + b, y_train[val_i])
        best = max(candidates, key=lambda c: (scores_by_layer[c], -c))
    else:
        best = candidates[0]
    x = features[best].to("cpu", _F64)
    w, b = fit_direction(x[train], y[train], method)
    train_scores = (x[train] @ w + b).to(torch.float32).to(_F64)
    threshold = threshold_at_fpr(train_scores[y[train] == 0], fpr)
    probe = Probe(f"{kind}.{best}", w.to(torch.float32), b, threshold, method, reduce)
    held_scores = probe.project(x[test])
    predicted = probe.predict(held_scores).long()
    y_test = y[test]
    metadata: dict[str, Any] = {
        "fpr": fpr,
        "auroc": auroc(held_scores, y_test),
        "accuracy": float((predicted == y_test).double().mean()),
        "tpr": float((predicted[y_test == 1] == 1).double().mean()),
        "held_out_fpr": float((predicted[y_test == 0] == 1).double().mean()),
        "n_train": len(train),
        "n_held_out": len(test),
        "seed": seed,
    }
    if scores_by_layer:
        metadata["layer_auroc"] = {str(k): v for k, v in scores_by_layer.items()}
    probe.metadata = metadata
    return probe


def probe_from_vector(vector: SteeringVector, layer: int, *, threshold: float = 0.0, reduce: str = "last",
                      bias: float = 0.0) -> Probe:
    """A steering vector's direction at one block as a probe: score = x . v / |v| + bias.

    Arguments:
        vector: the vector (its site kind is the probe's).
        layer: a block the vector has a direction at.
        threshold: the probe's threshold (calibrate it with `calibrate` on negative texts).
        reduce: ``last`` or ``mean``.
        bias: the offset.

    Returns:
        A `Probe` with method ``vector``; its metadata carries the vector's model fields.
    """
    if layer not in vector.directions:
        raise ActkitError(f"the vector has no direction at block {layer}; it has {', '.join(map(str, vector.layers))}")
    v = vector.directions[layer].to(_F64)
    norm = float(v.norm())
    if norm == 0.0:
        raise ActkitError(f"the vector's direction at block {layer} is zero; it cannot be a probe")
    keep = ("model", "config", "config_hash", "hidden_size", "num_layers")
    meta = {k: vector.metadata[k] for k in keep if k in vector.metadata}
    meta["vector_method"] = vector.metadata.get("method")
    return Probe(f"{vector.site}.{layer}", (v / norm).to(torch.float32), bias, threshold, "vector", reduce, meta)


def calibrate(probe: Probe, negative_scores: torch.Tensor | Sequence[float], fpr: float) -> Probe:
    """`probe` with its threshold set at `fpr` on the scores of negative texts (`threshold_at_fpr`)."""
    return Probe(probe.site, probe.weight, probe.bias, threshold_at_fpr(negative_scores, fpr), probe.method,
                 probe.reduce, {**probe.metadata, "fpr": fpr})


def save_probe(probe: Probe, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `probe` as a safetensors file with JSON metadata, atomically.

    Arguments:
        probe: the probe; its metadata must be JSON-serializable.
        path: the file (conventionally ``*.safetensors``); its folder is created if missing.
        overwrite: replace an existing file (the CLI's ``--force``); otherwise an existing file is an error.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    p = check_output_file(path, overwrite=overwrite)
    meta = dict(probe.metadata)
    meta.update(site=probe.site, bias=probe.bias, threshold=probe.threshold, method=probe.method,
                reduce=probe.reduce, size=int(probe.weight.shape[0]))
    try:
        blob = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ActkitError(f"the probe's metadata cannot be written as JSON: {error}") from None
    with atomic_file(p, overwrite=overwrite) as tmp:
        save_file({"weight": probe.weight.contiguous()}, str(tmp),
                  metadata={"format_version": FORMAT_VERSION, "actkit_probe": blob})
    return p


def load_probe(path: str | Path, model: nn.Module | None = None) -> Probe:
    """Read a probe file written by `save_probe`, and check it against `model` when given.

    Arguments:
        path: the safetensors file.
        model: the model the probe will read. A probe made for a different configuration (model type, hidden size,
            block count or vocabulary), or whose block the model lacks, raises `ActkitError` naming what differs;
            a different model name with the same configuration only warns.

    Returns:
        The `Probe` (float32, CPU). A file that is not a probe raises `ActkitError`.
    """
    p = Path(path)
    header, tensors = read_safetensors(p, "probe file")
    if "actkit_probe" not in header:
        hint = " (it is a steering vector: use probe_from_vector)" if "actkit" in header else ""
        raise ActkitError(f"{str(p)!r} is not an actkit probe file{hint}; train one with `actkit probe train`")
    if header.get("format_version") != FORMAT_VERSION:
        raise ActkitError(f"{str(p)!r} has probe format version {header.get('format_version')!r}; this actkit reads "
                          f"version {FORMAT_VERSION}")
    try:
        meta = json.loads(header["actkit_probe"])
    except json.JSONDecodeError as error:
        raise ActkitError(f"{str(p)!r}: the probe metadata is not valid JSON ({error.msg})") from None
    if not isinstance(meta, dict) or set(tensors) != {"weight"}:
        raise ActkitError(f"{str(p)!r}: a probe file holds one tensor 'weight' and a JSON object of metadata")
    weight = tensors["weight"]
    if weight.dim() != 1 or not weight.is_floating_point():
        raise ActkitError(f"{str(p)!r}: the weight has shape {tuple(weight.shape)} and dtype {weight.dtype}; "
                          "expected a (hidden,) float vector")
    fields = {k: meta.pop(k, None) for k in ("site", "bias", "threshold", "method", "reduce", "size")}
    try:
        probe = Probe(str(fields["site"]), weight, float(fields["bias"]),  # type: ignore[arg-type]
                      float(fields["threshold"]), str(fields["method"]),  # type: ignore[arg-type]
                      str(fields["reduce"] or "last"), meta)
    except (TypeError, ValueError) as error:
        raise ActkitError(f"{str(p)!r}: the probe metadata is malformed ({error})") from None
    except ActkitError as error:
        raise ActkitError(f"{str(p)!r}: {error}") from None
    if model is not None:
        check_probe_fits(probe, model, source=str(p))
    return probe


def check_probe_fits(probe: Probe, model: nn.Module, *, source: str = "the probe") -> None:
    """Raise `ActkitError` if `probe` was made for another model configuration or its block is missing.

    Unlike a steering vector (which a fine-tune of another configuration may still use when shapes fit), a probe's
    threshold and bias are calibrated on one model's activations, so any configuration difference is refused; a
    different model name with the same configuration warns (a fine-tune: recalibrate).
    """
    here = model_metadata(model)
    meta = probe.metadata
    made_for = meta.get("model", "an unknown model")
    problems: list[str] = []
    saved = meta.get("config") or {}
    if meta.get("config_hash") is not None and meta.get("config_hash") != here["config_hash"]:
        problems += [f"{k}: {saved.get(k)!r} in the probe, {here['config'].get(k)!r} in the model"
                     for k in CONFIG_FIELDS if saved.get(k) != here["config"].get(k)] or ["the config hash differs"]
    n_layers = int(here["num_layers"] or 0)
    if probe.layer >= n_layers:
        problems.append(f"block {probe.layer} does not exist; the model has blocks 0..{n_layers - 1}")
    if probe.kind in ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in", "attn_in") and \
            probe.weight.shape[0] != here["hidden_size"]:
        problems.append(f"size {probe.weight.shape[0]} in the probe, hidden size {here['hidden_size']} in the model")
    if problems:
        raise ActkitError(f"{source} (made for {made_for}) does not fit {here['model']}: " + "; ".join(problems)
                          + "; train a probe for this model with `actkit probe train`")
    if meta.get("model") not in (None, here["model"]):
        warnings.warn(f"{source} was made for {meta.get('model')!r} and is used on {here['model']!r} (same "
                      "configuration); its threshold may need recalibrating", UserWarning, stacklevel=3)


__all__ = [
    "FORMAT_VERSION", "METHODS", "REDUCES", "Probe", "auroc", "calibrate", "check_labels", "check_probe_fits",
    "fit_direction", "load_probe", "probe_from_features", "probe_from_vector", "save_probe", "split_held_out", "text_activations",
    "threshold_at_fpr", "train_probe",
]
