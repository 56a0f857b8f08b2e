"""The shared checkpoint writer: atomic, never replaces a folder silently, loads back with from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from actkit.errors import ActkitError
from actkit.models.checkpoint import save_checkpoint

from tiny import build


def test_saves_a_loadable_checkpoint_with_its_report(tmp_path):
    model = build("llama")
    out = save_checkpoint(model, tmp_path / "ckpt", report_name="report.json", report={"method": "none"})
    assert json.loads((out / "report.json").read_text()) == {"method": "none"}
    again = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left behind


def test_refuses_to_replace_a_folder_unless_asked(tmp_path):
    model = build("llama")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "mine.txt").write_text("keep me")
    with pytest.raises(ActkitError, match="--force"):
        save_checkpoint(model, tmp_path / "ckpt", report_name="r.json", report={})
    assert (tmp_path / "ckpt" / "mine.txt").read_text() == "keep me"
    save_checkpoint(model, tmp_path / "ckpt", report_name="r.json", report={}, overwrite=True)
    assert not (tmp_path / "ckpt" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
