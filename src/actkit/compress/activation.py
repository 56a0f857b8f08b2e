"""Dynamic activation sparsity: zero small entries of each projection's input at inference (TEAL, WINA).

A decoder at batch 1 is memory-bound: every weight is read once per token. If a projection's input has a zero
in entry i, column i of its weight need not be read at all, so zeroing a fraction s of the input entries can cut
the bytes read by s (see `actkit.compress.sparse_linear` for the CPU kernel that does it). Which entries to zero:

- **TEAL** (``teal:S``): one magnitude threshold per input tensor, the S-quantile of |x| over calibration text, so
  that a fraction S of entries falls below it on text like the calibration text. q/k/v share one input tensor
  and so one threshold; so do gate and up. Per-token sparsity varies; its mean is S.
- **WINA** (``wina:S``): per token, keep the k = n - round(S n) entries with the largest |x_i| * ||W[:, i]||_2,
  the column norms of *that* projection's weight (every projection, as in the paper's formulation), so q, k and v
  may keep different entries of their shared input. Exactly k entries are kept for every token.
- **WINA, released code** (``wina-code:S``): what the authors' released code does. It weights the criterion by
  column norms only for the key projection and the MLP's gate projection (the fused matrix where q/k/v or gate/up
  are one linear layer: Phi-3's ``qkv_proj`` and ``gate_up_proj``); q, v, o, up and down keep the top-k of plain
  |x|. Its optional orthogonalizing transform and its dense first 1% of tokens are not reproduced; see
  ``docs/activation-sparsity.md``.

Every token of every pass is sparsified (prefill included), for all three methods alike, so a perplexity measures
what a decoder that never runs a dense token would see.

Calibration reads through the core: TEAL's histograms are `collect` (or, for ready-made token batches, `tap`)
reducers at the sites that carry the projections' inputs (``attn_in``, ``attn_hidden``, ``mlp_in``,
``mlp_hidden``; see `actkit.compress.projections`), one histogram per site, and at the module site
(``module:PATH:input``) of a projection that no named site carries. Sparsifying is per projection (WINA gives
q, k and v different choices from one shared input, and an MoE block's router and experts read ``mlp_in`` but are
never sparsified), so it is a `tap` write at each projection's module site; padding is never touched, and the
model's weights are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.compress.calibration import Calibration, as_calibration, require_tokens
from actkit.compress.projections import Projection, input_sites, projections
from actkit.core.collect import collect
from actkit.core.hooks import Read, tap
from actkit.core.interventions import Intervention
from actkit.core.positions import StepContext
from actkit.core.sites import Site
from actkit.core.stats import MagnitudeHistogram
from actkit.errors import ActkitError

#: The methods a spec may name.
METHODS = ("teal", "wina", "wina-code")

#: Block-relative paths whose projection the released WINA code weights by column norms (key and MLP gate, or
#: the fused matrix holding them). Projections elsewhere use plain magnitude under ``wina-code``. The first four
#: are the released code's own layouts (Llama, Mistral, Qwen2, Phi-3); the rest extend its choice to families it
#: does not cover, by the same rule: the key projection of attention and the first projection of the MLP.
WINA_CODE_WEIGHTED = ("self_attn.k_proj", "mlp.gate_proj", "self_attn.qkv_proj", "mlp.gate_up_proj",
                      "attention.query_key_value", "mlp.dense_h_to_4h", "attn.c_attn", "mlp.c_fc",
                      "attention.self.key", "intermediate.dense", "mlp.shared_expert.gate_proj")

#: Fewest calibration tokens TEAL accepts: a quantile of fewer entries per tensor is mostly noise.
MIN_TEAL_TOKENS = 64


@dataclass(frozen=True)
class ActivationSparsity:
    """A parsed ``METHOD:SPARSITY`` spec, such as ``teal:0.5`` (see the module docstring for the methods)."""

    method: str
    sparsity: float

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ActkitError(f"unknown activation-sparsity method {self.method!r}; choose one of "
                              f"{', '.join(METHODS)} (as in teal:0.5)")
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ActkitError(f"activation sparsity must lie in [0, 1) (the fraction of input entries zeroed), "
                              f"got {self.sparsity!r}")

    @classmethod
    def parse(cls, text: str | ActivationSparsity) -> ActivationSparsity:
        """``"teal:0.5"`` -> ``ActivationSparsity("teal", 0.5)``; a clear error for anything else."""
        if isinstance(text, ActivationSparsity):
            return text
        method, sep, value = str(text).strip().partition(":")
        if not sep or not value.strip():
            raise ActkitError(f"activation sparsity {text!r} should look like METHOD:SPARSITY, for example teal:0.5 "
                              f"or wina:0.5 (methods: {', '.join(METHODS)})")
        try:
            sparsity = float(value)
        except ValueError:
            raise ActkitError(f"activation sparsity {text!r}: {value.strip()!r} is not a number; give a fraction "
                              "in [0, 1) such as 0.5") from None
        if not math.isfinite(sparsity):
            raise ActkitError(f"activation sparsity must lie in [0, 1), got {value.strip()!r}")
        return cls(method.strip().lower(), sparsity)

    def __str__(self) -> str:
        return f"{self.method}:{self.sparsity:g}"


@dataclass(frozen=True, eq=False)
class Rule:
    """How one projection picks the input entries it keeps: a magnitude threshold, or the top `keep` scores.

    Arguments:
        threshold: TEAL: keep entries with |x| > threshold.
        keep: WINA: keep this many entries per token, those with the largest score.
        scale: WINA's per-entry weight of the score |x_i| * scale_i (column norms); None scores plain |x|.
    """

    threshold: float | None = None
    keep: int | None = None
    scale: torch.Tensor | None = None

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Bool mask of the entries of `x` (..., n) that this rule keeps."""
        if self.threshold is not None:
            return x.abs() > self.threshold
        assert self.keep is not None
        idx = self.scores(x).topk(self.keep, dim=-1, sorted=False).indices
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(-1, idx, True)

    def kept_indices(self, v: torch.Tensor) -> torch.Tensor:
        """Ascending indices of the entries of one token's input `v` (n,) that this rule keeps."""
        if self.threshold is not None:
            return (v.abs() > self.threshold).nonzero().squeeze(1)
        assert self.keep is not None
        return self.scores(v).topk(self.keep, sorted=False).indices.sort().values

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() if self.scale is None else x.abs() * self.scale.to(x.device)

    def same_choice(self, other: Rule) -> bool:
        """Whether both rules keep the same entries of the same input (so their projections can share a read)."""
        return (self.threshold == other.threshold and self.keep == other.keep
                and (self.scale is other.scale or (self.scale is None and other.scale is None)))


@dataclass
class TealCalibration:
    """Magnitude histograms of each input group's entries, from which thresholds for any sparsity follow.

    ``groups[i]`` names the projections that read site i (or the one projection that no site carries);
    ``histograms[i]`` is its `MagnitudeHistogram`;
    ``features`` gives each projection's input width, so a calibration is never applied to another model.
    """

    groups: list[list[str]]
    histograms: list[MagnitudeHistogram]
    tokens: int
    features: dict[str, int] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def check(self, projs: list[Projection]) -> None:
        """Refuse a model whose projections are not the ones calibrated (names and input widths)."""
        mine = {p.name: p.in_features for p in projs}
        if mine != self.features:
            odd = sorted(set(mine.items()) ^ set(self.features.items()))
            raise ActkitError(f"the TEAL calibration was made for another model ({len(odd)} projections differ, "
                              f"first {odd[0][0]}); calibrate on this one")

    def thresholds(self, sparsity: float) -> dict[str, float]:
        """Projection name -> the `sparsity`-quantile of |x| of its input (0 for sparsity 0)."""
        ActivationSparsity("teal", sparsity)  # validates the range
        out: dict[str, float] = {}
        for names, hist in zip(self.groups, self.histograms, strict=True):
            t = 0.0 if sparsity == 0 or hist.count == 0 else float(hist.quantile(sparsity))  # type: ignore[arg-type]
            out.update(dict.fromkeys(names, t))
        return out


@dataclass
class _TealReads:
    """One histogram per input site, plus one per projection that no site carries (read at its own module site)."""

    projs: list[Projection]
    sites: dict[str, Site | None]

    @classmethod
    def of(cls, model: nn.Module) -> _TealReads:
        projs = projections(model)
        return cls(projs, input_sites(model, {p.name: p.module for p in projs}))

    def site_list(self) -> list[Site]:
        return list(dict.fromkeys(s for s in self.sites.values() if s is not None))

    def unsited(self) -> dict[Site, str]:
        """The module site of each projection that no named site carries, and the projection's name."""
        return {Site.module(p.name, "input"): p.name for p in self.projs if self.sites[p.name] is None}

    def result(self, by_site: dict[Site, MagnitudeHistogram], own: dict[str, MagnitudeHistogram],
               tokens: int) -> TealCalibration:
        """Groups in the order of the projections: the projections of one site together."""
        groups: dict[Site | str, list[str]] = {}
        for p in self.projs:
            groups.setdefault(self.sites[p.name] or p.name, []).append(p.name)
        hists = [by_site[key] if isinstance(key, Site) else own[key] for key in groups]
        return TealCalibration(list(groups.values()), hists, tokens, {p.name: p.in_features for p in self.projs})


def calibrate_teal_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> TealCalibration:
    """Histogram |x| of every projection input group over (input_ids, attention_mask) batches of the dense model.

    The histograms are `tap` reads at the input sites (`calibrate_teal` is the same over text, through
    `collect`). Padding never enters a histogram. Returns the histograms; `TealCalibration.thresholds` turns
    them into thresholds for any sparsity.
    """
    reads = _TealReads.of(model)
    by_site = {site: MagnitudeHistogram() for site in [*reads.site_list(), *reads.unsited()]}
    own = {name: by_site[site] for site, name in reads.unsited().items()}
    device = next(model.parameters()).device
    tokens = 0
    with torch.inference_mode(), tap(model, read={s: Read(h) for s, h in by_site.items()}) as state:
        for ids, mask in batches:
            state.reset()
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            tokens += int(mask.sum())
    return reads.result(by_site, own, tokens)


def calibrate_teal(model: nn.Module, tokenizer: Any, calibration: Calibration | Sequence[str], *,
                   max_length: int | None = None, batch_size: int = 8) -> TealCalibration:
    """TEAL's histograms over calibration text, by `collect`.

    Arguments:
        model: the dense model (it is run, not changed).
        tokenizer: its tokenizer.
        calibration: the text: a `Calibration` (from `calibration_texts`) or a list of documents.
        max_length: documents are split into chunks of at most this many tokens (default the model's context).
        batch_size: chunks per forward pass.

    Returns:
        A `TealCalibration` whose ``record`` says what text it saw (source, seed, documents, tokens).
    """
    calib = as_calibration(calibration, "TEAL's calibration")
    reads = _TealReads.of(model)
    unsited = reads.unsited()
    found = collect(model, calib.texts, [*reads.site_list(), *unsited], {"hist": MagnitudeHistogram},
                    tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    own = {name: found[str(site)]["hist"] for site, name in unsited.items()}
    result = reads.result({s: found[str(s)]["hist"] for s in reads.site_list()}, own, found.tokens)
    require_tokens(result.tokens, MIN_TEAL_TOKENS, calib.source)
    result.record = calib.record(result.tokens)
    return result


@dataclass
class SparsityPlan:
    """A spec made concrete for one model: the rule of every projection it sparsifies.

    Build one with `plan_activation_sparsity`; use it with `activation_sparsity` (masking writes through `tap`, any batch) or
    `actkit.compress.sparse_decode.sparse_decode` (the CPU speed path for batch-1 decoding).
    """

    spec: ActivationSparsity
    projections: list[Projection]
    rules: dict[str, Rule]
    calibration: dict[str, Any] | None = None


def column_norms(proj: Projection) -> torch.Tensor:
    """||W[:, i]||_2 for every input entry i of a projection, in float32 (WINA's weight term)."""
    return torch.linalg.vector_norm(proj.weight().float(), dim=0)


def wina_code_weighted(proj: Projection) -> bool:
    """Whether the released WINA code weights this projection's criterion by column norms."""
    return any(proj.path == p or proj.path.endswith("." + p) for p in WINA_CODE_WEIGHTED)


def plan_activation_sparsity(model: nn.Module, spec: str | ActivationSparsity, *,
                             calibration: TealCalibration | None = None) -> SparsityPlan:
    """The rule of every projection of `model` under `spec`; TEAL needs a `calibration` (`calibrate_teal`).

    Sparsity 0 gives a plan with no rules: the model runs unchanged, bit for bit.
    """
    spec = ActivationSparsity.parse(spec)
    projs = projections(model)
    rules: dict[str, Rule] = {}
    if spec.sparsity == 0:
        return SparsityPlan(spec, projs, rules, calibration.record if calibration else None)
    if spec.method == "teal":
        if calibration is None:
            raise ActkitError("TEAL needs thresholds from calibration text: call calibrate_teal(model, tokenizer) "
                              "first and pass calibration=...")
        calibration.check(projs)
        thresholds = calibration.thresholds(spec.sparsity)
        shared: dict[float, Rule] = {}
        for p in projs:
            t = thresholds[p.name]
            rules[p.name] = shared.setdefault(t, Rule(threshold=t))
        return SparsityPlan(spec, projs, rules, calibration.record)
    plain: dict[int, Rule] = {}
    for p in projs:
        keep = max(1, p.in_features - round(spec.sparsity * p.in_features))
        if spec.method == "wina" or wina_code_weighted(p):
            rules[p.name] = Rule(keep=keep, scale=column_norms(p))
        else:
            rules[p.name] = plain.setdefault(keep, Rule(keep=keep))
    return SparsityPlan(spec, projs, rules)


@dataclass
class SparsityStats:
    """Entries zeroed and entries seen per projection, over real tokens (padding is not counted)."""

    zeroed: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, zeroed: int, seen: int) -> None:
        self.zeroed[name] = self.zeroed.get(name, 0) + zeroed
        self.seen[name] = self.seen.get(name, 0) + seen

    def per_projection(self) -> dict[str, float]:
        return {n: self.zeroed[n] / self.seen[n] for n in self.seen if self.seen[n]}

    @property
    def overall(self) -> float:
        """Fraction of all input entries zeroed, over every projection (NaN before any token)."""
        seen = sum(self.seen.values())
        return sum(self.zeroed.values()) / seen if seen else float("nan")


class _Sparsify(Intervention):
    """Zero the entries of a projection's input that its rule drops, on real tokens; counts what it zeroed."""

    def __init__(self, name: str, rule: Rule, stats: SparsityStats):
        super().__init__()
        self.name, self.rule, self.stats = name, rule, stats

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        drop = ~self.rule.keep_mask(x)
        self.stats.add(self.name, int(drop.sum(-1)[mask].sum()), int(mask.sum()) * int(x.shape[-1]))
        return x.masked_fill(drop & mask[..., None], 0)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return x.masked_fill(~self.rule.keep_mask(x), 0)


@contextmanager
def activation_sparsity(model: nn.Module, plan: SparsityPlan) -> Iterator[SparsityStats]:
    """Sparsify the inputs of the plan's projections while the block runs; yields running `SparsityStats`.

    Works for any batch, padding and KV-cache decoding (each projection's input is masked token by token). The
    inputs are replaced by masked copies; weights and the caller's tensors are untouched, and every hook is
    removed on exit, also when the block raises.
    """
    stats = SparsityStats()
    if not plan.rules:
        yield stats
        return
    by_module = {id(p.module): p for p in plan.projections}
    if any(id(m) not in by_module for m in (p.module for p in projections(model))):
        raise ActkitError("this sparsity plan was made for another model; plan again on this one")
    write = {Site.module(p.name, "input"): _Sparsify(p.name, rule, stats)
             for p in plan.projections if (rule := plan.rules.get(p.name)) is not None}
    with tap(model, write=write):
        yield stats


def prepare_activation_sparsity(model: nn.Module, tokenizer: Any, spec: str | ActivationSparsity, *,
                                calibration: Calibration | Sequence[str] | None = None,
                                max_length: int | None = None) -> SparsityPlan:
    """Parse `spec` and plan it for `model`, calibrating TEAL on `calibration` (TEAL needs it; WINA does not)."""
    parsed = ActivationSparsity.parse(spec)
    teal = None
    if parsed.method == "teal" and parsed.sparsity > 0:
        teal = calibrate_teal(model, tokenizer, as_calibration(calibration, "TEAL"), max_length=max_length)
    return plan_activation_sparsity(model, parsed, calibration=teal)


__all__ = ["METHODS", "MIN_TEAL_TOKENS", "WINA_CODE_WEIGHTED", "ActivationSparsity", "Rule", "SparsityPlan",
           "SparsityStats", "TealCalibration", "activation_sparsity", "calibrate_teal",
           "calibrate_teal_batches", "column_norms", "plan_activation_sparsity", "prepare_activation_sparsity",
           "wina_code_weighted"]
