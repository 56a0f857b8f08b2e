"""The steering demo's report: a Markdown page (tables and side-by-side continuations), its JSON and one plot.

Markdown because a steering result is read next to code: it renders on GitHub, in an editor and in a terminal.
Each experiment gets the curve (behaviour, KL, perplexity per coefficient) beside the random-direction control,
and the plain and steered continuations of every prompt at the coefficient that moved the behaviour most.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from actkit.errors import ActkitError
from actkit.io import check_writable, make_folder, publish, staging, to_json, undone_on_failure
from actkit.steer.vectors import SteeringVector, save_vector
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


def write_steering_report(result: dict[str, Any], out_dir: str | Path, *,
                          vectors: Mapping[str, SteeringVector] | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``report.md``, ``results.json``, ``steering.png`` (when matplotlib is there) and the vectors the report
    names into `out_dir`, all in one step.

    Every file is rendered into one hidden staging folder inside `out_dir` and moved into place only once all are
    complete; a folder created for them is removed again on failure. So a run stopped at any point (an error,
    Ctrl-C, SIGTERM) leaves `out_dir` as it was: no half-written report, no vector without its report.

    Arguments:
        result: what `actkit.demo.steering.run_demo` returned (its first item).
        out_dir: the report's folder; created, with its parents, if missing.
        vectors: the vectors, keyed by their file name relative to `out_dir` (each experiment's ``vector_file``).
        overwrite: replace the report and vector files of an earlier run (the CLI's ``--force``); otherwise any of
            them existing is an error, raised before anything is written. Other files in `out_dir` are kept.

    Returns:
        The paths written: the report's files, then the vectors.
    """
    folder = Path(out_dir)
    vectors = dict(vectors or {})
    outside = [name for name in vectors if Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        raise ActkitError(f"a vector file must lie inside the report's folder; got {outside[0]!r}")
    check_writable(folder, REPORT_FILES + list(vectors), overwrite=overwrite)
    subfolders = sorted({(folder / name).parent for name in vectors} - {folder})
    with ExitStack() as undo:
        for made in (folder, *subfolders):  # each removed again on failure, if it is made here
            make_folder(undo.enter_context(undone_on_failure(made)))
        with staging(folder) as stage:
            (stage / REPORT_MD).write_text(render_markdown(result) + "\n", encoding="utf-8")
            (stage / RESULTS_JSON).write_text(to_json(result) + "\n", encoding="utf-8")
            names = [REPORT_MD, RESULTS_JSON] + ([PLOT_PNG] if _plot(result, stage / PLOT_PNG) else [])
            for name, vector in vectors.items():
                save_vector(vector, stage / name)
            return publish(stage, folder, names + list(vectors))


__all__ = ["REPORT_FILES", "environment", "render_markdown", "write_steering_report"]
