"""``actkit builtin train`` and ``eval``: bad input refused before any training or evaluation starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import actkit.builtin.evaluate as evaluate
import actkit.builtin.train as train

from cli_helpers import assert_bad_input, invoke


@pytest.fixture(autouse=True)
def _nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating or training here would be the defect: these inputs must be refused first."""
    def ran(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started before the input was checked")

    monkeypatch.setattr(evaluate, "evaluate", ran)
    monkeypatch.setattr(train, "train", ran)


@pytest.mark.parametrize("n", ["0", "-5"])
def test_eval_needs_a_positive_n(n: str) -> None:
    assert_bad_input(invoke("builtin", "eval", "toy-dense", "--n", n), "--n must be a positive number")


def test_eval_path_must_hold_a_model(tmp_path: Path) -> None:
    assert_bad_input(invoke("builtin", "eval", "toy-dense", "--path", tmp_path / "missing"), "does not exist")
    assert_bad_input(invoke("builtin", "eval", "toy-dense", "--path", tmp_path), "no config.json")
    (tmp_path / "file").write_text("x")
    assert_bad_input(invoke("builtin", "eval", "toy-dense", "--path", tmp_path / "file"), "is a file")
    assert_bad_input(invoke("builtin", "eval", "--path", tmp_path), "--path evaluates one model")


def test_unknown_name() -> None:
    assert_bad_input(invoke("builtin", "eval", "toy-huge"), "no built-in model 'toy-huge'", "toy-dense")
    assert_bad_input(invoke("builtin", "train", "toy-huge"), "no built-in model 'toy-huge'")


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_train_refuses_no_time(minutes: str, tmp_path: Path) -> None:
    result = invoke("builtin", "train", "toy-dense", "--minutes", minutes, "--out", tmp_path / "models")
    assert_bad_input(result, "--minutes must be positive", "random initialisation")
    assert not (tmp_path / "models").exists()


def test_train_warns_when_it_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(recipe: Any, out: Path, **kwargs: Any) -> dict[str, Any]:
        return {"steps_done": 7, "stopped_early": True, "final_train_loss": 8.1, "final_heldout_loss": 8.2,
                "minutes": 0.01}

    monkeypatch.setattr(train, "train", stopped)
    result = invoke("builtin", "train", "toy-dense", "--minutes", "0.01", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    planned = train.RECIPES["toy-dense"]
    total = planned.steps + planned.focus_steps + planned.answer_steps
    assert f"warning: toy-dense stopped at the 0.01-minute cap after 7 of {total} steps" in result.stderr
    assert "toy-dense: 7 steps" in result.stdout
