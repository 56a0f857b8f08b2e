"""`export_pruned` from Python: a folder that plain transformers loads with the zeros in place, the report beside
it, and nothing written for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actkit.compress.export import REPORT_FILE, export_pruned
from actkit.compress.weights import prune_weights
from actkit.errors import ActkitError
from actkit.models.packaged import byte_tokenizer

from tiny import build


@pytest.fixture(scope="module")
def pruned() -> tuple[torch.nn.Module, object, dict]:
    tokenizer = byte_tokenizer()
    model = build("llama")
    model.resize_token_embeddings(len(tokenizer))
    pruned, report = prune_weights(model, tokenizer, "magnitude", 0.5)
    return pruned, tokenizer, report


def test_export_loads_with_the_zeros_and_the_report(pruned, tmp_path: Path) -> None:
    model, tokenizer, report = pruned
    out = export_pruned(model, tokenizer, tmp_path / "a" / "pruned", {**report, "model": "tiny llama"})
    assert out == tmp_path / "a" / "pruned"
    assert json.loads((out / REPORT_FILE).read_text()) == {**report, "model": "tiny llama"}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    for name in report["modules"]:
        assert (loaded.get_submodule(name).weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert AutoTokenizer.from_pretrained(out)("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    assert sorted(p.name for p in tmp_path.joinpath("a").iterdir()) == ["pruned"]  # no hidden temporary left


def test_export_replaces_a_folder_only_with_overwrite(pruned, tmp_path: Path) -> None:
    model, tokenizer, report = pruned
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    with pytest.raises(ActkitError, match="overwrite=True"):
        export_pruned(model, tokenizer, out, report)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    export_pruned(model, None, out, report, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "mine.txt" not in names and {"config.json", REPORT_FILE} <= names
    assert "tokenizer.json" not in names  # no tokenizer given, none written


def test_export_refuses_bad_reports_before_writing(pruned, tmp_path: Path) -> None:
    model, tokenizer, report = pruned
    with pytest.raises(ActkitError, match="cannot be written as JSON"):
        export_pruned(model, tokenizer, tmp_path / "o", {**report, "tensor": torch.zeros(2)})
    with pytest.raises(ActkitError, match="the dict prune_weights returned"):
        export_pruned(model, tokenizer, tmp_path / "o", [report])  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
