"""A static HTML page for a profile: the plots next to the numbers, readable offline in any browser.

One self-contained file with no scripts and no external resources; images are linked by relative name, so the
folder can be moved or zipped as a whole. Every piece of text that comes from the model or the data (the model
name, token strings, reasons) is escaped, so a token such as ``<script>`` shows as text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.55em; text-align: right; }
th { background: #f3f3f3; }
td.text { text-align: left; font-family: ui-monospace, monospace; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #7a4b00; }
"""

_CAPTIONS = {
    "norms.png": "L2 norm of the residual stream per token (mean, median, p99, max), and of what attention and "
                 "the MLP add to it.",
    "magnitudes.png": "The three largest entry magnitudes and the median magnitude of each block's output; "
                      "massive activations stand far above the grey line (100 x median).",
    "sparsity.png": "MLP hidden activity: near-zero entries, dead and always-on neurons.",
    "signal.png": "Signal propagation: average squared channel mean and average channel variance of the "
                  "residual stream.",
}


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    v = float(value)
    if v != 0 and not 1e-3 <= abs(v) < 1e5:
        return f"{v:.3e}"
    return f"{v:.4g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="text">{c}</td>' if i in text_columns else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _layer_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for la in result["layers"]:
        sp = la.get("sparsity") or {}
        mag = la.get("magnitude") or {}
        sig = la.get("signal") or {}
        rows.append([
            _num(la["index"]), _num(la["resid_norm_mean"]), _num(la["resid_norm_p50"]), _num(la["resid_norm_p99"]),
            _num(la["resid_norm_max"]), _num(la.get("attn_out_norm_mean")), _num(la.get("mlp_out_norm_mean")),
            _num(mag.get("median")), _num(mag.get("max")),
            escape(", ".join(str(d) for d in mag.get("massive_dims", []))),
            _num(sp.get("near_zero_fraction")), _num(sp.get("dead")), _num(sp.get("always_on")),
            _num(sig.get("channel_mean_sq")), _num(sig.get("channel_var")), _num(la.get("attn_logit_max")),
        ])
    return rows


def render(result: dict[str, Any], images: Sequence[str], skipped: str | None = None) -> str:
    """The report page for `result` (what `actkit.observe.profile` returned).

    Arguments:
        result: the profile.
        images: plot file names in the same folder, shown in order.
        skipped: why plots are missing (shown as a note), or None.

    Returns:
        The HTML text.
    """
    model = escape(str(result.get("model", "")))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>actkit profile: {model}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Profile of {model}</h1>",
        f"<p>{_num(result.get('tokens'))} tokens from {_num(result.get('documents'))} documents; family "
        f"{escape(str(result.get('family', '')))}; hidden size {_num(result.get('hidden_size'))}. "
        'The numbers are in <a href="profile.json">profile.json</a>.</p>',
    ]
    if skipped:
        parts.append(f'<p class="note">{escape(skipped)}</p>')
    for name in images:
        caption = escape(_CAPTIONS.get(name, name))
        parts.append(f'<figure><img src="{escape(name, quote=True)}" alt="{caption}">'
                     f"<figcaption>{caption}</figcaption></figure>")
    parts.append("<h2>Per block</h2>")
    parts.append(_table(["block", "resid mean", "resid p50", "resid p99", "resid max", "attn_out mean",
                         "mlp_out mean", "|x| median", "|x| max", "massive dims", "near-zero", "dead",
                         "always on", "chan. mean²", "chan. var", "max attn logit"],
                        _layer_rows(result), text_columns=[9]))
    parts += _massive(result)
    parts += _logits_and_routers(result)
    unavailable = result.get("unavailable") or {}
    if unavailable:
        parts.append("<h2>Not measured</h2><ul>")
        parts += [f"<li><b>{escape(str(k))}</b>: {escape(str(v))}</li>" for k, v in unavailable.items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _massive(result: dict[str, Any]) -> list[str]:
    entries = result.get("massive") or []
    ratios = (result.get("settings") or {}).get("massive_ratios", [100, 1000])
    out = [f"<h2>Massive activations</h2><p>Entries of a block's output at least {_num(ratios[0])} times the "
           f"median magnitude of that block (level {_num(ratios[-1])}: at least {_num(ratios[-1])} times).</p>"]
    if not entries:
        out.append("<p>None found.</p>")
    else:
        shown = entries[:200]
        rows = [[_num(e["layer"]), _num(e["dim"]), _num(e["document"]), _num(e["position"]),
                 escape(repr(e["token"])) if e.get("token") is not None else _num(e.get("token_id")),
                 _num(e["value"]), _num(e["ratio"]), _num(e["level"])] for e in shown]
        out.append(_table(["block", "dim", "document", "position", "token", "value", "x median", "level"], rows,
                          text_columns=[4]))
        if len(entries) > len(shown):
            out.append(f"<p>{len(entries) - len(shown)} more in profile.json.</p>")
    iv = result.get("massive_intervention")
    if iv:
        ppl = iv["perplexity"]
        out.append(f"<h3>Intervention at {escape(iv['site'])}, dims {escape(', '.join(map(str, iv['dims'])))}</h3>")
        out.append(_table(["activations", "perplexity", "entries replaced"], [
            ["as they are", _num(ppl["original"]), "0"],
            ["set to zero", _num(ppl["zero"]), _num(iv["replaced"]["zero"])],
            ["set to their mean", _num(ppl["mean"]), _num(iv["replaced"]["mean"])],
        ]))
    return out


def _logits_and_routers(result: dict[str, Any]) -> list[str]:
    out = []
    logits = result.get("logits")
    if logits:
        out.append("<h2>Output log-partition</h2>")
        out.append(_table(["log Z mean", "std", "min", "max"],
                          [[_num(logits[k]) for k in ("log_z_mean", "log_z_std", "log_z_min", "log_z_max")]]))
    routed = [la for la in result["layers"] if la.get("router")]
    if routed:
        out.append("<h2>Routers</h2>")
        rows = []
        for la in routed:
            r = la["router"]
            load = ", ".join(f"{v:.3f}" for v in r["load"])
            rows.append([_num(la["index"]), _num(r["experts"]), _num(r["top_k"]), _num(r["entropy_mean"]),
                         _num(r["load_entropy"]), _num(r["entropy_max"]), escape(load)])
        out.append(_table(["block", "experts", "top-k", "routing entropy", "load entropy", "log E", "load"], rows,
                          text_columns=[6]))
    return out


__all__ = ["render"]
