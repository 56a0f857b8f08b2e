"""``actkit sae vector``: features' decoder rows as a vector file, so an SAE's features are served by ``actkit serve
--vectors`` (a request naming the file steers exactly as ``actkit generate --sae DIR --feature I`` does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_helpers import random_sae

import actkit
from actkit.sae import feature_vector, sae_writes, save_sae
from actkit.serve.steering import VectorRegistry, build_writes, parse_steer
from actkit.steer import load_vector

from cli_helpers import assert_bad_input, invoke

PROMPT = "Tom reviewed the gym:"


@pytest.fixture(scope="module")
def toy():
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory, toy) -> Path:
    out = tmp_path_factory.mktemp("sae") / "toy"
    save_sae(random_sae(toy[0].config.hidden_size, d_sae=32, k=4, site="resid_post.2", model=toy[0]), out)
    return out


def test_the_vector_file_is_the_features_decoder_rows(tmp_path: Path, sae_folder: Path, toy) -> None:
    from actkit.sae import load_sae

    out = tmp_path / "vectors" / "pos.safetensors"
    result = invoke("sae", "vector", sae_folder, "--feature", "3,7", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["features"] == [3, 7] and data["layers"] == [2] and data["relative"] is True
    vector = load_vector(out, toy[0])
    expected = feature_vector(load_sae(sae_folder), [3, 7])
    assert torch.equal(vector.directions[2], expected.directions[2]) and vector.metadata["method"] == "sae-features"
    assert vector.mean_norm(2) == pytest.approx(3.0)  # the SAE's recorded mean norm: relative coefficients work


@pytest.mark.parametrize(("item", "relative"), [({"vector": "pos", "coef": 40.0}, False),
                                                ({"vector": "pos", "coef": 12.0, "relative": True}, True)])
def test_a_served_feature_steers_as_generate_sae_does(tmp_path: Path, sae_folder: Path, toy, item,
                                                      relative) -> None:
    from actkit.sae import load_sae

    model, tokenizer = toy
    assert invoke("sae", "vector", sae_folder, "--feature", "3,7", "--out", tmp_path / "pos.safetensors",
                  "--model", "builtin:toy-dense").exit_code == 0
    registry = VectorRegistry.from_folder(tmp_path, model)
    served = build_writes(registry, parse_steer([item], None))
    direct = sae_writes(load_sae(sae_folder, model), [3, 7], item["coef"], relative=relative)
    ours = actkit.generate_ids(model, tokenizer, [PROMPT], writes=served, max_new_tokens=8)
    assert ours == actkit.generate_ids(model, tokenizer, [PROMPT], writes=direct, max_new_tokens=8)
    assert ours != actkit.generate_ids(model, tokenizer, [PROMPT], max_new_tokens=8)


def test_bad_input(tmp_path: Path, sae_folder: Path) -> None:
    out = tmp_path / "v.safetensors"
    assert_bad_input(invoke("sae", "vector", sae_folder, "--feature", "32", "--out", out), "32")
    assert_bad_input(invoke("sae", "vector", sae_folder, "--feature", "x", "--out", out), "--feature")
    assert_bad_input(invoke("sae", "vector", tmp_path / "none", "--feature", "1", "--out", out), "does not exist")
    assert_bad_input(invoke("sae", "vector", sae_folder, "--feature", "1", "--out", out, "--model",
                            "builtin:toy-moe"), "toy-moe")
    assert invoke("sae", "vector", sae_folder, "--feature", "1", "--out", out).exit_code == 0
    assert_bad_input(invoke("sae", "vector", sae_folder, "--feature", "1", "--out", out), "--force")
    assert invoke("sae", "vector", sae_folder, "--feature", "2", "--out", out, "--force").exit_code == 0
