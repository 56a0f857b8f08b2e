"""The residual-norm profile against an independent computation: plain forward hooks and numpy norms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actkit import ActkitError
from actkit.observe import default_texts, profile, write_profile

from tiny import build

LAYER_KEYS = {"index", "resid_norm_mean", "resid_norm_p50", "resid_norm_p99", "resid_norm_max"}
CONTEXT = 128  # max_position_embeddings of the tiny models


class ByteTokenizer:
    """Bytes to ids 2..31 after a BOS of 1 (0 pads): all `collect` needs of a tokenizer, for any tiny model."""

    pad_token_id = 0
    model_max_length = 10**30

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1] + [2 + b % 30 for b in text.encode()]}


def texts() -> list[str]:
    # a few short documents and one longer than the context, so that splitting is exercised
    return default_texts()[:6] + [" ".join(default_texts()[6:9])]


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The block list, found here by hand rather than through actkit's anatomy tables."""
    return model.bert.encoder.layer if hasattr(model, "bert") else model.model.layers


def reference(model: torch.nn.Module, docs: list[str]) -> tuple[int, list[np.ndarray]]:
    """Token count and, per block, every token's L2 norm of the block output: one unpadded document chunk at a time."""
    layers = blocks(model)
    norms: list[list[np.ndarray]] = [[] for _ in layers]

    def keep(i: int):
        def hook(module, args, output):
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            norms[i].append(np.linalg.norm(hidden[0].detach().numpy().astype(np.float64), axis=-1))
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    tokenizer = ByteTokenizer()
    count = 0
    try:
        with torch.no_grad():
            for doc in docs:
                ids = tokenizer(doc)["input_ids"]
                for start in range(0, len(ids), CONTEXT):
                    chunk = torch.tensor([ids[start:start + CONTEXT]])
                    model(input_ids=chunk)
                    count += chunk.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    return count, [np.concatenate(n) for n in norms]


@pytest.mark.parametrize("family", ["llama", "mixtral", "bert"])
def test_profile_matches_independent_norms(family: str) -> None:
    model = build(family)
    docs = texts()
    assert len(ByteTokenizer()(docs[-1])["input_ids"]) > CONTEXT
    result = profile(model, ByteTokenizer(), docs, batch_size=3, model_name="tiny")
    count, norms = reference(model, docs)

    assert set(result) == {"model", "tokens", "layers"}
    assert result["model"] == "tiny"
    assert result["tokens"] == count
    assert [layer["index"] for layer in result["layers"]] == list(range(len(blocks(model))))
    for layer, expected in zip(result["layers"], norms, strict=True):
        assert set(layer) == LAYER_KEYS
        assert layer["resid_norm_mean"] == pytest.approx(expected.mean(), rel=1e-5)
        assert layer["resid_norm_max"] == pytest.approx(expected.max(), rel=1e-5)
        assert layer["resid_norm_p50"] == pytest.approx(np.quantile(expected, 0.5), rel=2e-3)
        assert layer["resid_norm_p99"] == pytest.approx(np.quantile(expected, 0.99), rel=2e-3)
    json.dumps(result, allow_nan=False)  # plain Python values


def test_profile_max_tokens_and_default_name() -> None:
    model = build("llama")
    result = profile(model, ByteTokenizer(), texts(), max_tokens=50)
    assert result["tokens"] == 50
    assert result["model"] == type(model).__name__
    with pytest.raises(ActkitError, match="positive"):
        profile(model, ByteTokenizer(), texts(), max_tokens=0)


def test_profile_empty_texts_is_an_error() -> None:
    with pytest.raises(ActkitError):
        profile(build("llama"), ByteTokenizer(), [])


def test_default_text_is_documents() -> None:
    docs = default_texts()
    assert len(docs) >= 30
    assert all(doc.strip() == doc and doc for doc in docs)


def test_write_profile_is_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    result = {"model": "m", "tokens": 3, "layers": [dict.fromkeys(LAYER_KEYS, 1.0) | {"index": 0}]}
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
