"""The shipped toy models: intact files, ordinary Hugging Face folders, and the behaviours the issue promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf

from actkit.builtin import corpus
from actkit.builtin.evaluate import (
    evaluate,
    expert_domain_specialization,
    failures,
    normalized_mutual_information,
)
from actkit.builtin.train import check_sums
from actkit.errors import ActkitError
from actkit.evaluate import name_mover_accuracy
from actkit.models import TOY_MODELS, builtin_folder, load, packaged


@pytest.fixture(scope="module", params=TOY_MODELS)
def loaded(request):
    torch.set_num_threads(2)
    return request.param, *load(f"builtin:{request.param}")


@pytest.mark.parametrize("name", TOY_MODELS)
def test_files_match_recorded_sha256(name: str) -> None:
    assert check_sums(builtin_folder(name)) == []


def test_weights_fit_in_30_mb() -> None:
    total = sum(f.stat().st_size for f in packaged.BUILTIN_WEIGHTS.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, total


@pytest.mark.parametrize("name", TOY_MODELS)
def test_folder_is_an_ordinary_checkpoint(name: str) -> None:
    folder = builtin_folder(name)
    model = tf.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.float32 and tokenizer.pad_token_id is not None
    assert model.config.model_type == {"toy-dense": "llama", "toy-moe": "mixtral"}[name]
    if name == "toy-moe":
        assert model.config.num_local_experts >= 8 and model.config.num_experts_per_tok == 2
    record = json.loads((folder / "training.json").read_text())
    assert {"recipe", "seed", "final_train_loss", "final_heldout_loss", "loss_curve"} <= set(record)
    assert not record["stopped_early"]


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ActkitError, match="toy-dense"):
        builtin_folder("toy-huge")


def test_reduced_evaluation_meets_targets(loaded) -> None:
    name, model, tokenizer = loaded
    metrics = evaluate(model, tokenizer, n=24, moe=False)
    assert failures(metrics) == [], (name, metrics)
    assert metrics["perplexity"] < 4


def test_dense_name_mover_target() -> None:
    model, tokenizer = load("builtin:toy-dense")
    docs = corpus.eval_set("name_mover", 40)
    assert name_mover_accuracy(model, tokenizer, [d.prompt for d in docs], [d.label for d in docs]) >= 0.9


def test_experts_specialise_by_domain(loaded) -> None:
    name, model, tokenizer = loaded
    if name != "toy-moe":
        pytest.skip("dense model")
    scores = expert_domain_specialization(model, tokenizer, n_per_domain=10, per_layer=True)
    assert isinstance(scores, list) and len(scores) == model.config.num_hidden_layers
    assert all(0 <= s <= 1 for s in scores) and sum(scores) > 0  # weak so far: about 0.05 (see the README)


def test_normalized_mutual_information_extremes() -> None:
    assert normalized_mutual_information(np.eye(3) * 5) == pytest.approx(1.0)
    assert normalized_mutual_information(np.ones((3, 4))) == pytest.approx(0.0)
