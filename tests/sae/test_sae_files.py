"""SAELens folders: a round trip, SAEs written by SAELens (both layouts), and SAEs that do not fit the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_helpers import random_sae
from safetensors import safe_open
from safetensors.torch import save_file

from actkit.errors import ActkitError
from actkit.sae import load_sae, save_sae

from tiny import HIDDEN, build


def test_round_trip_with_saelens_names(tmp_path: Path) -> None:
    model = build("llama")
    sae = random_sae(HIDDEN, d_sae=40, k=6, site="resid_post.2", model=model)
    save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 6
    assert (cfg["d_in"], cfg["d_sae"]) == (HIDDEN, 40)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and cfg["metadata"]["hook_layer"] == 2
    assert cfg["metadata"]["actkit"]["site"] == "resid_post.2"
    with safe_open(str(tmp_path / "sae" / "sae_weights.safetensors"), framework="pt") as handle:
        shapes = {key: tuple(handle.get_tensor(key).shape) for key in handle.keys()}  # noqa: SIM118
    assert shapes == {"W_enc": (HIDDEN, 40), "b_enc": (40,), "W_dec": (40, HIDDEN), "b_dec": (HIDDEN,)}
    back = load_sae(tmp_path / "sae", model)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    assert (back.site, back.k, back.architecture) == ("resid_post.2", 6, "topk")
    x = torch.randn(5, HIDDEN)
    assert torch.equal(back.encode(x), sae.encode(x))
    with pytest.raises(ActkitError, match="--force"):
        save_sae(sae, tmp_path / "sae")


def _saelens_folder(folder: Path, cfg: dict, d_in: int, d_sae: int, threshold: bool = False) -> Path:
    g = torch.Generator().manual_seed(5)
    folder.mkdir()
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.zeros(d_in)}
    if threshold:
        tensors["threshold"] = torch.full((d_sae,), 0.5)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def test_saes_written_by_saelens_load(tmp_path: Path) -> None:
    model = build("llama")
    v6 = {"architecture": "topk", "d_in": HIDDEN, "d_sae": 24, "k": 4, "dtype": "float32", "device": "cpu",
          "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
          "metadata": {"model_name": "tiny", "hook_name": "blocks.1.hook_mlp_out", "sae_lens_version": "6.5.0"}}
    sae = load_sae(_saelens_folder(tmp_path / "v6", v6, HIDDEN, 24), model)
    assert (sae.site, sae.k, sae.apply_b_dec_to_input) == ("mlp_out.1", 4, False)
    old = {"d_in": HIDDEN, "d_sae": 24, "hook_point": "blocks.0.hook_resid_pre", "model_name": "tiny",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "normalize_activations": False}
    sae = load_sae(_saelens_folder(tmp_path / "old", old, HIDDEN, 24), model)
    assert (sae.site, sae.k, sae.architecture) == ("resid_pre.0", 3, "topk")
    assert bool(((sae.encode(torch.randn(6, HIDDEN)) != 0).sum(-1) <= 3).all())
    jump = {"architecture": "jumprelu", "d_in": HIDDEN, "d_sae": 24, "hook_name": "blocks.2.hook_resid_post"}
    sae = load_sae(_saelens_folder(tmp_path / "jump", jump, HIDDEN, 24, threshold=True), model)
    pre = sae.pre_acts(x := torch.randn(3, HIDDEN))
    assert torch.equal(sae.encode(x), pre * (pre > 0.5))


def test_an_sae_for_another_hidden_size_is_refused(tmp_path: Path) -> None:
    model = build("llama")
    save_sae(random_sae(32, site="resid_post.1"), tmp_path / "small")
    with pytest.raises(ActkitError, match=r"size 32 at resid_post.1.*size 64 there"):
        load_sae(tmp_path / "small", model)


def test_a_site_the_model_lacks_is_refused(tmp_path: Path) -> None:
    save_sae(random_sae(HIDDEN, site="resid_post.7"), tmp_path / "deep")
    with pytest.raises(ActkitError, match="resid_post.7"):
        load_sae(tmp_path / "deep", build("llama"))


@pytest.mark.parametrize(("change", "message"), [
    ({"k": 30}, "larger than the dictionary"),
    ({"architecture": "gated"}, "not supported"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations"),
    ({"d_in": 0}, "positive integer"),
    ({"metadata": {}}, "no hook_name"),
])
def test_bad_config_fields_are_named(tmp_path: Path, change: dict, message: str) -> None:
    cfg = {"architecture": "topk", "d_in": HIDDEN, "d_sae": 24, "k": 4,
           "metadata": {"hook_name": "blocks.1.hook_resid_post"}, **change}
    with pytest.raises(ActkitError, match=message):
        load_sae(_saelens_folder(tmp_path / "bad", cfg, HIDDEN, 24))


def test_a_folder_without_cfg_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ActkitError, match="no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(ActkitError, match="does not exist"):
        load_sae(tmp_path / "nothing")


def test_an_sae_for_another_configuration_of_the_same_size_warns(tmp_path: Path) -> None:
    small, other = build("llama"), build("llama")
    other.config.num_hidden_layers = 5  # same hidden size, recorded as another model
    save_sae(random_sae(HIDDEN, model=other), tmp_path / "other")
    with pytest.warns(UserWarning, match="num_hidden_layers: 5 in the SAE, 3 in the model"):
        load_sae(tmp_path / "other", small)
