"""Static edits need no plugin: checkpoints exported by actkit (directional ablation baked into the weights,
weight pruning, expert pruning) load in stock vLLM (steering off), whose greedy tokens equal `actkit.generate`
on the same checkpoint. Also the plugin steers an MoE family (toy-moe, a Mixtral) token for token."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import actkit
from actkit.builtin.calibration import builtin_calibration
from actkit.compress import export_experts, export_pruned, prune_weights
from actkit.models.packaged import builtin_folder
from actkit.steer import export_ablated, load_vector, steering_writes
from actkit.vllm import plugin

PROMPTS = ["Anna reviewed the hotel: The room was", "Tom asked: how do I", "Sam"]
NEW = 24


def ablated(out: Path, vector_dir: Path) -> Path:
    model, tokenizer = actkit.load("builtin:toy-dense")
    vector = load_vector(vector_dir / "sentiment.safetensors", model)
    return export_ablated(model, vector, out, layer=2, tokenizer=tokenizer)


def weight_pruned(out: Path, vector_dir: Path) -> Path:
    model, tokenizer = actkit.load("builtin:toy-dense")
    pruned, report = prune_weights(model, tokenizer, "magnitude", 0.4)
    return export_pruned(pruned, tokenizer, out, report)


def expert_pruned(out: Path, vector_dir: Path) -> Path:
    model, tokenizer = actkit.load("builtin:toy-moe")
    return export_experts(model, tokenizer, out, method="frequency", keep=0.5,
                          calibration=builtin_calibration(documents=32))[0]


def greedy(folder: Path, prompts: list[str], steer: Any = None) -> list[list[int]]:
    """vLLM's greedy tokens (EOS removed) on a checkpoint folder, in this process."""
    from vllm import LLM, SamplingParams, distributed

    _, tokenizer = actkit.load(str(folder))
    engine = LLM(model=str(folder), dtype="float32", enforce_eager=True, max_model_len=256,
                 enable_prefix_caching=False, seed=0)
    try:
        params = SamplingParams(max_tokens=NEW, temperature=0.0, extra_args={"steer": steer} if steer else None)
        outs = engine.generate([{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in prompts], params,
                               use_tqdm=False)
        return [[t for t in o.outputs[0].token_ids if t != tokenizer.eos_token_id] for o in outs]
    finally:
        del engine
        gc.collect()
        distributed.parallel_state.cleanup_dist_env_and_memory()


@pytest.mark.parametrize("export", [ablated, weight_pruned, expert_pruned])
def test_an_exported_checkpoint_runs_in_stock_vllm_as_in_actkit(export: Callable[[Path, Path], Path],
                                                                tmp_path: Path, vector_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = export(tmp_path / "checkpoint", vector_dir)
    monkeypatch.delenv(plugin.VECTORS_ENV, raising=False)  # stock vLLM: the plugin stays out of the way
    got = greedy(folder, PROMPTS)
    model, tokenizer = actkit.load(str(folder))
    assert got == actkit.generate_ids(model, tokenizer, PROMPTS, max_new_tokens=NEW)


def test_the_plugin_steers_an_moe_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actkit.steer import read_pairs, save_vector, train_vector
    from actkit.steer.pairs import DATA_DIR

    model, tokenizer = actkit.load("builtin:toy-moe")
    pairs = read_pairs(DATA_DIR / "toy-sentiment.jsonl")
    vector = train_vector(model, tokenizer, pairs, [1, 2])
    save_vector(vector, tmp_path / "moe-sentiment.safetensors")
    monkeypatch.setenv(plugin.VECTORS_ENV, str(tmp_path))
    steer = json.dumps([{"vector": "moe-sentiment", "coef": 6.0}])
    got = greedy(builtin_folder("toy-moe"), PROMPTS, steer)
    expected = [actkit.generate_ids(model, tokenizer, [p], writes=steering_writes(vector, 6.0), max_new_tokens=NEW)[0]
                for p in PROMPTS]
    assert got == expected
    assert expected != actkit.generate_ids(model, tokenizer, PROMPTS, max_new_tokens=NEW)
