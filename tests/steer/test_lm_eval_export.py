"""``actkit vector export --format lm-eval``: the file lm-eval's ``steered`` model reads, and its meaning.

The main test runs lm-evaluation-harness in process (``simple_evaluate`` with ``model="steered"``) on a two-choice
task the test writes to a temporary folder (nothing is downloaded), with toy-dense's Hugging Face folder as
``pretrained`` and the exported file as ``steer_path``; every log-likelihood lm-eval reports must equal a plain
forward of the model under actkit's own writes for the same vector and coefficient (`steering_writes` under `tap`)
within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from actkit import load, tap
from actkit.errors import ActkitError
from actkit.models import builtin_folder
from actkit.steer import SteeringVector, read_pairs, save_vector, steering_writes, train_vector
from actkit.steer.lm_eval_export import export_lm_eval, lm_eval_hookpoints, lm_eval_steering
from actkit.steer.pairs import DATA_DIR

from cli_helpers import assert_bad_input, invoke
from lm_eval_helpers import run_task, write_task
from tiny import build

COEF = 0.8
@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return load("builtin:toy-dense")


@pytest.fixture(scope="module")
def vector(toy: tuple[Any, Any]) -> SteeringVector:
    model, tokenizer = toy
    return train_vector(model, tokenizer, read_pairs(DATA_DIR / "toy-sentiment.jsonl"), [1, 3])


def _reference(model: Any, tokenizer: Any, context: str, continuation: str, writes: Any) -> float:
    """The continuation's log-likelihood from one forward under `writes`, tokenized as lm-eval's HF model does
    with ``add_bos_token=True``: BOS + the whole text, the continuation being the tokens after the context's."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tokenizer.bos_token_id, *whole]])
    n = len(whole) - len(ctx)
    with torch.inference_mode(), tap(model, write=writes):
        logits = model(input_ids=ids).logits.double()
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(logprobs[-n:].sum())


def test_lm_eval_steered_loglikelihoods_equal_actkits(toy: tuple[Any, Any], vector: SteeringVector,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lm_eval")
    model, tokenizer = toy
    steer_path = export_lm_eval(vector, tmp_path / "v.pt", COEF, relative=True, model=model)
    args = {"pretrained": str(builtin_folder("toy-dense")), "steer_path": str(steer_path), "device": "cpu",
            "dtype": "float32", "add_bos_token": True, "batch_size": 1}
    samples = run_task("steered", args, write_task(tmp_path), monkeypatch)
    writes = steering_writes(vector, COEF, relative=True)
    moved = 0.0
    for sample in samples:
        doc = sample["doc"]
        got = [float(resp[0][0]) for resp in sample["resps"]]
        want = [_reference(model, tokenizer, doc["prompt"], c, writes) for c in doc["choices"]]
        assert got == pytest.approx(want, abs=1e-4), doc["prompt"]
        plain = [_reference(model, tokenizer, doc["prompt"], c, None) for c in doc["choices"]]
        moved = max(moved, *(abs(a - b) for a, b in zip(got, plain, strict=True)))
    assert moved > 1e-2  # the file really steered lm-eval's model


def test_file_holds_plain_data_with_the_relative_coefficient_baked_in(vector: SteeringVector,
                                                                      tmp_path: Path) -> None:
    path = export_lm_eval(vector, tmp_path / "v.pt", 0.5, relative=True)
    config = torch.load(path, weights_only=True)  # plain tensors, floats and strings: no pickled objects
    assert sorted(config) == ["layers.1", "layers.3"]
    for layer in (1, 3):
        item = config[f"layers.{layer}"]
        assert set(item) == {"steering_vector", "steering_coefficient", "action"}
        assert item["action"] == "add" and item["steering_coefficient"] == 0.5
        v = vector.directions[layer]
        assert torch.allclose(item["steering_vector"], v * vector.mean_norm(layer) / v.norm(), atol=1e-6)
    absolute = lm_eval_steering(vector, 2.0)
    assert torch.equal(absolute["layers.3"]["steering_vector"], vector.directions[3])
    assert absolute["layers.3"]["steering_coefficient"] == 2.0
    with pytest.raises(ActkitError, match="exists"):
        export_lm_eval(vector, path)


def test_hookpoints_from_the_table_match_the_models_module_names(toy: tuple[Any, Any],
                                                                 vector: SteeringVector) -> None:
    assert lm_eval_hookpoints(vector) == lm_eval_hookpoints(vector, toy[0]) == {1: "layers.1", 3: "layers.3"}
    gpt2 = build("gpt2")
    d = gpt2.config.hidden_size
    meta = {"config": {"model_type": "gpt2"}}
    at_blocks = SteeringVector({1: torch.ones(d)}, metadata=meta)
    assert lm_eval_hookpoints(at_blocks) == lm_eval_hookpoints(at_blocks, gpt2) == {1: "h.1"}
    at_mlp = SteeringVector({0: torch.ones(d)}, site="mlp_out", metadata=meta)
    assert lm_eval_hookpoints(at_mlp) == lm_eval_hookpoints(at_mlp, gpt2) == {0: "h.0.mlp"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"positions": "generated"}, "every token"),
    ({"coef": float("nan")}, "finite"),
    ({"layers": [2]}, "no direction at block"),
])
def test_what_lm_eval_cannot_express_is_refused(vector: SteeringVector, kwargs: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(ActkitError, match=message):
        lm_eval_steering(vector, **kwargs)


def test_input_sites_unknown_models_and_suffixes_are_refused(vector: SteeringVector, tmp_path: Path) -> None:
    d = vector.hidden_size
    with pytest.raises(ActkitError, match="not the output of a module"):
        lm_eval_hookpoints(SteeringVector({1: torch.ones(d)}, site="resid_pre", metadata=vector.metadata))
    with pytest.raises(ActkitError, match="--model"):
        lm_eval_hookpoints(SteeringVector({1: torch.ones(d)}, metadata={"config": {"model_type": "unheard-of"}}))
    with pytest.raises(ActkitError, match=r"\.pt or \.pth"):
        export_lm_eval(vector, tmp_path / "v.safetensors")
    assert not (tmp_path / "v.safetensors").exists()


def test_cli_export_lm_eval(vector: SteeringVector, tmp_path: Path) -> None:
    source = save_vector(vector, tmp_path / "v.safetensors")
    result = invoke("vector", "export", "--format", "lm-eval", str(source), "--out", str(tmp_path / "v.pt"),
                     "--coef", "3", "--model", "builtin:toy-dense", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == "lm-eval"
    config = torch.load(tmp_path / "v.pt", weights_only=True)
    assert config["layers.3"]["steering_coefficient"] == 3.0
    again = invoke("vector", "export", "--format", "lm-eval", str(source), "--out", str(tmp_path / "v.pt"))
    assert_bad_input(again, "--force")
    bad = invoke("vector", "export", "--format", "lm-eval", str(source), "--out", str(tmp_path / "w.bin"))
    assert_bad_input(bad, ".pt or .pth")
    assert not (tmp_path / "w.bin").exists()
