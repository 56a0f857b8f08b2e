"""What the command-line tests share: running a command, the bad-input contract, tiny model folders."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from actkit import cli
from actkit.models.packaged import byte_tokenizer

from tiny import build

runner = CliRunner()


def invoke(*args: str | Path):
    """Run ``actkit ARGS`` in-process; stdout and stderr stay apart."""
    return runner.invoke(cli.app, [str(a) for a in args])


def assert_bad_input(result, *needles: str) -> None:
    """Exit status 2, the message on stderr after a plain 'error:', no traceback, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert result.stdout == ""


def save_tiny(family: str, folder: Path) -> Path:
    """A tiny random model of `family` saved as an ordinary Hugging Face folder with a byte-level tokenizer."""
    tokenizer = byte_tokenizer()
    model = build(family)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
