"""``actkit prune``: one group for the pruning commands (``weights``, ``experts``), thin over the Python API.

The conventions of ``actkit.cli_common`` hold: ``--json`` prints JSON alone on stdout; bad input ends as
``error: <message>`` on stderr with exit status 2; an existing output folder is only replaced with ``--force``.
Every pruning command shares its options (`TextOption` ... `ReportJsonOption`), their checks (`check_run_options`),
the held-out perplexity before and after (`HeldoutPerplexity`) and the way a report is shown (`show_report`). A
new pruning command is one ``@prune_app.command(...)`` function here (or registered from its own module with
``prune_app.command("name")(function)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from actkit.cli_common import (
    DEFAULT_MODEL,
    DeviceOption,
    DtypeOption,
    ModelOption,
    bad_input,
    group,
    show_progress,
)
from actkit.compress.calibration import DEFAULT_DOCUMENTS, Calibration
from actkit.errors import ActkitError
from actkit.io import check_output_folder

prune_app = group("prune", "Prune a model: weights scored by activation norms, or whole MoE experts; export a checkpoint.")

#: Held-out documents of the built-in corpus scored before and after pruning (0 turns the check off).
EVAL_DOCUMENTS = 64

#: Options every pruning command takes, one definition each.
TextOption = Annotated[Path | None, typer.Option("--text", "-t", help="Calibration text, one document per line "
                                                 "(default: the built-in corpus's training split).")]
CalibrationDocumentsOption = Annotated[int, typer.Option("--calibration-documents",
                                                         help="Calibration documents to use.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the built-in calibration sample.")]
EvalDocumentsOption = Annotated[int, typer.Option("--eval-documents", help="Held-out built-in documents whose "
                                                  "perplexity is measured before and after (0: skip).")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Documents per forward pass.")]
ReplaceOption = Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")]
ReportJsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON only, on stdout.")]


def calibration_from(text: Path | None, documents: int, seed: int) -> Calibration:
    """The calibration text of a command: the lines of ``--text``, else the built-in corpus's training split."""
    from actkit.builtin.calibration import builtin_calibration
    from actkit.compress.calibration import calibration_texts

    if text is not None:
        return calibration_texts(text, documents=documents, seed=seed)
    return builtin_calibration(documents, seed)


def check_run_options(out: Path, force: bool, calibration_documents: int, eval_documents: int,
                      batch_size: int) -> None:
    """The checks of the shared options, before any model is loaded: positive counts, and an ``--out`` that can
    be written (not a file, not the current folder, not under a file, writable; replaced only with ``--force``)."""
    if calibration_documents <= 0:
        raise ActkitError(f"--calibration-documents must be positive (got {calibration_documents})")
    if eval_documents < 0:
        raise ActkitError(f"--eval-documents must be 0 (skip) or positive (got {eval_documents})")
    if batch_size <= 0:
        raise ActkitError(f"--batch-size must be a positive number of documents (got {batch_size})")
    check_output_folder(out, force)


class HeldoutPerplexity:
    """``--eval-documents``: perplexity on held-out documents of the built-in corpus, before and after pruning.

    The "before" is measured when this is made, since a pruning done in place (``prune experts``) changes the
    model it was given.
    """

    def __init__(self, model: Any, tokenizer: Any, documents: int):
        from actkit.builtin import corpus
        from actkit.evaluate.perplexity import nll

        self.tokenizer = tokenizer
        self.texts = corpus.texts(documents, split="heldout") if documents else []
        self.before = nll(model, tokenizer, self.texts) if self.texts else None

    def evaluation(self, pruned: Any) -> dict[str, Any] | None:
        """The report's ``evaluation`` entry for the `pruned` model (None with ``--eval-documents 0``)."""
        import math

        from actkit.evaluate.perplexity import nll

        if self.before is None:
            return None
        after = nll(pruned, self.tokenizer, self.texts)
        return {"text": "builtin:heldout", "documents": len(self.texts), "tokens": self.before[1],
                "context": "whole documents", "perplexity_before": math.exp(self.before[0] / self.before[1]),
                "perplexity_after": math.exp(after[0] / after[1])}


def evaluation_lines(report: dict[str, Any]) -> list[str]:
    """The held-out perplexity line of a summary (none without an evaluation)."""
    ev = report.get("evaluation")
    if not ev:
        return []
    return [f"held-out perplexity ({ev['documents']} built-in documents, {ev['tokens']} tokens): "
            f"{ev['perplexity_before']:.3f} before, {ev['perplexity_after']:.3f} after"]


def show_report(report: dict[str, Any], out: Path, as_json: bool, table: Table, lines: list[str]) -> None:
    """The end of every pruning command: the report as JSON (``--json``), or a table and summary lines."""
    if as_json:
        typer.echo(json.dumps({**report, "out": str(out)}, indent=2))
        return
    console = Console(soft_wrap=True)
    console.print(table)
    for line in lines:
        console.print(Text(line), highlight=False)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A bar over blocks on stderr for a person watching; None (no bar) otherwise."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("pruning blocks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True, console=Console(stderr=True))
    task = bar.add_task("prune", total=None)
    with bar:
        yield lambda block, blocks: bar.update(task, completed=block + 1, total=blocks)


@prune_app.command("weights")
def weights_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pruned checkpoint (from_pretrained "
                                      "loads it) and pruning.json.")],
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[str, typer.Option("--method", help="magnitude, wanda, sparsegpt or dass.")] = "wanda",
    sparsity: Annotated[float | None, typer.Option("--sparsity", "-s", help="Fraction of each layer's weights to "
                                                   "remove, in [0, 1); implied by --pattern.")] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", "-p", help="Keep N of every M consecutive weights, "
                                                "written N:M (2:4, 4:8); default unstructured.")] = None,
    text: TextOption = None,
    calibration_documents: CalibrationDocumentsOption = DEFAULT_DOCUMENTS,
    seed: SeedOption = 0,
    keep_attention_dense: Annotated[bool, typer.Option("--keep-attention-dense", help="Prune the MLP layers "
                                                       "only.")] = False,
    eval_documents: EvalDocumentsOption = EVAL_DOCUMENTS,
    batch_size: BatchSizeOption = 8,
    force: ReplaceOption = False,
    as_json: ReportJsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Prune the linear layers of every block (magnitude, Wanda, SparseGPT or DaSS; unstructured or N:M) and
    export an ordinary Hugging Face checkpoint with pruning.json."""
    from actkit.compress.export import export_pruned
    from actkit.compress.masks import parse_pattern, resolve_sparsity
    from actkit.compress.weights import METHODS, prune_weights
    from actkit.models import load

    with bad_input():
        if method not in METHODS:
            raise ActkitError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
        resolve_sparsity(sparsity, parse_pattern(pattern))
        check_run_options(out, force, calibration_documents, eval_documents, batch_size)
        calibration = None if method == "magnitude" else calibration_from(text, calibration_documents, seed)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        heldout = HeldoutPerplexity(loaded, tokenizer, eval_documents)
        with _progress(show_progress(as_json)) as on_block:
            pruned, report = prune_weights(loaded, tokenizer, method, sparsity, pattern, calibration=calibration,
                                           keep_attention_dense=keep_attention_dense, batch_size=batch_size,
                                           on_block=on_block)
        report["model"] = model
        evaluation = heldout.evaluation(pruned)
        if evaluation is not None:
            report["evaluation"] = evaluation
        export_pruned(pruned, tokenizer, out, report, overwrite=force)
    if method == "magnitude" and text is not None:
        Console(stderr=True).print(Text("note: magnitude pruning reads no calibration text; --text was not used"))
    show_report(report, out, as_json, _block_table(report), _summary(report, out))


def _block_table(report: dict[str, Any]) -> Table:
    """Achieved sparsity per block: attention layers, MLP layers, all pruned layers."""
    rows: dict[int, dict[str, list[int]]] = {}
    for info in report["modules"].values():
        part = "attention" if info["kind"] == "attention" else "mlp"
        size = info["shape"][0] * info["shape"][1]
        for key in (part, "all"):
            acc = rows.setdefault(info["block"], {}).setdefault(key, [0, 0])
            acc[0] += round(info["sparsity"] * size)
            acc[1] += size
    pattern = report["pattern"] or "unstructured"
    table = Table(title=f"{report['method']} · target {report['sparsity']:.0%} · {pattern}: achieved sparsity",
                  title_justify="left")
    for name in ("block", "attention", "mlp", "all"):
        table.add_column(name, justify="right")
    for block in sorted(rows):
        cells = [f"{rows[block][k][0] / rows[block][k][1]:.2%}" if k in rows[block] else "dense"
                 for k in ("attention", "mlp", "all")]
        table.add_row(str(block), *cells)
    return table


def _summary(report: dict[str, Any], out: Path) -> list[str]:
    lines = [f"pruned {report['pruned_parameters']:,} of {report['prunable_parameters']:,} weights in "
             f"{len(report['modules'])} layers ({report['achieved_sparsity']:.2%}) in {report['seconds']:.1f} s"]
    calib = report["calibration"]
    if calib:
        lines.append(f"calibration: {calib['documents']} documents of {calib['source']} (seed {calib['seed']}), "
                     f"{calib['tokens']} tokens, layer by layer")
    if report["skipped"]:
        reasons = sorted(set(report["skipped"].values()))
        lines.append(f"left dense: {len(report['skipped'])} modules ({'; '.join(reasons)})")
    lines += evaluation_lines(report)
    lines.append(f"wrote {out} (checkpoint and pruning.json)")
    return lines


__all__ = ["EVAL_DOCUMENTS", "BatchSizeOption", "CalibrationDocumentsOption", "EvalDocumentsOption",
           "HeldoutPerplexity", "ReplaceOption", "ReportJsonOption", "SeedOption", "TextOption", "check_run_options",
           "evaluation_lines", "prune_app", "show_report", "weights_command"]
