"""``actkit prune``: one group for the pruning commands (``weights``, ``experts``), thin over the Python API."""

from __future__ import annotations

import typer

prune_app = typer.Typer(
    help="Prune a model: weights scored by activation norms, or whole MoE experts; export a checkpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
