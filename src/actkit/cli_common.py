"""What every ``actkit`` sub-command shares: the default model, the common options, and how bad input ends.

Each pillar keeps its commands in its own module (``steer/cli.py``, ``compress/cli.py``, ...); they all import
their conventions from here, so that ``--model`` means the same everywhere, ``--json`` prints JSON alone on stdout,
and an `ActkitError` becomes ``error: <message>`` on stderr with exit status 2 and no traceback.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from actkit.errors import ActkitError

#: The model every command uses when ``--model`` is not given.
DEFAULT_MODEL = "builtin:toy-dense"

#: Exit status for bad input, the same as click's usage errors.
BAD_INPUT = 2

ModelOption = Annotated[str, typer.Option(
    "--model", "-m", help="builtin:NAME, a local folder, a .gguf file, a hub id, or a packaged model "
    "(smollm2-135m-instruct, minilm-l6, gemma3-270m).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only, on stdout.")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="Weights dtype: float32, bfloat16 or float16.")]
DeviceOption = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1, mps.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]


def group(name: str, help: str) -> typer.Typer:
    """A sub-command group with the root app's settings (no completion, no pretty tracebacks)."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)


def stdout() -> Console:
    return Console(soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def show_progress(as_json: bool) -> bool:
    """A bar only for a person watching: never with --json, never into a file or a pipe.

    stdout is checked too because rich draws the bar on its default console (stdout) unless told otherwise,
    and a bar drawn into a redirected stdout leaves a blank line in the output.
    """
    return not as_json and sys.stderr.isatty() and sys.stdout.isatty()


def print_error(message: str) -> None:
    """The one way bad input is reported: a red ``error:`` and the message, on stderr (markup is not parsed)."""
    stderr().print(Text.assemble(("error:", "bold red"), " ", message))


@contextmanager
def bad_input() -> Iterator[None]:
    """Inside a command: an `ActkitError` ends as its message and exit status 2 (so test runners see it too);
    after success, a `UserWarning` raised inside (a vector made for another model of the same shape) is shown as
    a ``warning:`` line on stderr."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            yield
    except ActkitError as error:
        print_error(str(error))
        raise typer.Exit(BAD_INPUT) from None
    for w in caught:
        if issubclass(w.category, UserWarning):
            stderr().print(Text.assemble(("warning:", "bold yellow"), " ", str(w.message)))


__all__ = ["BAD_INPUT", "DEFAULT_MODEL", "DeviceOption", "DtypeOption", "ForceOption", "JsonOption", "ModelOption",
           "bad_input", "group", "print_error", "show_progress", "stderr", "stdout"]
