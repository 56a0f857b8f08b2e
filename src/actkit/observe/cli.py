"""``actkit profile`` and ``actkit sites``: observe a model without changing it, thin over `actkit.observe`.

The conventions of ``actkit.cli_common`` hold: the default model is ``DEFAULT_MODEL``; ``--json`` prints JSON
alone on stdout; bad input ends as ``error: <message>`` on stderr with exit status 2; report files in ``--out``
are only replaced with ``--force``. ``actkit.cli`` registers these commands on the root app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from actkit.cli_common import (
    DEFAULT_MODEL,
    DeviceOption,
    DtypeOption,
    JsonOption,
    ModelOption,
    bad_input,
    show_progress,
    stderr,
    stdout,
)
from actkit.core.anatomy import Anatomy
from actkit.core.collect import read_texts
from actkit.core.sites import SITE_KINDS, Site
from actkit.errors import ActkitError
from actkit.io import check_writable, to_json, undone_on_failure
from actkit.models import load
from actkit.observe.default_text import default_texts
from actkit.observe.profile import PROFILE_FILE, profile
from actkit.report.profile import REPORT_FILE, report_files, write_report


def profile_command(
    model: ModelOption = DEFAULT_MODEL,
    text: Annotated[Path | None, typer.Option("--text", "-t", help="Text file, one document per line "
                                              "(default: a built-in English sample).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Stop after this many tokens.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per forward pass.")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", help="Largest entries kept per block as massive-activation "
                                       "candidates.")] = 32,
    sparsity_eps: Annotated[float, typer.Option("--sparsity-eps", help="An MLP hidden entry is near zero when "
                                                "|x| <= EPS x the RMS of its token's hidden vector.")] = 1e-3,
    massive_intervention: Annotated[bool, typer.Option(
        "--massive-intervention", help="Also measure perplexity with the massive activations set to zero and to "
        "their mean, at the first block where the strongest level (1000x median, else 100x) appears (three more "
        "passes; causal LMs).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=f"Also write {PROFILE_FILE}, PNG plots and "
                                             f"{REPORT_FILE} to this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing report files in --out.")] = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Profile activations block by block: norms, massive activations, MLP sparsity, signal propagation,
    attention logits, log Z and MoE routing."""
    with bad_input():
        if max_tokens is not None and max_tokens <= 0:
            raise ActkitError(f"--max-tokens must be a positive number of tokens (got {max_tokens})")
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of documents (got {batch_size})")
        if top_k <= 0:
            raise ActkitError(f"--top-k must be a positive number of entries (got {top_k})")
        if not 0 < sparsity_eps < float("inf"):
            raise ActkitError(f"--sparsity-eps must be a positive number (got {sparsity_eps})")
        texts = read_texts(text) if text is not None else default_texts()
        if out is not None:
            check_writable(out, report_files(), overwrite=force)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        anatomy = Anatomy.of(loaded)
        result = profile(loaded, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size,
                         progress=show_progress(as_json), model_name=model, top_k=top_k,
                         sparsity_eps=sparsity_eps, massive_intervention=massive_intervention)
        report = None
        if out is not None:
            with undone_on_failure(out):
                report = write_report(result, out, overwrite=force)
    if report is not None and report.skipped:
        stderr().print(Text(f"note: {report.skipped}; wrote the JSON and HTML without them"), highlight=False)
    if as_json:
        typer.echo(to_json(result))
        return
    console = stdout()
    console.print(_header(model, anatomy, f"{result['tokens']} tokens"))
    console.print(_profile_table(result))
    console.print(_activity_table(result))
    for line in _profile_notes(result):
        console.print(line, highlight=False)
    if report is not None:
        console.print(f"wrote {', '.join(p.name for p in report.files)} to {out}", highlight=False)


def _header(model: str, anatomy: Anatomy, extra: str) -> Text:
    parts = [f"model {model}", f"family {anatomy.family.name}", f"{anatomy.n_layers} blocks",
             f"hidden {anatomy.hidden_size}", extra]
    return Text(" · ".join(parts), style="bold")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "nan"
    if value != 0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.3e}"
    return f"{value:.3f}"


def _profile_table(result: dict[str, Any]) -> Table:
    table = Table(title="L2 norm of resid_post over tokens (and the mean norm of what attention and MLP add)",
                  title_justify="left")
    table.add_column("block", justify="right")
    for name in ("mean", "p50", "p99", "max", "attn_out", "mlp_out"):
        table.add_column(name, justify="right")
    for layer in result["layers"]:
        table.add_row(str(layer["index"]), *(_num(layer[f"resid_norm_{k}"]) for k in ("mean", "p50", "p99", "max")),
                      _num(layer.get("attn_out_norm_mean")), _num(layer.get("mlp_out_norm_mean")))
    return table


def _short(value: float | None) -> str:
    """At most 4 significant digits: wide tables must fit an 80-column terminal."""
    if value is None:
        return "-"
    if value != 0 and not 1e-2 <= abs(value) < 1e7:
        return f"{value:.1e}"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _activity_table(result: dict[str, Any]) -> Table:
    eps = result["settings"]["sparsity_eps"]
    table = Table(title=f"|x| entries of resid_post; signal propagation; max attention logit; MLP hidden: "
                  f"near-zero entries (|x| <= {eps:g} x token RMS), dead and always-on neurons",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("block", "|x| p50", "|x| max", "chan mean²", "chan var", "max logit", "near 0", "dead/on"):
        table.add_column(name, justify="right")
    for layer in result["layers"]:
        mag, sp, sig = layer["magnitude"], layer["sparsity"] or {}, layer["signal"]
        table.add_row(str(layer["index"]), _short(mag["median"]), _short(mag["max"]), _short(sig["channel_mean_sq"]),
                      _short(sig["channel_var"]), _short(layer["attn_logit_max"]),
                      _percent(sp.get("near_zero_fraction")),
                      f"{sp['dead']}/{sp['always_on']}" if sp else "-")
    return table


def _profile_notes(result: dict[str, Any]) -> list[str]:
    """Massive activations, log Z, routers and what was not measured, one line each."""
    lines = []
    massive = result["massive"]
    if massive:
        biggest = max(massive, key=lambda e: e["magnitude"])
        token = "" if biggest["token"] is None else f" (token {biggest['token']!r})"
        for bound in sorted({e["level"] for e in massive}):
            hits = [e for e in massive if e["level"] >= bound]
            first = min(e["layer"] for e in hits)
            dims = sorted({e["dim"] for e in hits if e["layer"] == first})
            lines.append(f"massive activations >= {bound} x median: {len(hits)} entries, from block {first} "
                         f"(dims {', '.join(map(str, dims))})")
        lines.append(f"largest: {_num(biggest['value'])} at block {biggest['layer']}, dim {biggest['dim']}, document "
                     f"{biggest['document']}, position {biggest['position']}{token}, {biggest['ratio']:.0f} x median")
    else:
        lines.append("massive activations: none (no entry >= 100 x its block's median magnitude)")
    iv = result.get("massive_intervention")
    if iv:
        ppl = iv["perplexity"]
        lines.append(f"intervention at {iv['site']} dims {iv['dims']}: perplexity {_num(ppl['original'])} as is, "
                     f"{_num(ppl['zero'])} set to zero, {_num(ppl['mean'])} set to their mean")
    if result["logits"]:
        z = result["logits"]
        lines.append(f"log Z: mean {_num(z['log_z_mean'])}, std {_num(z['log_z_std'])}, max {_num(z['log_z_max'])}")
    for layer in result["layers"]:
        r = layer["router"]
        if r:
            lines.append(f"router {layer['index']}: routing entropy {_num(r['entropy_mean'])} / {_num(r['entropy_max'])}"
                         f" nats, load entropy {_num(r['load_entropy'])}, busiest expert {max(r['load']):.1%} of "
                         "assignments")
    for what, why in result["unavailable"].items():
        lines.append(f"not measured: {what}: {why}")
    return lines


def sites_command(
    model: ModelOption = DEFAULT_MODEL,
    site: Annotated[list[str] | None, typer.Option("--site", "-s", help="Only these sites or patterns, such as "
                                                   "'mlp_hidden.*' or 'resid_post.3' (repeatable).")] = None,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """The sites of a model: what every pillar can read and write, by architecture-neutral name."""
    with bad_input():
        loaded, _ = load(model, dtype=dtype, device=device)
        anatomy = Anatomy.of(loaded)
        found = anatomy.expand(site) if site else anatomy.sites()
    if as_json:
        typer.echo(json.dumps({"model": model, "family": anatomy.family.name, "blocks": anatomy.n_layers,
                               "hidden_size": anatomy.hidden_size, "sites": [str(s) for s in found]}, indent=2))
        return
    console = stdout()
    console.print(_header(model, anatomy, f"{len(found)} sites"))
    table = Table()
    table.add_column("site")
    table.add_column("blocks")
    table.add_column("meaning")
    for kind in SITE_KINDS:
        mine = [s for s in found if s.kind == kind]
        if mine:
            table.add_row(_pattern(kind), _where(mine), SITE_KINDS[kind][1])
    console.print(table)


def _pattern(kind: str) -> str:
    return {0: kind, 1: f"{kind}.i", 2: f"{kind}.i.e"}[SITE_KINDS[kind][0]]


def _where(sites: list[Site]) -> str:
    """Compress the indices of one kind into ranges: ``0-23``, or ``0-23, experts 0-63``."""
    layers = sorted({s.layer for s in sites if s.layer is not None})
    if not layers:
        return ""
    text = _ranges(layers)
    experts = sorted({s.expert for s in sites if s.expert is not None})
    return f"{text}; experts {_ranges(experts)}" if experts else text


def _ranges(values: list[int]) -> str:
    out: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


__all__ = ["profile_command", "sites_command"]
