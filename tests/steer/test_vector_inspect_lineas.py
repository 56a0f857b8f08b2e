"""``actkit vector inspect`` on LinEAS files (method, model, sites, rank, the fraction of coordinates the maps
change, the norms) and on SAE folders (a clear pointer to ``actkit sae features``)."""

from __future__ import annotations

import json

import pytest
import torch

import actkit
from actkit.sae import SparseAutoencoder, save_sae

from cli_helpers import assert_bad_input, invoke
from lineas_helpers import LAYERS, RANK, save_toy_lineas


@pytest.fixture(scope="module")
def toy():
    return actkit.load("builtin:toy-dense")


def test_inspect_describes_a_lineas_file(tmp_path, toy) -> None:
    model, _ = toy
    path = tmp_path / "tone.safetensors"
    lineas = save_toy_lineas(model, path)
    d = model.config.hidden_size
    result = invoke("vector", "inspect", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "lineas" and data["model"] == "builtin:toy-dense"
    assert data["sites"] == [f"resid_post.{layer}" for layer in LAYERS] and data["rank"] == RANK
    assert data["hidden_size"] == d and data["active_fraction"] == 0.5  # the helper changes half the coordinates
    for block in data["blocks"]:
        parts = lineas.maps[block["layer"]]
        assert block["active"] == d // 2 and block["active_fraction"] == 0.5
        assert block["shift_norm"] == pytest.approx(float(parts["shift"].norm()))
        assert block["scale_norm"] == pytest.approx(float(parts["scale"].norm()))
    assert [b["rank"] for b in data["blocks"]] == [0, RANK]
    text = invoke("vector", "inspect", path, "--model", "builtin:toy-dense")
    assert text.exit_code == 0, text.output
    for needle in ("lineas", "toy-dense", "resid_post.1", "resid_post.3", f"{d // 2}/{d}", "50.0%", "rank 2"):
        assert needle in text.stdout, text.stdout
    assert_bad_input(invoke("vector", "inspect", path, "--model", "builtin:toy-moe"), "hidden size")


def test_inspect_counts_coordinates_whose_map_is_the_identity(tmp_path, toy) -> None:
    from actkit.steer.lineas import LinEAS, save_lineas
    from actkit.steer.vectors import model_metadata

    model, _ = toy
    d = model.config.hidden_size
    shift = torch.zeros(d)
    shift[:3] = 1.0
    scale = torch.zeros(d)
    scale[2:5] = 0.5  # overlaps the shift at coordinate 2: 5 coordinates change
    save_lineas(LinEAS({2: {"scale": scale, "shift": shift}}, metadata=model_metadata(model)),
                tmp_path / "s.safetensors")
    data = json.loads(invoke("vector", "inspect", tmp_path / "s.safetensors", "--json").stdout)
    assert data["blocks"][0]["active"] == 5 and data["active_fraction"] == 5 / d and data["rank"] == 0
    assert data["blocks"][0]["shift_norm"] == pytest.approx(3 ** 0.5)


def test_inspect_points_sae_folders_to_sae_features(tmp_path, toy) -> None:
    model, _ = toy
    d, n = model.config.hidden_size, 16
    folder = tmp_path / "sae"
    save_sae(SparseAutoencoder(torch.randn(d, n), torch.zeros(n), torch.randn(n, d), torch.zeros(d),
                               site="resid_post.2", k=4), folder)
    for path in (folder, folder / "sae_weights.safetensors"):
        assert_bad_input(invoke("vector", "inspect", path), "sparse autoencoder", "actkit sae features")
