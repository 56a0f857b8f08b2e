"""A demo stopped at any point (SIGTERM, an error) leaves ``--out`` as it was: the report and its vectors are
staged together and published only at the end.

The SIGTERM tests run the real ``actkit demo`` on the built-in model in a subprocess that holds still inside the
staging step (every file rendered, none published) and send it SIGTERM there, as `tests/test_cli_signals.py` does
for the other commands.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import actkit.report.steering as report
from actkit.cli_common import TERMINATED
from actkit.errors import ActkitError
from actkit.steer import SteeringVector, load_vector

from cli_helpers import listing, terminate_when_held

posix_signals = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")

#: Runs ``actkit ARGS`` with the steering report's `publish` replaced: it says HELD on stderr and sleeps.
DRIVER = """
import sys, time
import torch
import actkit.report.steering as report

torch.set_num_threads(1)  # as in conftest.py: a tiny model runs fastest on one thread

def held(*args, **kwargs):
    print("HELD", file=sys.stderr, flush=True)
    time.sleep(300)

report.publish = held
from actkit.cli import main
main()
"""

EARLIER_RUN = ["report.md", "results.json", "steering.png", "vectors/sentiment.safetensors",
               "vectors/refusal.safetensors"]


def _earlier_run(out: Path) -> None:
    for name in [*EARLIER_RUN, "notes.txt"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(f"earlier {name}".encode())


def _demo_terminated_in_staging(tmp_path: Path, out: str, *args: str) -> tuple[int, str, list[str]]:
    """Run ``actkit demo --out OUT ARGS`` in `tmp_path` on the built-in model, wait until it holds, note what is
    staged, send SIGTERM; the exit status, stderr, and the staged files (relative to the staging folder)."""
    staged: list[str] = []

    def note_staged() -> None:
        stages = list((tmp_path / out).glob(".actkit-*.tmp"))
        staged.extend(sorted(str(p.relative_to(s)) for s in stages for p in s.rglob("*") if p.is_file()))

    done = terminate_when_held(DRIVER, ["demo", "--out", out, "--prompts", "1", "-n", "1", *args], tmp_path,
                               note_staged)
    return done.returncode, done.stderr, staged


@posix_signals
def test_demo_sigterm_in_staging_leaves_no_folder(tmp_path: Path) -> None:
    status, err, staged = _demo_terminated_in_staging(tmp_path, "runs/demo")
    assert status == TERMINATED, err
    assert "error: terminated by SIGTERM" in err and "Traceback" not in err
    assert listing(tmp_path) == {}  # no demo folder, no vectors/, no staging folder, no runs/
    assert staged == sorted(EARLIER_RUN)  # the report and both vectors were waiting in one staging folder


@posix_signals
def test_demo_sigterm_in_staging_keeps_an_earlier_run(tmp_path: Path) -> None:
    _earlier_run(tmp_path / "demo")
    before = listing(tmp_path)
    status, err, staged = _demo_terminated_in_staging(tmp_path, "demo", "--force")
    assert status == TERMINATED, err
    assert listing(tmp_path) == before  # the earlier report and vectors untouched, nothing hidden left inside
    assert staged == sorted(EARLIER_RUN)


def _result() -> dict:
    """The smallest result the report renders: no experiments."""
    return {"model": "builtin:toy-dense", "model_name": "toy-dense", "reference_texts": 0, "prompts": 1,
            "max_new_tokens": 1, "seconds": 0.0, "environment": report.environment(), "experiments": []}


def _vectors() -> dict[str, SteeringVector]:
    return {f"vectors/{name}.safetensors": SteeringVector({1: torch.full((8,), float(i + 1))})
            for i, name in enumerate(["sentiment", "refusal"])}


@pytest.fixture
def second_vector_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the second vector into the staging folder fails, once the first is written there."""
    real = report.save_vector
    calls = []

    def save(vector: SteeringVector, path: Path, **kwargs) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("no space left on device")
        return real(vector, path, **kwargs)

    monkeypatch.setattr(report, "_plot", lambda result, path: False)
    monkeypatch.setattr(report, "save_vector", save)


@pytest.mark.usefixtures("second_vector_fails")
def test_a_failed_write_removes_the_folders_it_made(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no space"):
        report.write_steering_report(_result(), tmp_path / "runs" / "demo", vectors=_vectors())
    assert listing(tmp_path) == {}


@pytest.mark.usefixtures("second_vector_fails")
def test_a_failed_write_keeps_an_earlier_run(tmp_path: Path) -> None:
    _earlier_run(tmp_path / "demo")
    before = listing(tmp_path)
    with pytest.raises(OSError, match="no space"):
        report.write_steering_report(_result(), tmp_path / "demo", vectors=_vectors(), overwrite=True)
    assert listing(tmp_path) == before


def test_report_and_vectors_are_written_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "_plot", lambda result, path: False)
    out = tmp_path / "demo"
    written = report.write_steering_report(_result(), out, vectors=_vectors())
    assert written == [out / "report.md", out / "results.json", out / "vectors/sentiment.safetensors",
                       out / "vectors/refusal.safetensors"]
    assert float(load_vector(out / "vectors/refusal.safetensors").directions[1][0]) == 2.0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "report.md", "results.json", "vectors", "vectors/refusal.safetensors", "vectors/sentiment.safetensors"]
    with pytest.raises(ActkitError, match="already exists.*--force"):  # an earlier run is not replaced silently
        report.write_steering_report(_result(), out, vectors=_vectors())


@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/outside.safetensors"])
def test_a_vector_file_outside_the_report_folder_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ActkitError, match="inside the report's folder"):
        report.write_steering_report(_result(), tmp_path / "demo", vectors={name: _vectors()[
            "vectors/refusal.safetensors"]})
    assert not (tmp_path / "demo").exists()
