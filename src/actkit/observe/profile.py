"""The profile: what a model's activations look like, block by block, before anyone steers or prunes it.

The norm of the residual stream grows through a transformer, often by orders of magnitude; a few entries
(massive activations) can be thousands of times larger than the rest; MLP neurons can be dead or always on;
routers can collapse onto a few experts. Steering coefficients, ablations, pruning masks and quantization ranges
all have to be read against these facts, so the profile is the first thing to look at on a new model.

It is one streaming pass over the text: `collect` drives the model and reduces every ``resid_post`` site, while
an enclosing `tap` reads the other sites (``attn_out``, ``mlp_out``, ``mlp_hidden``, ``router``, ``logits``)
and `attention_probe` sees each attention call. Every statistic is a reducer, so memory does not depend on the
number of tokens. The JSON it returns is documented in ``README.md`` next to this file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.collect import Collection, collect
from actkit.core.hooks import tap
from actkit.core.sites import Site
from actkit.core.stats import MagnitudeHistogram, Moments, NormHistogram, RouterStats, TopK
from actkit.errors import ActkitError
from actkit.io import check_writable, make_folder, publish, staging, to_json
from actkit.models import naming
from actkit.observe.attention import NOT_CALLED, AttentionLogitMax, attention_probe
from actkit.observe.massive import RATIOS, TokenLookup, intervene, massive_entries
from actkit.observe.reducers import ChannelPeak, LogPartition, RelativeActivity

PROFILE_FILE = "profile.json"

def _resid_reducers(top_k: int) -> dict[str, Any]:
    """Reducer factories for every ``resid_post`` site (`collect` makes a fresh set per site)."""
    return {"norm": NormHistogram, "moments": Moments, "magnitude": MagnitudeHistogram, "peak": ChannelPeak,
            "top": lambda: TopK(top_k)}


@dataclass
class ProfileRun:
    """The reducers of one profile pass, before they are summarised (tests use it to check their size)."""

    anatomy: Anatomy
    found: Collection
    side: dict[str, dict[str, Any]]
    probes: dict[int, AttentionLogitMax]
    attention_note: str | None
    unavailable: dict[str, str] = field(default_factory=dict)

    def reducers(self) -> Iterator[Any]:
        """Every reducer of the pass, once each."""
        for group in (*self.found.reducers.values(), *self.side.values()):
            yield from group.values()


def run_reducers(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Iterable[str],
    *,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    top_k: int = 32,
    sparsity_eps: float = 1e-3,
) -> ProfileRun:
    """The streaming pass behind `profile`: every reducer fed, nothing summarised yet (arguments as `profile`)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ActkitError(f"top_k must be a positive integer (got {top_k!r})")
    if not (isinstance(sparsity_eps, (int, float)) and 0 < sparsity_eps < math.inf):
        raise ActkitError(f"the sparsity threshold must be a positive number (got {sparsity_eps!r})")
    anatomy = Anatomy.of(model)
    available = {str(s) for s in anatomy.sites()}
    side: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}
    missing: dict[str, list[int]] = {}
    probes: dict[int, AttentionLogitMax] = {}
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for i in range(anatomy.n_layers):
        probes[i] = AttentionLogitMax()
        side[f"resid_pre.{i}"] = {"attention": probes[i]}
        for kind, make in (
            ("attn_out", NormHistogram),
            ("mlp_out", NormHistogram),
            ("mlp_hidden", lambda: RelativeActivity(sparsity_eps)),
            ("router", lambda i=i: RouterStats(_top_k(anatomy, i, text))),
        ):
            site = f"{kind}.{i}"
            if site in available:
                side[site] = {kind: make()}
            else:
                missing.setdefault(kind, []).append(i)
    if "logits" in available:
        side["logits"] = {"log_z": LogPartition()}
    else:
        unavailable["log_z"] = (f"{type(model).__name__} has no output head (load it with its language-model "
                                 "head to get log Z)")
    for kind, layers in missing.items():
        if kind == "router":
            continue  # dense blocks have no router: null there, nothing to explain
        unavailable[_METRIC[kind]] = _missing_reason(anatomy, kind, layers)
    with ExitStack() as stack:
        stack.enter_context(tap(model, read={site: list(group.values()) for site, group in side.items()}))
        note = stack.enter_context(attention_probe(anatomy, probes))
        found = collect(model, texts, "resid_post.*", _resid_reducers(top_k), tokenizer=tokenizer,
                        batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    for probe in probes.values():
        probe.forget()  # a mask that no attention call consumed
    return ProfileRun(anatomy, found, side, probes, note, unavailable)


#: The statistic that a missing site takes away, as named in the profile's ``unavailable``.
_METRIC = {"attn_out": "attn_out_norm", "mlp_out": "mlp_out_norm", "mlp_hidden": "sparsity"}


def _top_k(anatomy: Anatomy, layer: int, text_config: Any) -> int:
    """Experts per token: the router module's own ``top_k``, else the config's ``num_experts_per_tok``."""
    router = anatomy.point(f"router.{layer}").module
    k = getattr(router, "top_k", None) or getattr(text_config, "num_experts_per_tok", None)
    if not isinstance(k, int) or k < 1:
        raise ActkitError(f"cannot tell how many experts {type(router).__name__} picks per token; set "
                          "num_experts_per_tok in the model's config")
    return k


def _missing_reason(anatomy: Anatomy, kind: str, layers: list[int]) -> str:
    blocks = "any block" if len(layers) == anatomy.n_layers else f"blocks {', '.join(map(str, layers))}"
    why = " (MoE blocks keep their experts fused, with no single down projection)" if (
        kind == "mlp_hidden" and anatomy.family.experts is not None) else ""
    return f"the {anatomy.family.name!r} table has no {kind} site in {blocks}{why}"


def profile(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Iterable[str],
    *,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    model_name: str | None = None,
    top_k: int = 32,
    sparsity_eps: float = 1e-3,
    massive_intervention: bool = False,
) -> dict[str, Any]:
    """Profile the activations of `model` over every token of `texts`, block by block.

    Arguments:
        model: a model of a family in the anatomy (decoder, encoder or MoE).
        tokenizer: its tokenizer.
        texts: documents, split and batched by `collect`'s text rules; `read_texts` reads a file.
        max_tokens: stop after this many tokens; None reads all of `texts`.
        batch_size: chunks per forward pass.
        progress: show a progress bar.
        model_name: the name recorded in the result; default the model's ``name_or_path`` or class name.
        top_k: largest entries kept per block as massive-activation candidates (with their locations).
        sparsity_eps: an MLP hidden entry is near zero when ``|x| <= sparsity_eps * rms(token's hidden vector)``.
        massive_intervention: also measure perplexity with massive activations set to zero and to their mean,
            at the first block where the strongest level (1000x the median, else 100x) appears (three more
            passes; causal LMs only).

    Returns:
        The profile as plain Python values, ready for `to_json`: ``model``, ``tokens``, ``layers`` (one entry
        per block, in order, with ``index``, ``resid_norm_mean``, ``resid_norm_p50``, ``resid_norm_p99``,
        ``resid_norm_max`` and the newer statistics), ``massive``, ``logits``, ``unavailable``... The full schema
        is in ``actkit/observe/README.md``. A statistic a model does not have is None, and ``unavailable`` says why.
    """
    if massive_intervention and not isinstance(texts, Sequence):
        texts = list(texts)  # the intervention reads the same text again
    run = run_reducers(model, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size, progress=progress,
                       top_k=top_k, sparsity_eps=sparsity_eps)
    result = summarize(run, TokenLookup(texts, tokenizer), model_name=model_name or naming.model_name(model),
                       top_k=top_k, sparsity_eps=sparsity_eps)
    if massive_intervention:
        result["massive_intervention"] = _intervention(model, tokenizer, texts, run.anatomy, result,
                                                       max_tokens=max_tokens, batch_size=batch_size,
                                                       progress=progress)
    return result


def _intervention(model: nn.Module, tokenizer: Any, texts: Any, anatomy: Anatomy, result: dict[str, Any],
                  **options: Any) -> dict[str, Any] | None:
    if anatomy.family.encoder:
        result["unavailable"]["massive_intervention"] = ("perplexity needs a causal language model; "
                                                         f"{anatomy.family.name!r} is an encoder")
        return None
    if "logits" not in result or result["logits"] is None:
        result["unavailable"]["massive_intervention"] = "perplexity needs the model's output head"
        return None
    # the paper's massive activations are the ~1000x ones: intervene where the highest level first appears
    for bound in reversed(RATIOS):
        hits = [e for e in result["massive"] if e["level"] >= bound]
        if hits:
            layer = min(e["layer"] for e in hits)
            dims = sorted({e["dim"] for e in hits if e["layer"] == layer})
            threshold = bound * result["layers"][layer]["magnitude"]["median"]
            found = intervene(model, tokenizer, texts, layer, dims, threshold, **options)
            return {**found, "level": int(bound)}
    result["unavailable"]["massive_intervention"] = (f"no massive activation (>= {RATIOS[0]:g} x the median "
                                                     "magnitude) to intervene on")
    return None


def summarize(run: ProfileRun, token: TokenLookup, *, model_name: str, top_k: int = 32,
              sparsity_eps: float = 1e-3) -> dict[str, Any]:
    """Turn the reducers of a `ProfileRun` into the profile's JSON-ready dict (see the README for the schema)."""
    anatomy, found, side = run.anatomy, run.found, run.side
    layers: list[dict[str, Any]] = []
    massive: list[dict[str, Any]] = []
    for site in found.sites:
        index = Site.parse(site).layer
        assert index is not None
        own = found.reducers[site]
        norms = own["norm"].result()
        magnitude = own["magnitude"].result()
        median = float(magnitude["p50"])
        top = own["top"].result()
        peak = own["peak"].result()
        moments = own["moments"].result()
        entries = massive_entries(index, median, top, peak, token)
        massive += entries
        peaks = peak["magnitudes"]
        massive_dims = sorted(int(d) for d in torch.nonzero(peaks >= RATIOS[0] * median).flatten()) if (
            median > 0) else []
        layers.append({
            "index": index,
            "resid_norm_mean": float(norms["mean"]),
            "resid_norm_p50": float(norms["p50"]),
            "resid_norm_p99": float(norms["p99"]),
            "resid_norm_max": float(norms["max"]),
            **_norms("attn_out", side.get(f"attn_out.{index}")),
            **_norms("mlp_out", side.get(f"mlp_out.{index}")),
            "magnitude": {
                "median": median,
                "max": float(magnitude["max"]),
                "top": [float(m) for m in top["magnitudes"][:3]],
                "massive_dims": massive_dims,
            },
            "signal": {
                "channel_mean_sq": float((moments["mean"] ** 2).mean()),
                "channel_var": float(moments["var"].mean()),
            },
            "sparsity": _sparsity(side.get(f"mlp_hidden.{index}"), sparsity_eps),
            "attn_logit_max": run.probes[index].result()["max"],
            "router": _router(side.get(f"router.{index}")),
        })
    unavailable = dict(run.unavailable)
    silent = [layer["index"] for layer in layers if layer["attn_logit_max"] is None]
    if silent:
        reason = run.attention_note or NOT_CALLED
        where = "every block" if len(silent) == len(layers) else f"blocks {', '.join(map(str, silent))}"
        unavailable["attn_logit_max"] = f"{where}: {reason}"
    log_z = side["logits"]["log_z"].result() if "logits" in side else None
    return {
        "model": model_name,
        "tokens": int(found.tokens),
        "documents": int(found.documents),
        "family": anatomy.family.name,
        "hidden_size": anatomy.hidden_size,
        "settings": {"top_k": top_k, "sparsity_eps": sparsity_eps, "massive_ratios": list(RATIOS)},
        "layers": layers,
        "massive": sorted(massive, key=lambda e: (e["layer"], -e["magnitude"])),
        "logits": None if log_z is None else {
            "log_z_mean": log_z["mean"], "log_z_std": log_z["std"], "log_z_min": log_z["min"],
            "log_z_max": log_z["max"],
        },
        "unavailable": unavailable,
    }


def _norms(kind: str, group: dict[str, Any] | None) -> dict[str, float | None]:
    if group is None:
        return {f"{kind}_norm_{k}": None for k in ("mean", "p50", "p99", "max")}
    norms = group[kind].result()
    return {f"{kind}_norm_{k}": float(norms[k]) for k in ("mean", "p50", "p99", "max")}


def _sparsity(group: dict[str, Any] | None, eps: float) -> dict[str, Any] | None:
    if group is None:
        return None
    found = group["mlp_hidden"].result()
    freq = found["per_feature"]
    if found["count"] == 0 or freq.numel() == 0:
        return None
    q = torch.quantile(freq, torch.tensor([0.1, 0.5, 0.9], dtype=freq.dtype)).tolist()
    return {
        "neurons": int(freq.numel()),
        "near_zero_fraction": 1.0 - float(found["overall"]),
        "dead": int((freq == 0).sum()),
        "always_on": int((freq == 1).sum()),
        "frequency": {"mean": float(freq.mean()), "min": float(freq.min()), "p10": q[0], "p50": q[1],
                      "p90": q[2], "max": float(freq.max())},
    }


def _router(group: dict[str, Any] | None) -> dict[str, Any] | None:
    if group is None:
        return None
    found = group["router"].result()
    return {"experts": found["experts"], "top_k": found["top_k"], "load": [float(v) for v in found["load"]],
            "entropy_mean": float(found["entropy_mean"]), "entropy_max": float(found["entropy_max"]),
            "load_entropy": float(found["load_entropy"])}


# -- files ---------------------------------------------------------------------------------------------------


def write_profile(result: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write `result` to ``out_dir/profile.json``, atomically, so a crash never leaves half a file.

    Arguments:
        result: what `profile` returned.
        out_dir: the folder; created if missing.
        overwrite: replace an existing ``profile.json`` (the CLI's ``--force``); otherwise that is an error.

    Returns:
        The path written.
    """
    folder = Path(out_dir)
    check_writable(folder, [PROFILE_FILE], overwrite=overwrite)
    make_folder(folder)
    with staging(folder) as stage:
        (stage / PROFILE_FILE).write_text(to_json(result) + "\n", encoding="utf-8")
        return publish(stage, folder, [PROFILE_FILE])[0]
