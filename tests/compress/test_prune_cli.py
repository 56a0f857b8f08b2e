"""``actkit prune weights``: the exported checkpoint loads in plain transformers with the zeros in place, the
report, the table, and bad input as exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import actkit

from cli_helpers import assert_bad_input
from cli_helpers import invoke as run

MODEL = "builtin:toy-dense"


def invoke(*args: str | Path):
    return run("prune", "weights", "--model", MODEL, *args)


def test_export_loads_in_transformers_with_the_zeros(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    result = invoke("--method", "wanda", "--pattern", "2:4", "--calibration-documents", "8", "--eval-documents",
                    "4", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "wanda" and report["pattern"] == "2:4" and report["model"] == MODEL
    assert report["calibration"]["documents"] == 8 and report["calibration"]["source"] == "builtin:train"
    assert report["evaluation"]["documents"] == 4 and report["evaluation"]["perplexity_after"] > 1
    written = json.loads((out / "pruning.json").read_text())
    assert written == {k: v for k, v in report.items() if k != "out"}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for name, info in report["modules"].items():
        w = loaded.get_submodule(name).weight
        assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), name
        assert info["sparsity"] == 0.5
    source, _ = actkit.load(MODEL)
    assert torch.equal(loaded.model.embed_tokens.weight, source.model.embed_tokens.weight)


def test_sparsity_zero_exports_the_same_weights(tmp_path: Path) -> None:
    result = invoke("--method", "magnitude", "--sparsity", "0", "--eval-documents", "0", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "achieved sparsity" in result.stdout and "wrote" in result.stdout
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    source, _ = actkit.load(MODEL)
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_refuses_an_existing_folder_without_force(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_bad_input(invoke("--method", "magnitude", "--sparsity", "0.5", "--out", out), "--force")
    assert (out / "keep.txt").read_text() == "mine"
    result = invoke("--method", "magnitude", "--sparsity", "0.5", "--eval-documents", "0", "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "pruning.json").exists()


@pytest.mark.parametrize("args,needles", [
    (["--sparsity", "1.0"], ["[0, 1)"]),
    (["--sparsity", "-0.2"], ["[0, 1)"]),
    (["--pattern", "4:4"], ["smaller than M"]),
    (["--pattern", "2:4", "--sparsity", "0.6"], ["means sparsity 0.5"]),
    (["--method", "obs", "--sparsity", "0.5"], ["unknown --method 'obs'", "sparsegpt"]),
    (["--pattern", "1:3", "--method", "magnitude"], ["model.layers.0.self_attn.q_proj", "not divisible by M=3"]),
    ([], ["give a sparsity"]),
])
def test_bad_input(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    assert_bad_input(invoke(*args, "--out", tmp_path / "o"), *needles)
    assert not (tmp_path / "o").exists()


def test_calibration_text_too_short(tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("hello\nworld\n")
    assert_bad_input(invoke("--sparsity", "0.5", "--text", text, "--out", tmp_path / "o"), "short.txt",
                     "this method needs at least 64")
    assert_bad_input(invoke("--sparsity", "0.5", "--text", tmp_path / "missing.txt", "--out", tmp_path / "o"),
                     "does not exist")
