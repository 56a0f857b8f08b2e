"""``actkit fv`` and ``actkit generate --dynamic / --backtrack`` on the built-in model: JSON, the vector file, and
bad input (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_bad_input, invoke

pytestmark = pytest.mark.usefixtures("cached_load")


def _task(tmp_path: Path) -> Path:
    names = ["Anna", "Tom", "Lisa", "Mark", "John", "Mary", "Sarah", "David", "Emma", "James", "Kate", "Paul"]
    path = tmp_path / "copy.jsonl"
    path.write_text("".join(json.dumps({"input": n, "output": n}) + "\n" for n in names))
    return path


def test_fv_json_and_vector_file(tmp_path: Path) -> None:
    out = tmp_path / "fv.safetensors"
    result = invoke("fv", "--task", _task(tmp_path), "--shots", "2", "--prompts", "2", "--top", "2", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layer"] == 1 and len(data["heads"]) == 2 and data["test"] == 6
    assert 0.0 <= data["zero_shot_fv"] <= 1.0 and data["icl"] is not None
    shown = invoke("vector", "inspect", out, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["layers"] == [1]
    again = invoke("fv", "--task", _task(tmp_path), "--shots", "2", "--prompts", "2", "--top", "2", "--out", out)
    assert_bad_input(again, "exists")


def test_fv_bad_input(tmp_path: Path) -> None:
    assert_bad_input(invoke("fv", "--task", "synonyms"), "neither a shipped task")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\n')
    assert_bad_input(invoke("fv", "--task", bad), "bad.jsonl:1")
    assert_bad_input(invoke("fv", "--task", _task(tmp_path), "--shots", "2", "--top", "99"), "top must lie in 1..16")


def test_generate_dynamic_and_backtrack(tmp_path: Path) -> None:
    vector = tmp_path / "s.safetensors"
    assert invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--layers", "1", "--out", vector,
                  "--json").exit_code == 0
    prompts = ["-p", "Anna reviewed the hotel, 1 stars:", "-p", "Tom reviewed the cafe:"]
    dynamic = invoke("generate", *prompts, "--dynamic", vector, "--coef", "0.8", "--relative", "-n", "4", "--json")
    assert dynamic.exit_code == 0, dynamic.output
    rows = [json.loads(line) for line in dynamic.stdout.splitlines()]
    assert len(rows) == 2 and all(r["alphas"] and all(len(a) == 1 and 0 <= a[0] <= 0.8 + 1e-6 for a in r["alphas"])
                                  for r in rows)
    back = invoke("generate", *prompts, "--vector", vector, "--coef", "0.8", "--relative", "--backtrack",
                  "1:below:1e9:2", "-n", "4", "--json")
    assert back.exit_code == 0, back.output
    assert [json.loads(line)["backtracks"] for line in back.stdout.splitlines()] == [1, 1]
    assert_bad_input(invoke("generate", "-p", "x", "--backtrack", "1:below:0"), "needs --vector")
    assert_bad_input(invoke("generate", "-p", "x", "--vector", vector, "--backtrack", "1:up:0"),
                     "LAYER:above|below")
    assert_bad_input(invoke("generate", "-p", "x", "--vector", vector, "--backtrack", "3:below:0"),
                     "no direction at block 3")
