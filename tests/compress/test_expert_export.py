"""Sliced checkpoints: round trips per family, unrouted experts pruned without effect, merging, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf

from actkit.compress.calibration import Calibration
from actkit.compress.experts import (
    REPORT_FILE,
    expert_stats,
    export_experts,
    merged_parameters,
    moe_layers,
    score_experts,
    slice_experts,
)
from actkit.errors import ActkitError

from tiny import MOE, CharTokenizer, build, tokens

TEXTS = ["the quick brown fox jumps over the lazy dog", "a second line of calibration text, longer than 64",
         "and a third one"]
CALIBRATION = Calibration(TEXTS, "test", 0)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", MOE)
def test_export_round_trip(family: str, tmp_path: Path) -> None:
    model = build(family)
    before = _state(model)
    folder, report = export_experts(model, CharTokenizer(), tmp_path / "out", method="reap", keep=0.75,
                                    calibration=CALIBRATION, model_name=f"tiny-{family}")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the source is untouched
    loaded = tf.AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, no actkit code
    assert type(loaded) is type(model)
    text = loaded.config.get_text_config()
    assert getattr(text, "num_experts", None) == 3 or getattr(text, "num_local_experts", None) == 3
    kept = {row["layer"]: row["kept"] for row in report["layers"]}
    assert all(len(v) == 3 for v in kept.values())
    pruned_state = loaded.state_dict()
    for moe in moe_layers(model):
        block = f"model.layers.{moe.layer}.mlp."
        index = torch.tensor(kept[moe.layer])
        for name in ("experts.gate_up_proj", "experts.down_proj", "gate.weight"):
            assert torch.equal(pruned_state[block + name], before[block + name][index]), name
    for name, value in before.items():  # everything without an expert dimension is carried over as it is
        if ".experts." not in name and not name.endswith("mlp.gate.weight"):
            assert torch.equal(pruned_state[name], value), name
    loaded.config._attn_implementation = "eager"
    in_memory = slice_experts(model, kept)
    ids = tokens()
    torch.testing.assert_close(_logits(loaded, ids), _logits(in_memory, ids), rtol=1e-5, atol=1e-5)
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["model"] == f"tiny-{family}" and saved["experts_before"] == 4 and saved["experts_after"] == 3
    assert saved["calibration"]["tokens"] == sum(len(t) for t in TEXTS)
    assert saved["parameters_after"] < saved["parameters_before"]


def _starve(model, expert: int) -> None:
    """Make `expert` unreachable: a large constant embedding channel that only its router rows read, negatively."""
    channel = 5
    with torch.no_grad():
        model.get_input_embeddings().weight[:, channel] += 50.0
        for moe in moe_layers(model):
            moe.router.weight[:, channel] = 0.0
            moe.router.weight[expert].zero_()
            moe.router.weight[expert, channel] = -50.0


@pytest.mark.parametrize("family", MOE)
def test_pruning_experts_that_receive_no_tokens_leaves_logits_unchanged(family: str) -> None:
    model = build(family)
    _starve(model, 1)
    stats = expert_stats(model, CharTokenizer(), TEXTS)
    assert bool((stats.routed[:, 1] == 0).all()) and bool((stats.routed.sum(1) > 0).all())
    assert bool((score_experts(stats, "reap")[:, 1] == 0).all())
    ids = tokens(3, 9)
    base = _logits(model, ids)
    unchanged = (_logits(slice_experts(model, {layer: [0, 2, 3] for layer in stats.layers}), ids) - base).abs().max()
    changed = (_logits(slice_experts(model, {layer: [1, 2, 3] for layer in stats.layers}), ids) - base).abs().max()
    assert float(unchanged) < 1e-6
    assert float(changed) > 1e-4  # dropping an expert that does receive tokens does change the logits


def test_merging_an_expert_with_its_permuted_copy_gives_it_back() -> None:
    model = build("mixtral")
    experts = moe_layers(model)[0].experts
    perm = torch.randperm(experts.down_proj.shape[-1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gate, up = experts.gate_up_proj[0].chunk(2, dim=0)
        experts.gate_up_proj[1] = torch.cat([gate[perm], up[perm]])
        experts.down_proj[1] = experts.down_proj[0][:, perm]
    merged = merged_parameters(experts, [(0, 0.3), (1, 0.7)])
    torch.testing.assert_close(merged["gate_up_proj"], experts.gate_up_proj[0].detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(merged["down_proj"], experts.down_proj[0].detach(), rtol=1e-6, atol=1e-6)
    plain = merged_parameters(experts, [(0, 0.3), (1, 0.7)], align=False)
    expected = 0.3 * experts.gate_up_proj[0] + 0.7 * experts.gate_up_proj[1]
    torch.testing.assert_close(plain["gate_up_proj"], expected.detach())


def test_merge_export_loads_and_uses_the_merged_weights(tmp_path: Path) -> None:
    model = build("olmoe")
    folder, report = export_experts(model, CharTokenizer(), tmp_path / "m", method="merge", keep=0.5,
                                    calibration=CALIBRATION)
    loaded = tf.AutoModelForCausalLM.from_pretrained(folder)
    layer = report["layers"][0]
    assert len(layer["groups"]) == 2 and sorted(sum((g["members"] for g in layer["groups"]), [])) == [0, 1, 2, 3]
    group = [(e, w) for e, w in zip(layer["groups"][0]["members"], layer["groups"][0]["weights"], strict=True)]
    expected = merged_parameters(moe_layers(model)[0].experts, group)
    torch.testing.assert_close(loaded.model.layers[0].mlp.experts.gate_up_proj[0].detach(), expected["gate_up_proj"],
                               rtol=1e-5, atol=1e-5)


def test_export_refuses_an_existing_folder_and_bad_plans(tmp_path: Path) -> None:
    model = build("mixtral")
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ActkitError, match="--force"):
        export_experts(model, CharTokenizer(), out, calibration=CALIBRATION)
    assert (out / "keep.txt").read_text() == "mine"
    export_experts(model, CharTokenizer(), out, calibration=CALIBRATION, overwrite=True, keep=2)
    assert not (out / "keep.txt").exists() and (out / REPORT_FILE).exists()
    with pytest.raises(ActkitError, match="same number"):
        slice_experts(model, {0: [0, 1], 1: [0, 1, 2], 2: [0, 1]})
    with pytest.raises(ActkitError, match="no kept experts"):
        slice_experts(model, {0: [0, 1]})
    with pytest.raises(ActkitError, match="distinct"):
        slice_experts(model, {0: [0, 0], 1: [0, 1], 2: [0, 1]})
    with pytest.raises(ActkitError, match="fewer than the router's top-k"):
        slice_experts(model, {0: [0], 1: [0], 2: [0]})
    with pytest.raises(ActkitError, match="only 4"):
        export_experts(model, CharTokenizer(), tmp_path / "x", calibration=CALIBRATION, keep=5)
    with pytest.raises(ActkitError, match="unknown method"):
        export_experts(model, CharTokenizer(), tmp_path / "x", calibration=CALIBRATION, method="magnitude")
    with pytest.raises(ActkitError, match="needs at least 64"):
        export_experts(model, CharTokenizer(), tmp_path / "x", calibration=Calibration(["short"], "tiny.txt", 0))
    assert not (tmp_path / "x").exists()
