"""What the command-line tests share: running a command, the bad-input contract, tiny model folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
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


SRC = str(Path(__file__).resolve().parents[1] / "src")


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones included) with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def terminate_when_held(driver: str, args: list[str], cwd: Path,
                        at_hold: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -c DRIVER ARGS`` in `cwd` (actkit from this checkout), wait until it prints HELD on stderr,
    call `at_hold`, send SIGTERM; the finished process (stderr includes what came before HELD)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", driver, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == "HELD":
                break
        else:
            raise AssertionError("the run ended before it reached the point it holds at: " + "".join(seen))
        if at_hold is not None:
            at_hold()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err)
