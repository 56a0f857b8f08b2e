"""What every ``actkit`` sub-command shares: the default model, the common options, and how a command ends.

Each pillar keeps its commands in its own module (``steer/cli.py``, ``compress/cli.py``, ...); they all import
their conventions from here, so that ``--model`` means the same everywhere, ``--json`` prints JSON alone on stdout,
and a command ends in one of four ways:

- success: status 0;
- bad input (an `ActkitError`): ``error: <message>`` on stderr, status 2, no traceback;
- anything else that escapes a command (a defect, a failure actkit did not foresee): ``error: <message>`` and a
  hint to rerun with ``--debug`` or ``ACTKIT_DEBUG=1``, which show the traceback instead; status 1 (`RootGroup`);
- SIGTERM (what ``timeout`` and job schedulers send): handled like Ctrl-C, as an exception raised in the main
  thread, so that every ``finally`` of `actkit.io` removes its temporary file or folder and ``--out`` is left as
  it was; status 143 (`sigterm_unwinds`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from actkit.errors import ActkitError

#: The model every command uses when ``--model`` is not given.
DEFAULT_MODEL = "builtin:toy-dense"

#: Exit status for bad input, the same as click's usage errors.
BAD_INPUT = 2

#: Exit status for a command that failed in a way actkit did not foresee.
FAILURE = 1

#: Exit status after SIGTERM: 128 + 15, what a shell reports for a process that the signal ended.
TERMINATED = 128 + signal.SIGTERM

#: Set to anything but "" or "0", this environment variable shows the traceback of an unexpected failure.
DEBUG_ENV = "ACTKIT_DEBUG"

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


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM arrives (see `sigterm_unwinds`).

    A `SystemExit`, not an `Exception`: no ``except Exception`` in actkit, torch or transformers swallows it, every
    ``finally`` and ``with`` block on the way up runs, and the process ends with status `TERMINATED`.
    """

    def __init__(self) -> None:
        super().__init__(TERMINATED)


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread instead of killing the process outright.

    The default action of SIGTERM ends the process at once, leaving the hidden temporaries of `actkit.io` behind;
    raised as an exception it unwinds like Ctrl-C does. A second SIGTERM during that clean-up is ignored (SIGKILL
    still ends the process). Outside the main thread, where Python cannot install handlers, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def debug_requested(ctx: Any) -> bool:
    """True when the root ``--debug`` option was given or `DEBUG_ENV` is set (to anything but "" or "0")."""
    return bool(ctx.find_root().params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _passes_through(error: Exception) -> bool:
    """click's and typer's own ways of ending (usage errors, `typer.Exit`, aborts), which they report themselves,
    and a closed pipe, which click ends quietly (``actkit sites | head -1``). Recognised by module, because typer
    0.29 vendors click under ``typer._click`` while older versions raise ``click``'s classes."""
    return isinstance(error, BrokenPipeError) or type(error).__module__.split(".")[0] in ("click", "typer")


class RootGroup(TyperGroup):
    """The root ``actkit`` group: the last-resort handler around every sub-command.

    An `ActkitError` that a command let escape ends like bad input (status 2). Any other exception prints
    ``error: <message>`` and a hint, with status 1, never a bare traceback; with ``--debug`` or ``ACTKIT_DEBUG=1``
    it propagates, so the traceback is shown. `Terminated` (SIGTERM) says so on stderr and ends with status 143.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Terminated:
            print_error("terminated by SIGTERM; temporary files were removed")
            raise
        except ActkitError as error:
            print_error(str(error))
            raise typer.Exit(BAD_INPUT) from None
        except Exception as error:
            if _passes_through(error) or debug_requested(ctx):
                raise
            print_error(str(error) or type(error).__name__)
            stderr().print(Text(f"({type(error).__name__}: an unexpected failure, not bad input; rerun with --debug "
                                f"or {DEBUG_ENV}=1 for the traceback)", style="dim"))
            raise typer.Exit(FAILURE) from None


__all__ = ["BAD_INPUT", "DEBUG_ENV", "DEFAULT_MODEL", "FAILURE", "TERMINATED", "DeviceOption", "DtypeOption",
           "ForceOption", "JsonOption", "ModelOption", "RootGroup", "Terminated", "bad_input", "debug_requested",
           "group", "print_error", "show_progress", "sigterm_unwinds", "stderr", "stdout"]
