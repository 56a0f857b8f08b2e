"""The report of ``actkit eval steering``: ``report.md``, ``results.json`` and ``evaluation.png``, written in one step.

The page ranks the methods by their test harmonic score, beside prompting, and states everything a reader needs to
judge the numbers: the splits and their seed, the grid each method was tuned over, the judge and its calibration,
the layer `select_layers` ranked first, every method's development choice and some test continuations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actkit.io import check_writable, make_folder, publish, staging, to_json, undone_on_failure

REPORT_MD = "report.md"
RESULTS_JSON = "results.json"
PLOT_PNG = "evaluation.png"
REPORT_FILES = [REPORT_MD, RESULTS_JSON, PLOT_PNG]


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(nothing)"


def render_markdown(result: dict[str, Any]) -> str:
    """The report page for what `actkit.evaluate.protocol.evaluate_steering` returned (with ``model`` and
    ``environment`` added by the caller)."""
    split, grid, concept = result["split"], result["grid"], result["concept"]
    env = result.get("environment", {})
    lines = [
        f"# Steering evaluation: {concept['name']} on {result.get('model', 'the model')}",
        "",
        f"Prompts `{result.get('prompts_source', '?')}`: {split['dev']} development / {split['test']} test "
        f"(seed {split['seed']}); pairs `{result.get('pairs_source', '?')}`: {split['train_pairs']} training / "
        f"{split['test_pairs']} test. Each steering method's layer and factor were chosen on the development "
        f"prompts over layers {grid['layers']} and relative factors {grid['factors']} (fractions of the mean "
        f"residual norm), by the mean harmonic score"
        + (f" within a KL budget of {grid['kl_budget']:g} nats/token" if grid.get("kl_budget") is not None else "")
        + f"; {grid['max_new_tokens']} greedy tokens per continuation. Prompting baseline: "
        f"\"{concept['instruction']}\" before each prompt. `random`: a random direction with the mean-diff norm.",
        "",
        f"Judge `{result['judge']['name']}`; calibration: `{to_json(result['judge']['calibration']).replace(chr(10), ' ')}`.",
        "",
        f"`select_layers` ranks layer {result['select_layers']['first']} first.",
        "",
        "| rank | method | layer | factor | concept | instruction | fluency | harmonic | win vs prompt | KL | "
        "perplexity | likelihood margin |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in result["methods"]:
        t = m["test"]
        lines.append(f"| {m['rank']} | {m['method']} | {_num(m['layer'])} | {_num(m['factor'], 2)} | "
                     f"{t['concept']:.2f} | {t['instruction']:.2f} | {t['fluency']:.2f} | {t['harmonic']:.3f} | "
                     f"{_num(m['win_rate_vs_prompt'], 2)} | {t['kl']:.3f} | {_num(t['perplexity'], 2)} | "
                     f"{_num(m['likelihood'] and m['likelihood']['mean'])} |")
    base = result["unsteered"]
    t = base["test"]
    lines += [f"| - | (unsteered) | - | - | {t['concept']:.2f} | {t['instruction']:.2f} | {t['fluency']:.2f} | "
              f"{t['harmonic']:.3f} | - | 0.000 | {t['perplexity']:.2f} | {base['likelihood']['mean']:.3f} |", ""]
    for m in result["methods"]:
        if m["method"] == "prompt":
            continue
        layers = sorted({r["layer"] for r in m["dev"]}, key=lambda x: -1 if x is None else x)
        factors = sorted({r["factor"] for r in m["dev"]})
        lines += [f"## {m['method']}: development grid (harmonic score, KL)", "",
                  "| layer | " + " | ".join(f"{f:g}" for f in factors) + " |", "| ---: |" + " ---: |" * len(factors)]
        for layer in layers:
            cells = [next((r for r in m["dev"] if r["layer"] == layer and r["factor"] == f), None) for f in factors]
            lines.append(f"| {_num(layer)} | " + " | ".join("-" if r is None else f"{r['harmonic']:.2f} ({r['kl']:.2f})"
                                                              for r in cells) + " |")
        lines += ["", *_adaptive_note(m)]
    lines += ["## Test continuations", ""]
    for m in result["methods"]:
        lines += [f"### {m['method']}", "", "| prompt | unsteered | with the method |", "| --- | --- | --- |"]
        lines += [f"| {_cell(e['prompt'])} | {_cell(e['unsteered'])} | {_cell(e['steered'])} |"
                  for e in m["examples"][:4]]
        lines.append("")
    if env:
        lines.append(f"actkit {env.get('actkit')}, torch {env.get('torch')}, {env.get('threads')} threads; "
                     f"{result.get('seconds', 0):.0f} s.")
    return "\n".join(lines)


def _adaptive_note(method: dict[str, Any]) -> list[str]:
    """What an adaptive method did on the test prompts (`actkit.evaluate.adaptive`), and why two columns are empty."""
    t = method["test"]
    if "mean_coef" in t:
        did = f"the coefficient applied averaged {t['mean_coef']:.3f} (the factor is its largest, alpha_max)"
    elif "rows_backtracked" in t:
        did = (f"{t['rows_backtracked']:.0%} of the rows backtracked (probe threshold {method['threshold']:.3f}), "
               f"{t['steered_tokens']:.0%} of the generated tokens were steered")
    else:
        return []
    return [f"On the test prompts {did}. It steers each row by what it generates, so it has no fixed intervention "
            "to score reference texts or pairs with: no perplexity, no likelihood margin.", ""]


def _plot(result: dict[str, Any], path: Path) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    methods = result["methods"]
    fig = Figure(figsize=(1.6 + 1.1 * len(methods), 3.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = ("concept", "instruction", "fluency", "harmonic")
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + (k - 1.5) * width for i in range(len(methods))]
        ax.bar(xs, [m["test"][name] for m in methods], width, label=name)
    ax.set_xticks(range(len(methods)), [m["method"] for m in methods])
    ax.set_ylim(0, 2.05)
    ax.set_ylabel("test score (0-2)")
    ax.set_title(f"{result['concept']['name']}: judge {result['judge']['name']}")
    ax.legend(fontsize="small", ncols=4, loc="upper right")
    fig.savefig(path)
    return True


def write_evaluation_report(result: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``report.md``, ``results.json`` and ``evaluation.png`` (when matplotlib is there) into `out_dir`.

    All files are rendered into a hidden staging folder inside `out_dir` and moved into place together; a folder
    created for them is removed again on failure, so a stopped run leaves `out_dir` as it was.

    Arguments:
        result: what `actkit.evaluate.protocol.evaluate_steering` returned, with ``model`` and ``environment``.
        out_dir: the report's folder; created, with its parents, if missing.
        overwrite: replace the files of an earlier report (the CLI's ``--force``).

    Returns:
        The paths written.
    """
    folder = Path(out_dir)
    check_writable(folder, REPORT_FILES, overwrite=overwrite)
    with undone_on_failure(folder):
        make_folder(folder)
        with staging(folder) as stage:
            (stage / REPORT_MD).write_text(render_markdown(result) + "\n", encoding="utf-8")
            (stage / RESULTS_JSON).write_text(to_json(result) + "\n", encoding="utf-8")
            names = [REPORT_MD, RESULTS_JSON] + ([PLOT_PNG] if _plot(result, stage / PLOT_PNG) else [])
            return publish(stage, folder, names)


__all__ = ["REPORT_FILES", "render_markdown", "write_evaluation_report"]
