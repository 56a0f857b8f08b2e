"""The steering demo's report: a Markdown page (tables and side-by-side continuations), its JSON and one plot.

Markdown because a steering result is read next to code: it renders on GitHub, in an editor and in a terminal.
Each experiment gets the curve (behaviour, KL, perplexity per coefficient) beside the random-direction control,
and the plain and steered continuations of every prompt at the coefficient that moved the behaviour most.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from actkit.io import check_writable, make_folder, publish, staging, to_json
from actkit.version import __version__

REPORT_MD = "report.md"
RESULTS_JSON = "results.json"
PLOT_PNG = "steering.png"
REPORT_FILES = [REPORT_MD, RESULTS_JSON, PLOT_PNG]


def environment() -> dict[str, Any]:
    """Versions and threads, recorded with every figure."""
    return {"actkit": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine()}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(nothing)"


def _experiment(exp: dict[str, Any]) -> list[str]:
    coef_kind = "relative coef (fraction of the mean residual norm)" if exp["relative"] else "coef"
    lines = [
        f"## {exp['name']}",
        "",
        f"Vector: mean difference of {exp['pair_count']} pairs from `{exp['pairs']}`, read at `{exp['site']}` "
        f"({exp['read_position']} tokens), |v| = {exp['vector_norm']:.3g} against a mean residual norm of "
        f"{exp['mean_residual_norm']:.3g}; trained in {exp['train_seconds']:.1f} s; file `{exp['vector_file']}`. "
        f"Steered tokens: {exp['positions']}.",
        "",
        f"| {coef_kind} | {exp['behaviour']} | KL (nats/token) | perplexity | random: {exp['behaviour']} | "
        "random: KL |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row, other in zip(exp["rows"], exp["random"], strict=True):
        lines.append(f"| {row['coef']:g} | {row['behaviour']:.2f} | {row['kl']:.3f} | {row['perplexity']:.2f} | "
                     f"{other['behaviour']:.2f} | {other['kl']:.3f} |")
    lines += ["", f"Continuations, plain and steered at {exp['example_coef']:g}:", "",
              "| prompt | plain | steered |", "| --- | --- | --- |"]
    lines += [f"| {_cell(e['prompt'])} | {_cell(e['plain'])} | {_cell(e['steered'])} |" for e in exp["examples"]]
    return lines + [""]


def render_markdown(result: dict[str, Any]) -> str:
    """The report page for what `actkit.demo.steering.run_demo` returned."""
    env = result["environment"]
    lines = [
        f"# Steering {result['model']}",
        "",
        f"actkit {env['actkit']}, torch {env['torch']}, {env['threads']} threads, Python {env['python']} "
        f"({env['machine']}); {result['seconds']:.0f} s in all. Greedy continuations of {result['prompts']} "
        f"prompts, {result['max_new_tokens']} new tokens; KL to the plain model and perplexity on "
        f"{result['reference_texts']} reference texts, steered at every token. The random control is a random "
        "direction with the same norm: an effect counts only where the random direction does not produce it.",
        "",
    ]
    for exp in result["experiments"]:
        lines += _experiment(exp)
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    experiments = result["experiments"]
    fig = Figure(figsize=(4.2 * len(experiments), 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for i, exp in enumerate(experiments):
        ax = fig.add_subplot(1, len(experiments), i + 1)
        coefs = [r["coef"] for r in exp["rows"]]
        ax.plot(coefs, [r["behaviour"] for r in exp["rows"]], "o-", label="vector")
        ax.plot(coefs, [r["behaviour"] for r in exp["random"]], "s--", label="random, same norm")
        ax.set_title(f"{exp['name']} at {exp['site']}")
        ax.set_xlabel("relative coefficient" if exp["relative"] else "coefficient")
        ax.set_ylabel(exp["behaviour"])
        ax.set_ylim(-0.05, 1.05)
        kl = ax.twinx()
        kl.plot(coefs, [r["kl"] for r in exp["rows"]], ":", color="grey", label="KL (vector)")
        kl.set_ylabel("KL to plain model (nats/token)")
        ax.legend(loc="upper left", fontsize="small")
    fig.savefig(path)
    return True


def write_steering_report(result: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``report.md``, ``results.json`` and ``steering.png`` (when matplotlib is there) into `out_dir`."""
    folder = Path(out_dir)
    check_writable(folder, REPORT_FILES, overwrite=overwrite)
    make_folder(folder)
    with staging(folder) as stage:
        (stage / REPORT_MD).write_text(render_markdown(result) + "\n", encoding="utf-8")
        (stage / RESULTS_JSON).write_text(to_json(result) + "\n", encoding="utf-8")
        names = [REPORT_MD, RESULTS_JSON] + ([PLOT_PNG] if _plot(result, stage / PLOT_PNG) else [])
        return publish(stage, folder, names)


__all__ = ["REPORT_FILES", "environment", "render_markdown", "write_steering_report"]
