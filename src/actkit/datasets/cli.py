"""``actkit data convert``: a published norm data set turned into pairs (and prompts) that actkit takes.

Thin over `actkit.datasets.convert` and `save`; the conventions of ``actkit.cli`` hold (``--json`` prints JSON
alone on stdout, bad input ends as ``error: ...`` with status 2, nothing is overwritten without ``--force``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from actkit.cli_common import ForceOption, JsonOption, bad_input, group, stdout
from actkit.datasets import FORMATS, convert, save

data_app = group("data", "Data sets: turn published norm data sets into contrast pairs and prompts.")


@data_app.command("convert")
def convert_command(
    path: Annotated[Path, typer.Argument(help="The data file, in its published format.")],
    format: Annotated[str, typer.Option("--format", "-f", help=f"The file's format: {', '.join(FORMATS)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The pairs file to write (JSONL, for vector train "
                                      "--pairs).")],
    prompts_out: Annotated[Path | None, typer.Option("--prompts-out", help="Also write the prompts (JSONL of "
                                                     "{\"prompt\": ...} lines) to this file.")] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Convert a norm data set (Social Chemistry 101, Scruples, Moral Stories, ETHICS, MoCa, NormBank, MFQ) into
    contrast pairs and prompts; see docs/datasets.md for each format's columns, source and licence."""
    with bad_input():
        converted = convert(format, path)
        written = save(converted, out, prompts_out, overwrite=force)
    summary = {"format": converted.format, "path": str(path), "behaviour": converted.behaviour,
               "pairs": len(converted.pairs), "prompts": len(converted.prompts),
               "skipped": dict(converted.skipped), "written": [str(p) for p in written]}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = stdout()
    console.print(Text(f"wrote {out}: {len(converted.pairs)} pairs (positive side: {converted.behaviour})"),
                  highlight=False)
    if prompts_out is not None:
        console.print(Text(f"wrote {prompts_out}: {len(converted.prompts)} prompts"), highlight=False)
    for why, n in converted.skipped.items():
        console.print(Text(f"skipped {n} row(s): {why}"), highlight=False)
