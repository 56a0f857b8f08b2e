"""How a command ends when it cannot succeed: the last-resort handler (status 1, ``--debug``), and file-system
errors found before any work (an ``--out`` under a regular file, in a folder that cannot be written, or ``.``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import actkit.observe.cli as observe_cli
from actkit import cli
from actkit.errors import ActkitError

from cli_helpers import assert_bad_input, invoke, runner

SRC = str(Path(__file__).resolve().parents[1] / "src")
HINT = "rerun with --debug or ACTKIT_DEBUG=1 for the traceback"


def _fail(*args: object, **kwargs: object) -> None:
    raise RuntimeError("the disk caught fire")


def test_an_unexpected_exception_ends_as_an_error_and_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe_cli, "load", _fail)
    monkeypatch.delenv("ACTKIT_DEBUG", raising=False)
    result = invoke("sites")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: the disk caught fire\n"), result.stderr
    assert HINT in result.stderr and "RuntimeError" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


@pytest.mark.parametrize(("args", "env"), [(["--debug", "sites"], {}), (["sites"], {"ACTKIT_DEBUG": "1"})])
def test_debug_lets_the_exception_through(args: list[str], env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe_cli, "load", _fail)
    monkeypatch.delenv("ACTKIT_DEBUG", raising=False)
    result = runner.invoke(cli.app, args, env=env)
    assert isinstance(result.exception, RuntimeError)  # what Python prints as a traceback outside the runner
    assert result.exit_code == 1
    assert HINT not in result.stderr


def test_actkit_debug_0_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe_cli, "load", _fail)
    result = runner.invoke(cli.app, ["sites"], env={"ACTKIT_DEBUG": "0"})
    assert result.exit_code == 1 and HINT in result.stderr


def test_an_actkit_error_outside_bad_input_still_ends_with_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise ActkitError("this table cannot be drawn")

    monkeypatch.setattr(observe_cli, "_header", refuse)  # called after the command's bad_input block
    assert_bad_input(invoke("sites"), "this table cannot be drawn")


#: The console entry point, with `load` made to fail: a real process, so a traceback would reach stderr.
FAILING_MAIN = """
import actkit.observe.cli as observe_cli
def fail(*args, **kwargs):
    raise RuntimeError("the disk caught fire")
observe_cli.load = fail
from actkit.cli import main
main()
"""


@pytest.mark.parametrize("debug", [False, True])
def test_main_in_a_process(debug: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACTKIT_DEBUG"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    args = ["--debug", "sites"] if debug else ["sites"]
    done = subprocess.run([sys.executable, "-c", FAILING_MAIN, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    if debug:
        assert "Traceback (most recent call last)" in done.stderr and "RuntimeError: the disk caught fire" in done.stderr
    else:
        assert done.stderr.startswith("error: the disk caught fire\n") and HINT in done.stderr
        assert "Traceback" not in done.stderr


# --- file-system errors, found before the model is loaded (--model names no model: loading it would fail) ---

NO_MODEL = "no/such-model-anywhere"

#: command -> (its arguments for an output OUT, whether OUT is a file rather than a folder)
COMMANDS = {
    "vector train": (lambda out: ["vector", "train", "--pairs", "builtin:sentiment", "--model", NO_MODEL,
                                  "--out", out], True),
    "vector export": (lambda out: ["vector", "export", "no-such-vector.safetensors", "--out", out], True),
    "prune weights": (lambda out: ["prune", "weights", "--sparsity", "0.5", "--model", NO_MODEL, "--out", out],
                      False),
    "prune experts": (lambda out: ["prune", "experts", "--model", NO_MODEL, "--out", out], False),
    "profile": (lambda out: ["profile", "--model", NO_MODEL, "--out", out], False),
    "builtin train": (lambda out: ["builtin", "train", "toy-dense", "--out", out], False),
}


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """``builtin train`` must refuse before it trains; training here would be the defect."""
    import actkit.builtin.train as train

    def trained(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(train, "train", trained)


def _output(parent: Path, command: str) -> str:
    return str(parent / ("v.safetensors" if COMMANDS[command][1] else "out"))


@pytest.mark.parametrize("command", COMMANDS)
def test_out_under_a_regular_file(command: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke(*COMMANDS[command][0](_output(blocker, command)))
    assert_bad_input(result, "a-file", "is a regular file")
    assert blocker.read_text() == "not a folder"


def _unwritable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`folder` reads as not writable to os.access, as it would for a user without permission (root passes
    every permission check, so a chmod alone proves nothing when the tests run as root)."""
    real = os.access

    def access(path: str | os.PathLike[str], mode: int, **kwargs: object) -> bool:
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("command", COMMANDS)
def test_out_in_a_folder_that_cannot_be_written(command: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    _unwritable(monkeypatch, locked)
    assert_bad_input(invoke(*COMMANDS[command][0](_output(locked, command))), "locked",
                     "permission denied")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write into a read-only folder, so the permission cannot be denied; "
                    "test_out_in_a_folder_that_cannot_be_written covers the check by making os.access say no")
@pytest.mark.parametrize("command", ["vector train", "prune weights", "profile"])
def test_out_in_a_read_only_folder(command: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_bad_input(invoke(*COMMANDS[command][0](_output(locked, command))), "permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", ["prune weights", "prune experts"])
def test_out_dot_with_force_is_refused(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    result = invoke(*COMMANDS[command][0]("."), "--force")
    assert_bad_input(result, "current folder", "give a new folder")
    assert (tmp_path / "mine.txt").read_text() == "mine"


def test_builtin_train_onto_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "toy-dense").write_text("a file where the model's folder would go")
    assert_bad_input(invoke("builtin", "train", "toy-dense", "--out", tmp_path), "toy-dense", "is a file")
    assert_bad_input(invoke("builtin", "train", "--out", tmp_path), "toy-dense", "is a file")  # every model
