"""The training recipe: a few steps reduce the loss, the same seed gives the same curve, folders load back."""

from __future__ import annotations

import json

import torch
import transformers as tf

from actkit.builtin.train import RECIPES, check_sums, pack, tiny_recipe, train


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


def test_moe_recipe_trains() -> None:
    record = train(tiny_recipe("mixtral", steps=10))
    assert record["_model"].config.model_type == "mixtral" and record["final_heldout_loss"] < 6.5


def test_shipped_recipes_fit_the_budget() -> None:
    assert RECIPES["toy-moe"].model["num_local_experts"] >= 8 and RECIPES["toy-moe"].model["num_experts_per_tok"] == 2
    assert RECIPES["toy-dense"].arch == "llama" and RECIPES["toy-moe"].arch == "mixtral"
