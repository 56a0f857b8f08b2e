"""``actkit prune experts``: prune or merge the experts of an MoE model and export a smaller checkpoint.

Registered on the ``actkit prune`` group by ``actkit.cli``; it imports ``actkit.cli`` only inside the command.
The conventions of ``actkit.cli`` hold: the default model is the built-in MoE (``builtin:toy-moe``); ``--json``
prints JSON alone on stdout; bad input ends as ``error: <message>`` on stderr with exit status 2, before any
model is loaded where the input alone shows it; an existing output folder is only replaced with ``--force``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from actkit.cli_common import DeviceOption, DtypeOption
from actkit.compress.calibration import DEFAULT_DOCUMENTS
from actkit.compress.cli import (
    EVAL_DOCUMENTS,
    BatchSizeOption,
    CalibrationDocumentsOption,
    EvalDocumentsOption,
    ReplaceOption,
    ReportJsonOption,
    SeedOption,
    TextOption,
)
from actkit.compress.experts.prune import REPORT_FILE
from actkit.compress.experts.scores import METHODS
from actkit.errors import ActkitError

#: The model ``prune experts`` uses without ``--model``: the default model of the other commands is dense.
DEFAULT_MOE_MODEL = "builtin:toy-moe"


def experts_command(
    out: Annotated[Path, typer.Option("--out", "-o", help=f"Folder for the smaller checkpoint (from_pretrained "
                                      f"loads it) and {REPORT_FILE}.")],
    model: Annotated[str, typer.Option("--model", "-m", help="An MoE model: builtin:toy-moe, or a local folder "
                                       "or hub id of a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE model.")
                     ] = DEFAULT_MOE_MODEL,
    method: Annotated[str, typer.Option("--method", help="reap (mean gate-weighted output norm), ean (summed "
                                        "output norm), frequency (routed tokens), or merge (M-SMoE-style).")
                      ] = "reap",
    keep: Annotated[float, typer.Option("--keep", "-k", help="Experts each MoE block keeps: a fraction in (0, 1] "
                                        "or a whole number; at least the router's top-k.")] = 0.5,
    text: TextOption = None,
    protect: Annotated[str | None, typer.Option("--protect", help="Experts always kept: LAYER:EXPERT,... "
                                                "(for example 0:3,2:5).")] = None,
    calibration_documents: CalibrationDocumentsOption = DEFAULT_DOCUMENTS,
    seed: SeedOption = 0,
    every_token: Annotated[bool, typer.Option("--every-token", help="Run every expert on every calibration token "
                                              "(REAP's reference observer; E/k times the expert cost).")] = False,
    eval_documents: EvalDocumentsOption = EVAL_DOCUMENTS,
    batch_size: BatchSizeOption = 8,
    force: ReplaceOption = False,
    as_json: ReportJsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Prune (REAP, EAN, frequency) or merge the experts of every MoE block to a kept fraction and export an
    ordinary Hugging Face checkpoint with a report."""
    from actkit.builtin import corpus
    from actkit.cli_common import bad_input
    from actkit.compress.calibration import calibration_texts
    from actkit.compress.experts.prune import prune_experts
    from actkit.compress.experts.scores import parse_experts
    from actkit.evaluate.perplexity import nll
    from actkit.io import check_output_folder
    from actkit.models import load
    from actkit.models.checkpoint import save_checkpoint

    with bad_input():
        if method not in METHODS:
            raise ActkitError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
        if not keep > 0 or (keep > 1 and not float(keep).is_integer()):
            raise ActkitError(f"--keep must be a fraction in (0, 1] or a whole number of experts, got {keep}")
        if calibration_documents <= 0:
            raise ActkitError(f"--calibration-documents must be positive (got {calibration_documents})")
        if eval_documents < 0:
            raise ActkitError(f"--eval-documents must be 0 (skip) or positive (got {eval_documents})")
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of documents (got {batch_size})")
        protected = parse_experts(protect) if protect is not None else []
        check_output_folder(out, force)
        calibration = calibration_texts(text, documents=calibration_documents, seed=seed)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        heldout = corpus.texts(eval_documents, split="heldout") if eval_documents else []
        before = nll(loaded, tokenizer, heldout) if heldout else None
        pruned, report = prune_experts(loaded, tokenizer, method=method, keep=keep, calibration=calibration,
                                       protect=protected, every_token=every_token, batch_size=batch_size,
                                       inplace=True)  # the loaded model is this command's own
        report = {"model": model, **report}
        if before is not None:
            after = nll(pruned, tokenizer, heldout)
            report["evaluation"] = {"text": "builtin:heldout", "documents": len(heldout), "tokens": before[1],
                                    "perplexity_before": math.exp(before[0] / before[1]),
                                    "perplexity_after": math.exp(after[0] / after[1])}
        save_checkpoint(pruned, out, report_name=REPORT_FILE, report=report, tokenizer=tokenizer, overwrite=force)
    if as_json:
        typer.echo(json.dumps({**report, "out": str(out)}, indent=2))
        return
    console = Console(soft_wrap=True)
    console.print(_layer_table(report))
    for line in _summary(report, out):
        console.print(Text(line), highlight=False)


def _layer_table(report: dict[str, Any]) -> Table:
    merge = report["method"] == "merge"
    table = Table(title=f"{report['method']}: {report['experts_after']} of {report['experts_before']} experts kept "
                  f"per MoE block (top-{report['top_k']} routing)", title_justify="left")
    for name in ("block", "kept", "removed" if not merge else "merged into kept", "routed share kept"):
        table.add_column(name, justify="right" if name == "block" else "left")
    routing = {r["layer"]: r for r in report["routing"]}
    for row in report["layers"]:
        freq = routing[row["layer"]]["frequency"]
        share = sum(freq[e] or 0 for e in row["kept"]) / max(sum(f or 0 for f in freq), 1e-12)
        if merge:
            detail = "; ".join(f"{g['into']}<-{','.join(map(str, g['members'][1:]))}" for g in row["groups"]
                               if len(g["members"]) > 1)
        else:
            detail = ", ".join(map(str, row["removed"]))
        table.add_row(str(row["layer"]), ", ".join(map(str, row["kept"])), detail or "-", f"{share:.1%}")
    return table


def _summary(report: dict[str, Any], out: Path) -> list[str]:
    calib = report["calibration"]
    lines = [f"parameters: {report['parameters_after']:,} (from {report['parameters_before']:,})",
             f"calibration: {calib['documents']} documents of {calib['source']} (seed {calib['seed']}), "
             f"{calib['tokens']} tokens" + (", every expert on every token" if report["every_token"] else "")]
    ev = report.get("evaluation")
    if ev:
        lines.append(f"held-out perplexity ({ev['documents']} built-in documents, {ev['tokens']} tokens): "
                     f"{ev['perplexity_before']:.3f} before, {ev['perplexity_after']:.3f} after")
    lines.append(f"wrote {out} (checkpoint and {REPORT_FILE})")
    return lines


__all__ = ["DEFAULT_MOE_MODEL", "experts_command"]
