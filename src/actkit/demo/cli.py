"""``actkit demo``: train steering vectors, steer, compare with the plain model, and write a small report."""

from __future__ import annotations

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
    stderr,
    stdout,
)
from actkit.errors import ActkitError


def demo_command(
    model: ModelOption = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md, results.json, steering.png and "
                                      "the vectors.")] = Path("actkit-demo"),
    prompts: Annotated[int, typer.Option("--prompts", help="Prompts per experiment.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens generated per prompt.")
                              ] = 24,
    force: Annotated[bool, typer.Option("--force", help="Replace the report and vector files of an earlier run "
                                        "in --out.")] = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Steer a model end to end: train vectors from shipped pairs, steer, compare, write a report.

    Real models: a sentiment vector and a topic vector (weddings); built-in toy models: sentiment and refusal.
    Each is swept over a few coefficients beside a random direction of the same norm, with the KL to the plain
    model and the perplexity as the cost.
    """
    from actkit.demo.steering import experiments_for, run_demo, vector_files
    from actkit.io import check_writable, to_json
    from actkit.models import load
    from actkit.report.steering import REPORT_FILES, write_steering_report

    with bad_input():
        if prompts < 1 or max_new_tokens < 1:
            raise ActkitError("--prompts and --max-new-tokens must be at least 1")
        experiments = experiments_for(model)
        check_writable(out, REPORT_FILES + vector_files(experiments), overwrite=force)
        log = None if as_json else (lambda line: stderr().print(Text(line, style="dim")))
        if log:
            log(f"loading {model}")
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        result, vectors = run_demo(loaded, tokenizer, model, prompts=prompts, max_new_tokens=max_new_tokens,
                                   experiments=experiments, log=log)
        written = write_steering_report(result, out, vectors=vectors, overwrite=force)
    if as_json:
        typer.echo(to_json(result))
        return
    console = stdout()
    for exp in result["experiments"]:
        console.print(_table(exp))
        for example in exp["examples"][:2]:
            console.print(Text(example["prompt"], style="bold"))
            console.print(Text.assemble(("  plain:   ", "dim"), example["plain"].strip()))
            console.print(Text.assemble((f"  steered ({exp['example_coef']:g}): ", "dim"), example["steered"].strip()))
    report = [p for p in written if p.name in REPORT_FILES]
    console.print(f"wrote {', '.join(str(p) for p in report)} and {len(vectors)} vectors in "
                  f"{out / 'vectors'} ({result['seconds']:.0f} s)")


def _table(exp: dict[str, Any]) -> Table:
    title = (f"{exp['name']}: {exp['pairs']} at {exp['site']}, "
             f"{'relative ' if exp['relative'] else ''}coefficients")
    table = Table(title=title, box=box.SIMPLE, title_justify="left")
    for header in ("coef", exp["behaviour"], "KL", "perplexity", "random: " + exp["behaviour"], "random: KL"):
        table.add_column(header, justify="right")
    for row, other in zip(exp["rows"], exp["random"], strict=True):
        table.add_row(f"{row['coef']:g}", f"{row['behaviour']:.2f}", f"{row['kl']:.3f}", f"{row['perplexity']:.2f}",
                      f"{other['behaviour']:.2f}", f"{other['kl']:.3f}")
    return table


__all__ = ["demo_command"]
