"""``actkit prune experts``: prune or merge the experts of an MoE model and export a smaller checkpoint.

Registered on the ``actkit prune`` group by ``actkit.cli``, with the options, checks, held-out evaluation and
report display that every pruning command shares (``actkit.compress.cli``). The conventions of
``actkit.cli_common`` hold: the default model is the built-in MoE (``builtin:toy-moe``); ``--json`` prints JSON
alone on stdout; bad input ends as ``error: <message>`` on stderr with exit status 2, before any model is loaded
where the input alone shows it; an existing output folder is only replaced with ``--force``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from actkit.cli_common import DeviceOption, DtypeOption
from actkit.compress.calibration import DEFAULT_DOCUMENTS
from actkit.compress.cli import (
    EVAL_DOCUMENTS,
    BatchSizeOption,
    CalibrationDocumentsOption,
    EvalDocumentsOption,
    HeldoutPerplexity,
    ReplaceOption,
    ReportJsonOption,
    SeedOption,
    TextOption,
    calibration_from,
    check_run_options,
    evaluation_lines,
    show_report,
)
from actkit.compress.experts.prune import REPORT_FILE
from actkit.compress.experts.scores import METHODS
from actkit.errors import ActkitError

#: The model ``prune experts`` uses without ``--model``: the default model of the other commands is dense.
DEFAULT_MOE_MODEL = "builtin:toy-moe"

_COUNT = re.compile(r"[+]?\d+")


def parse_keep(text: str) -> float | int:
    """``--keep``: a fraction (a float below 1, or a percentage) or a number of experts (an int).

    ``1`` alone is the point: read as a fraction it would keep every expert, while a user may mean one expert. So a
    fraction is written below 1 (``0.5``) or with ``%`` (``50%``, ``100%``), and a whole number without a point
    (``4``, ``1``) is a count; ``1.0`` is refused as ambiguous.
    """
    given = text.strip()
    try:
        if given.endswith("%"):
            percent = float(given[:-1])
            if not 0 < percent <= 100:
                raise ActkitError(f"--keep {text}: a percentage lies in (0%, 100%]")
            return percent / 100
        if _COUNT.fullmatch(given):
            count = int(given)
            if count < 1:
                raise ActkitError(f"--keep {text}: keep at least one expert (a whole number >= 1, a fraction such "
                                  "as 0.5, or a percentage such as 50%)")
            return count
        fraction = float(given)
    except ValueError:
        raise ActkitError(f"--keep {text!r}: give a fraction such as 0.5, a percentage such as 50%, or a whole "
                          "number of experts such as 4") from None
    if not 0 < fraction < 1:
        raise ActkitError(f"--keep {text}: a fraction lies strictly between 0 and 1 (write 100% to keep every "
                          "expert); a number of experts is a whole number without a point, such as 4 or 1")
    return fraction


def experts_command(
    out: Annotated[Path, typer.Option("--out", "-o", help=f"Folder for the smaller checkpoint (from_pretrained "
                                      f"loads it) and {REPORT_FILE}.")],
    model: Annotated[str, typer.Option("--model", "-m", help="An MoE model: builtin:toy-moe, or a local folder "
                                       "or hub id of a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE model.")
                     ] = DEFAULT_MOE_MODEL,
    method: Annotated[str, typer.Option("--method", help="reap (mean gate-weighted output norm), ean (summed "
                                        "output norm), frequency (routed tokens), or merge (M-SMoE-style).")
                      ] = "reap",
    keep: Annotated[str, typer.Option("--keep", "-k", help="Experts each MoE block keeps: a fraction below 1 "
                                      "(0.5) or a percentage (50%, 100%), or a whole number of experts (4); at "
                                      "least the router's top-k.")] = "0.5",
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
    from actkit.cli_common import bad_input
    from actkit.compress.experts.prune import prune_experts
    from actkit.compress.experts.scores import parse_experts
    from actkit.models import load
    from actkit.models.checkpoint import save_checkpoint

    with bad_input():
        if method not in METHODS:
            raise ActkitError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
        kept = parse_keep(keep)
        check_run_options(out, force, calibration_documents, eval_documents, batch_size)
        protected = parse_experts(protect) if protect is not None else []
        calibration = calibration_from(text, calibration_documents, seed)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        heldout = HeldoutPerplexity(loaded, tokenizer, eval_documents)
        pruned, report = prune_experts(loaded, tokenizer, method=method, keep=kept,
                                       calibration=calibration, protect=protected, every_token=every_token,
                                       batch_size=batch_size, inplace=True)  # the loaded model is this command's own
        report = {"model": model, **report}
        evaluation = heldout.evaluation(pruned)
        if evaluation is not None:
            report["evaluation"] = evaluation
        save_checkpoint(pruned, out, report_name=REPORT_FILE, report=report, tokenizer=tokenizer, overwrite=force)
    show_report(report, out, as_json, _layer_table(report), _summary(report, out))


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
    lines += evaluation_lines(report)
    lines.append(f"wrote {out} (checkpoint and {REPORT_FILE})")
    return lines


__all__ = ["DEFAULT_MOE_MODEL", "experts_command", "parse_keep"]
