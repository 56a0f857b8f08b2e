"""The ``actkit`` command: one sub-command per pillar, each a thin layer over the Python API.

Conventions every command keeps: the default model is `DEFAULT_MODEL`, so each command runs on a fresh machine
with no arguments; ``--json`` prints machine-readable JSON alone on stdout; progress bars go to stderr and only
when it is a terminal; bad input (an `ActkitError`) prints ``error: <message>`` on stderr with no traceback and
exits with status 2, like a usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import actkit
from actkit.core.anatomy import Anatomy
from actkit.core.collect import read_texts
from actkit.core.sites import SITE_KINDS, Site
from actkit.errors import ActkitError
from actkit.models import load
from actkit.observe.default_text import default_texts
from actkit.observe.profile import PROFILE_FILE, check_writable, profile, to_json, write_profile

#: The model every command uses when ``--model`` is not given (switch to the trained toy model once it ships).
DEFAULT_MODEL = "builtin:random-llama"

#: Exit status for bad input, the same as click's usage errors.
BAD_INPUT = 2

app = typer.Typer(
    name="actkit",
    help="Activation engineering for transformer language models: read, steer, localize and compress.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="builtin:NAME, a local folder, a .gguf file, "
                                          "a hub id, or a packaged model (smollm2, minilm).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only, on stdout.")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="Weights dtype: float32, bfloat16 or float16.")]
DeviceOption = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1, mps.")]


def _stdout() -> Console:
    return Console(soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    """The one way bad input is reported: a red ``error:`` and the message, on stderr (markup is not parsed)."""
    _stderr().print(Text.assemble(("error:", "bold red"), " ", message))


@contextmanager
def _bad_input() -> Iterator[None]:
    """Turn an `ActkitError` into the message alone and exit status 2, inside commands (so test runners see it)."""
    try:
        yield
    except ActkitError as error:
        print_error(str(error))
        raise typer.Exit(BAD_INPUT) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"actkit {actkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")] = None,
) -> None:
    """Activation engineering for transformer language models: read, steer, localize and compress."""


@app.command("profile")
def profile_command(
    model: ModelOption = DEFAULT_MODEL,
    text: Annotated[Path | None, typer.Option("--text", "-t", help="Text file, one document per line "
                                              "(default: a built-in English sample).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Stop after this many tokens.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per forward pass.")] = 8,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=f"Also write {PROFILE_FILE} to this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help=f"Overwrite an existing {PROFILE_FILE}.")] = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Residual-stream norms after every block: mean, median, p99 and max over tokens."""
    with _bad_input():
        if max_tokens is not None and max_tokens <= 0:
            raise ActkitError(f"--max-tokens must be a positive number of tokens (got {max_tokens})")
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of documents (got {batch_size})")
        texts = read_texts(text) if text is not None else default_texts()
        if out is not None:
            check_writable(out, overwrite=force)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        anatomy = Anatomy.of(loaded)
        result = profile(loaded, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size,
                         progress=_show_progress(as_json), model_name=model)
        path = write_profile(result, out, overwrite=force) if out is not None else None
    if as_json:
        typer.echo(to_json(result))
        return
    console = _stdout()
    console.print(_header(model, anatomy, f"{result['tokens']} tokens"))
    console.print(_profile_table(result))
    if path is not None:
        console.print(f"wrote {path}", highlight=False)


def _show_progress(as_json: bool) -> bool:
    """A bar only for a person watching: never with --json, never into a file or a pipe.

    stdout is checked too because rich draws the bar on its default console (stdout) unless told otherwise,
    and a bar drawn into a redirected stdout leaves a blank line in the output.
    """
    return not as_json and sys.stderr.isatty() and sys.stdout.isatty()


def _header(model: str, anatomy: Anatomy, extra: str) -> Text:
    parts = [f"model {model}", f"family {anatomy.family.name}", f"{anatomy.n_layers} blocks",
             f"hidden {anatomy.hidden_size}", extra]
    return Text(" · ".join(parts), style="bold")


def _num(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    if value != 0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.3e}"
    return f"{value:.3f}"


def _profile_table(result: dict[str, Any]) -> Table:
    table = Table(title="L2 norm of resid_post over tokens", title_justify="left")
    table.add_column("block", justify="right")
    for name in ("mean", "p50", "p99", "max"):
        table.add_column(name, justify="right")
    for layer in result["layers"]:
        table.add_row(str(layer["index"]), *(_num(layer[f"resid_norm_{k}"]) for k in ("mean", "p50", "p99", "max")))
    return table


@app.command("sites")
def sites_command(
    model: ModelOption = DEFAULT_MODEL,
    site: Annotated[list[str] | None, typer.Option("--site", "-s", help="Only these sites or patterns, such as "
                                                   "'mlp_hidden.*' or 'resid_post.3' (repeatable).")] = None,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """The sites of a model: what every pillar can read and write, by architecture-neutral name."""
    with _bad_input():
        loaded, _ = load(model, dtype=dtype, device=device)
        anatomy = Anatomy.of(loaded)
        found = anatomy.expand(site) if site else anatomy.sites()
    if as_json:
        typer.echo(json.dumps({"model": model, "family": anatomy.family.name, "blocks": anatomy.n_layers,
                               "hidden_size": anatomy.hidden_size, "sites": [str(s) for s in found]}, indent=2))
        return
    console = _stdout()
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


def main() -> None:
    """Console entry point; `ActkitError` raised outside a command still ends as a message and status 2."""
    try:
        app()
    except ActkitError as error:
        print_error(str(error))
        sys.exit(BAD_INPUT)


if __name__ == "__main__":
    main()
