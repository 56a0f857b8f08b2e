"""The ``actkit`` command: an index of the pillars' commands, each defined in its pillar's ``cli.py``.

Conventions every command keeps (``actkit.cli_common``): the default model is `DEFAULT_MODEL`, so each command
runs on a fresh machine with no arguments; ``--json`` prints machine-readable JSON alone on stdout; progress bars
go to stderr and only when it is a terminal; bad input (an `ActkitError`) prints ``error: <message>`` on stderr
with no traceback and exits with status 2; any other failure prints ``error: <message>`` and a hint, status 1
(``--debug`` or ``ACTKIT_DEBUG=1`` show the traceback); SIGTERM cleans up and exits with status 143.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

import actkit
from actkit.builtin.cli import app as builtin_app
from actkit.cli_common import BAD_INPUT, DEFAULT_MODEL, RootGroup, print_error, sigterm_unwinds
from actkit.compress.cli import prune_app
from actkit.compress.experts.cli import experts_command
from actkit.demo.cli import demo_command
from actkit.errors import ActkitError
from actkit.evaluate.cli import eval_app
from actkit.localize.cli import patch_command
from actkit.monitor.cli import probe_app
from actkit.observe.cli import profile_command, sites_command
from actkit.serve.cli import serve_command
from actkit.steer.cli import generate_command, vector_app

app = typer.Typer(
    name="actkit",
    cls=RootGroup,
    help="Activation engineering for transformer language models: read, steer, localize and compress.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"actkit {actkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback when a command fails unexpectedly "
                                        "(also ACTKIT_DEBUG=1).")] = False,
) -> None:
    """Activation engineering for transformer language models: read, steer, localize and compress."""


# in the order of `actkit --help`: observe, the built-in models, steer, compress, evaluate, localize, serve
app.command("profile")(profile_command)
app.command("sites")(sites_command)
app.add_typer(builtin_app, name="builtin")
app.add_typer(vector_app, name="vector")
app.command("generate")(generate_command)
app.command("demo")(demo_command)
app.add_typer(prune_app, name="prune")
prune_app.command("experts")(experts_command)
app.add_typer(eval_app, name="eval")
app.command("patch")(patch_command)
app.add_typer(probe_app, name="probe")
app.command("serve")(serve_command)

def main() -> None:
    """Console entry point: SIGTERM unwinds like Ctrl-C (status 143), and an `ActkitError` raised outside a
    command still ends as a message and status 2."""
    with sigterm_unwinds():
        try:
            app()
        except ActkitError as error:
            print_error(str(error))
            sys.exit(BAD_INPUT)


__all__ = ["DEFAULT_MODEL", "app", "main"]

if __name__ == "__main__":
    main()
