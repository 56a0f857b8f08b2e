"""The training recipe: a few steps reduce the loss, the same seed gives the same curve, folders load back."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import transformers as tf

from actkit.builtin import corpus
from actkit.builtin.train import (
    RECIPES,
    Recipe,
    answer_batches,
    build_tokenizer,
    check_sums,
    pack,
    train,
)
from actkit.errors import ActkitError


def tiny_recipe(arch: str = "llama", steps: int = 20) -> Recipe:
    """A recipe small enough for tests: a couple of seconds on one core."""
    model = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=64, max_position_embeddings=64)
    if arch == "mixtral":
        model.update(num_local_experts=4, num_experts_per_tok=2)
    return replace(RECIPES["toy-dense"], name=f"tiny-{arch}", arch=arch, model=model, tokenizer_docs=1000,
                   vocab_size=400, seq_len=64, batch_size=8, steps=steps, lr=3e-3, warmup=5, log_every=5,
                   eval_docs=40, threads=1, focus_steps=0, answer_steps=0)


def test_pack_keeps_documents_whole_and_masks_padding() -> None:
    x, y = pack([[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 9, 9, 2]], seq_len=8, pad_id=0)
    assert x.tolist() == [[1, 5, 6, 2, 1, 7, 2, 0], [1, 8, 9, 9, 9, 2, 0, 0]]
    assert y.tolist() == [[1, 5, 6, 2, 1, 7, 2, -100], [1, 8, 9, 9, 9, 2, -100, -100]]


def test_few_steps_reduce_loss_and_are_reproducible(tmp_path) -> None:
    first = train(tiny_recipe("llama", steps=20), out=tmp_path / "tiny")
    curve = [p["loss"] for p in first["loss_curve"]]
    assert curve[-1] < curve[0] - 0.3
    again = train(tiny_recipe("llama", steps=20))
    assert [p["loss"] for p in again["loss_curve"]] == curve
    folder = tmp_path / "tiny"
    assert check_sums(folder) == []
    record = json.loads((folder / "training.json").read_text())
    assert record["seed"] == 0 and record["loss_curve"] == first["loss_curve"]
    model = tf.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.float32
    ids = tokenizer(["When Anna and Tom went to the shop"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, first["_model"](ids).logits, atol=1e-4, rtol=1e-4)


def test_dense_weights_do_not_depend_on_the_thread_count() -> None:
    """Why toy-dense's recipe may train on two threads and still reproduce the shipped weights bit for bit."""
    one = train(replace(tiny_recipe("llama", steps=8), threads=1))["_model"].state_dict()
    two = train(replace(tiny_recipe("llama", steps=8), threads=2))["_model"].state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_moe_recipe_trains() -> None:
    record = train(tiny_recipe("mixtral", steps=10))
    assert record["_model"].config.model_type == "mixtral" and record["final_heldout_loss"] < 6.5


def test_shipped_recipes_fit_the_budget() -> None:
    assert RECIPES["toy-moe"].model["num_local_experts"] >= 8 and RECIPES["toy-moe"].model["num_experts_per_tok"] == 2
    assert RECIPES["toy-dense"].arch == "llama" and RECIPES["toy-moe"].arch == "mixtral"


def test_answer_batches_weigh_exactly_the_name_mover_answers() -> None:
    recipe = replace(tiny_recipe("llama"), seq_len=128, answer_docs=16, answer_share=0.5, answer_weight=5.0)
    tokenizer = build_tokenizer(recipe)
    ids, mask, weights = next(answer_batches(recipe, tokenizer, 1, seed=3))
    again = next(answer_batches(recipe, tokenizer, 1, seed=3))
    assert torch.equal(ids, again[0]) and torch.equal(weights, again[2])
    heavy = (weights == 5.0).nonzero().tolist()
    assert 2 <= len(heavy) <= 14  # about half the rows are name-mover sentences, one answer each
    for row, col in heavy:
        # the weighted target is the first token of the answer: what follows "... to" is " Name."
        rest = tokenizer.decode(ids[row, col + 1:], skip_special_tokens=True)
        assert rest.rstrip(".").strip() in corpus.NAMES and rest.startswith(" ")
        assert tokenizer.decode(ids[row, : col + 1]).endswith(" to")
    assert set(weights[mask[:, 1:] == 0].tolist()) <= {0.0}


def test_the_name_mover_stage_continues_a_stage_two_folder(tmp_path) -> None:
    base = replace(tiny_recipe("llama", steps=6), log_every=2)
    train(base, out=tmp_path / "stage2")
    staged = replace(base, answer_steps=4, answer_docs=4)
    record = train(staged, out=tmp_path / "stage3", resume=tmp_path / "stage2")
    assert record["steps_done"] == 10 and record["resumed_from"]["steps_done"] == 6
    assert [p["step"] for p in record["loss_curve"]][-2:] == [8, 10]
    with pytest.raises(ActkitError, match="stages 1-2"):
        train(replace(staged, steps=7), resume=tmp_path / "stage2")
