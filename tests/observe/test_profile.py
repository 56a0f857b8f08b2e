"""The profile against independent computations: hand-placed forward hooks, one document at a time, and numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import actkit
from actkit import ActkitError
from actkit.observe import default_texts, profile, write_profile
from actkit.observe.profile import run_reducers

from observe_helpers import CONTEXT, ByteTokenizer, blocks, capture, texts
from tiny import CONFIGS, MOE, build

OLD_KEYS = {"index", "resid_norm_mean", "resid_norm_p50", "resid_norm_p99", "resid_norm_max"}
LAYER_KEYS = OLD_KEYS | {f"{kind}_norm_{k}" for kind in ("attn_out", "mlp_out") for k in ("mean", "p50", "p99", "max")} | {
    "magnitude", "signal", "sparsity", "attn_logit_max", "router"}
TOP_KEYS = {"model", "tokens", "documents", "family", "hidden_size", "settings", "layers", "massive", "logits",
            "unavailable"}


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=-1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("family", ["llama", "mixtral", "bert"])
def test_profile_matches_independent_norms(family: str) -> None:
    model = build(family)
    docs = texts()
    assert len(ByteTokenizer()(docs[-1])["input_ids"]) > CONTEXT
    result = profile(model, ByteTokenizer(), docs, batch_size=3, model_name="tiny")
    layers = blocks(model)
    if family == "bert":
        points = {f"attn{i}": (b.attention.output.dense, "output") for i, b in enumerate(layers)}
        points |= {f"mlp{i}": (b.output.dense, "output") for i, b in enumerate(layers)}
    else:
        points = {f"attn{i}": (b.self_attn, "output") for i, b in enumerate(layers)}
        points |= {f"mlp{i}": (b.mlp, "output") for i, b in enumerate(layers)}
    points |= {f"resid{i}": (b, "output") for i, b in enumerate(layers)}
    count, got = capture(model, docs, points)

    assert set(result) == TOP_KEYS
    assert result["model"] == "tiny" and result["tokens"] == count and result["documents"] == len(docs)
    assert [layer["index"] for layer in result["layers"]] == list(range(len(layers)))
    for i, layer in enumerate(result["layers"]):
        assert set(layer) == LAYER_KEYS
        for kind, name in (("resid", "resid_norm"), ("attn", "attn_out_norm"), ("mlp", "mlp_out_norm")):
            expected = _norms(got[f"{kind}{i}"])
            assert layer[f"{name}_mean"] == pytest.approx(expected.mean(), rel=1e-5)
            assert layer[f"{name}_max"] == pytest.approx(expected.max(), rel=1e-5)
            assert layer[f"{name}_p50"] == pytest.approx(np.quantile(expected, 0.5), rel=2e-3)
            assert layer[f"{name}_p99"] == pytest.approx(np.quantile(expected, 0.99), rel=2e-3)
    json.dumps(result, allow_nan=False)  # plain Python values


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_magnitude_signal_sparsity_and_log_z_match_numpy(family: str) -> None:
    model = build(family)
    docs = texts()
    eps = 0.05  # large enough that some entries of a random model fall under it
    result = profile(model, ByteTokenizer(), docs, batch_size=2, sparsity_eps=eps)
    layers = blocks(model)
    hidden = {"llama": lambda b: b.mlp.down_proj, "gpt2": lambda b: b.mlp.c_proj, "bert": lambda b: b.output.dense}
    points = {f"resid{i}": (b, "output") for i, b in enumerate(layers)}
    points |= {f"hidden{i}": (hidden[family](b), "input") for i, b in enumerate(layers)}
    points["logits"] = (model.get_output_embeddings(), "output")
    _, got = capture(model, docs, points)

    for i, layer in enumerate(result["layers"]):
        x = got[f"resid{i}"]
        mags = np.sort(np.abs(x).ravel())[::-1]
        assert layer["magnitude"]["median"] == pytest.approx(np.median(mags), rel=2e-3)
        assert layer["magnitude"]["max"] == pytest.approx(mags[0], rel=1e-6)
        assert layer["magnitude"]["top"] == pytest.approx(mags[:3], rel=1e-6)
        assert layer["signal"]["channel_mean_sq"] == pytest.approx((x.mean(axis=0) ** 2).mean(), rel=1e-6)
        assert layer["signal"]["channel_var"] == pytest.approx(x.var(axis=0).mean(), rel=1e-6)

        h = got[f"hidden{i}"]
        rms = np.sqrt((h**2).mean(axis=1, keepdims=True))
        active = np.abs(h) > eps * rms
        freq = active.mean(axis=0)
        sp = layer["sparsity"]
        assert sp["neurons"] == h.shape[1]
        assert sp["near_zero_fraction"] == pytest.approx(1 - active.mean(), abs=1e-9)
        assert 0 < sp["near_zero_fraction"] < 1
        assert sp["dead"] == int((freq == 0).sum()) and sp["always_on"] == int((freq == 1).sum())
        assert sp["frequency"]["mean"] == pytest.approx(freq.mean())
        assert sp["frequency"]["p50"] == pytest.approx(np.quantile(freq, 0.5))
        assert sp["frequency"]["min"] == pytest.approx(freq.min()) and sp["frequency"]["max"] == pytest.approx(freq.max())

    lse = _logsumexp(got["logits"])
    assert result["logits"]["log_z_mean"] == pytest.approx(lse.mean(), rel=1e-6)
    assert result["logits"]["log_z_max"] == pytest.approx(lse.max(), rel=1e-6)
    assert result["logits"]["log_z_min"] == pytest.approx(lse.min(), rel=1e-6)
    assert result["logits"]["log_z_std"] == pytest.approx(lse.std(), rel=1e-4)


def test_router_load_and_entropy_match_numpy() -> None:
    model = build("mixtral")
    docs = texts()
    result = profile(model, ByteTokenizer(), docs, batch_size=3)
    points = {f"router{i}": (b.mlp.gate, "output") for i, b in enumerate(blocks(model))}
    _, got = capture(model, docs, points)
    for i, layer in enumerate(result["layers"]):
        logits = got[f"router{i}"]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        chosen = np.argsort(-p, axis=1)[:, :2]
        load = np.bincount(chosen.ravel(), minlength=4) / chosen.size
        router = layer["router"]
        assert router["experts"] == 4 and router["top_k"] == 2
        assert router["load"] == pytest.approx(load)
        assert router["entropy_mean"] == pytest.approx((-(p * np.log(p)).sum(axis=1)).mean(), rel=1e-5)
        assert router["load_entropy"] == pytest.approx(-(load * np.log(load)).sum(), rel=1e-9)
        assert router["entropy_max"] == pytest.approx(np.log(4))
        assert layer["sparsity"] is None
    assert "mlp_hidden site" in result["unavailable"]["sparsity"]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_every_family(family: str) -> None:
    model = build(family)
    result = profile(model, ByteTokenizer(), texts(), max_tokens=90, batch_size=4)
    assert result["tokens"] == 90
    anatomy = actkit.Anatomy.of(model)
    hidden = {s.layer for s in anatomy.sites("mlp_hidden")}
    routers = {s.layer for s in anatomy.sites("router")}
    for layer in result["layers"]:
        assert set(layer) == LAYER_KEYS
        assert np.isfinite(layer["attn_logit_max"])
        assert layer["resid_norm_max"] >= layer["resid_norm_p99"] > 0
        assert layer["attn_out_norm_mean"] > 0 and layer["mlp_out_norm_mean"] > 0
        assert (layer["sparsity"] is not None) == (layer["index"] in hidden)
        assert (layer["router"] is not None) == (layer["index"] in routers)
        assert layer["signal"]["channel_var"] > 0
    assert np.isfinite(result["logits"]["log_z_mean"])
    assert ("sparsity" in result["unavailable"]) == (family in MOE)
    json.dumps(result, allow_nan=False)


def _state_bytes(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held in tensors reachable from a reducer's attributes (its state)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v, seen) for v in obj)
    if isinstance(obj, dict):
        return sum(_state_bytes(v, seen) for v in obj.values())
    if hasattr(obj, "__dict__"):
        return sum(_state_bytes(v, seen) for v in vars(obj).values())
    return 0


@pytest.mark.parametrize("family", ["llama", "qwen2_moe"])
def test_reducer_memory_does_not_grow_with_tokens(family: str) -> None:
    model = build(family)
    few = run_reducers(model, ByteTokenizer(), texts()[:1], max_tokens=20)
    many = run_reducers(model, ByteTokenizer(), texts() * 3, batch_size=5)
    assert many.found.tokens > 20 * few.found.tokens
    sizes = [[_state_bytes(r) for r in run.reducers()] for run in (few, many)]
    assert sizes[0] == sizes[1]
    assert sum(sizes[0]) > 0


def test_a_family_without_mlp_hidden_reports_what_it_has() -> None:
    import transformers as tf

    config = tf.GPTJConfig(vocab_size=32, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128)
    model = tf.GPTJForCausalLM(config).eval()
    table = actkit.Family("gptj", ("gptj",), layers="h", embed=actkit.Hook("wte"),
                          block={"attn_out": actkit.Hook("attn")})
    try:
        actkit.register_family(table)
        result = profile(model, ByteTokenizer(), texts(), max_tokens=60)
    finally:
        from actkit.core import anatomy

        anatomy._FAMILIES.pop("gptj", None)
    assert [layer["sparsity"] for layer in result["layers"]] == [None, None]
    assert [layer["mlp_out_norm_mean"] for layer in result["layers"]] == [None, None]
    assert all(layer["attn_out_norm_mean"] > 0 and layer["resid_norm_mean"] > 0 for layer in result["layers"])
    assert "no mlp_hidden site in any block" in result["unavailable"]["sparsity"]
    assert "no mlp_out site" in result["unavailable"]["mlp_out_norm"]
    json.dumps(result, allow_nan=False)


def test_bad_input_is_an_actkit_error() -> None:
    model = build("llama")

    class Silent(ByteTokenizer):
        def __call__(self, text: str) -> dict[str, list[int]]:
            return {"input_ids": []}

    with pytest.raises(ActkitError, match="shorter than one token"):
        profile(model, Silent(), ["some text"])
    with pytest.raises(ActkitError, match="positive"):
        profile(model, ByteTokenizer(), texts(), max_tokens=0)
    with pytest.raises(ActkitError, match="top_k"):
        profile(model, ByteTokenizer(), texts(), top_k=0)
    with pytest.raises(ActkitError, match="sparsity"):
        profile(model, ByteTokenizer(), texts(), sparsity_eps=0.0)
    with pytest.raises(ActkitError):
        profile(model, ByteTokenizer(), [])


def test_profile_max_tokens_and_default_name() -> None:
    model = build("llama")
    result = profile(model, ByteTokenizer(), texts(), max_tokens=50)
    assert result["tokens"] == 50
    assert result["model"] == type(model).__name__


def test_an_encoder_without_head_has_no_log_z() -> None:
    import transformers as tf

    model = tf.BertModel(build("bert").config).eval()
    result = profile(model, ByteTokenizer(), texts(), max_tokens=40, massive_intervention=True)
    assert result["logits"] is None
    assert "output head" in result["unavailable"]["log_z"]
    assert "encoder" in result["unavailable"]["massive_intervention"]
    assert "massive_intervention" in result and result["massive_intervention"] is None


def test_default_text_is_documents() -> None:
    docs = default_texts()
    assert len(docs) >= 30
    assert all(doc.strip() == doc and doc for doc in docs)


def test_write_profile_is_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    result = {"model": "m", "tokens": 3, "layers": [dict.fromkeys(OLD_KEYS, 1.0) | {"index": 0}]}
    out = tmp_path / "new" / "dir"
    path = write_profile(result, out)
    assert path == out / "profile.json"
    assert json.loads(path.read_text()) == result
    with pytest.raises(ActkitError, match="--force"):
        write_profile(result, out)
    changed = result | {"tokens": 4}
    write_profile(changed, out, overwrite=True)
    assert json.loads(path.read_text())["tokens"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["profile.json"]  # no temporary file left behind


def test_write_profile_writes_strict_json(tmp_path: Path) -> None:
    result = {"model": "m", "tokens": 0, "layers": [{"index": 0, "resid_norm_mean": float("nan")}]}
    path = write_profile(result, tmp_path)
    assert json.loads(path.read_text())["layers"][0]["resid_norm_mean"] is None


def test_write_profile_into_a_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ActkitError, match="is a file"):
        write_profile({"model": "m", "tokens": 0, "layers": []}, target)
