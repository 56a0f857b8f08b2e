"""``actkit builtin eval``: the model comes through `actkit.load`, so a bad ``--path`` is a clean error."""

from __future__ import annotations

from cli_helpers import assert_bad_input, invoke


def test_eval_path_without_a_model_is_bad_input(tmp_path) -> None:
    assert_bad_input(invoke("builtin", "eval", "toy-dense", "--json", "--path", tmp_path / "missing"), "missing")
    assert_bad_input(invoke("builtin", "eval", "toy-dense", "--json", "--path", tmp_path), "no config.json")


def test_unknown_name_is_bad_input() -> None:
    assert_bad_input(invoke("builtin", "eval", "toy-huge"), "toy-dense")
