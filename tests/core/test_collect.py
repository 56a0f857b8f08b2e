"""`collect`: equal to a direct computation, independent of batching, token budgets, splitting, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actkit
from actkit import Capture, Mean, NormHistogram, TopK, collect, read_texts

from tiny import CharTokenizer, build

TEXTS = ["the cat sat on the mat", "a dog", "colourless green ideas sleep furiously", "x", "hello world again"]


def _direct_norms(model, texts, layer: int) -> np.ndarray:
    tok = CharTokenizer()
    out = []
    for text in texts:
        cap = Capture()
        with torch.no_grad(), actkit.tap(model, read={f"resid_post.{layer}": cap}):
            model(torch.tensor([tok(text)["input_ids"]]))
        out.append(cap.last[0].double().norm(dim=-1).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("name", ["llama", "bert", "mixtral"])
def test_collect_equals_direct_computation(name: str) -> None:
    model = build(name)
    result = collect(model, TEXTS, "resid_post.*", {"norm": NormHistogram, "mean": Mean},
                     tokenizer=CharTokenizer(), batch_size=2)
    assert result.tokens == sum(len(t) for t in TEXTS) and result.documents == len(TEXTS)
    assert result.sites == ["resid_post.0", "resid_post.1", "resid_post.2"]
    for layer in range(3):
        norms = _direct_norms(model, TEXTS, layer)
        stats = result[f"resid_post.{layer}"]["norm"].result()
        assert stats["count"] == len(norms)
        np.testing.assert_allclose(stats["mean"], norms.mean(), rtol=1e-5)
        np.testing.assert_allclose(stats["max"], norms.max(), rtol=1e-5)
        np.testing.assert_allclose(stats["p50"], np.quantile(norms, 0.5), rtol=3e-3)


def test_batch_size_does_not_change_results() -> None:
    model = build("qwen2")
    a = collect(model, TEXTS, ["mlp_hidden.1"], {"mean": Mean}, tokenizer=CharTokenizer(), batch_size=1)
    b = collect(model, TEXTS, ["mlp_hidden.1"], {"mean": Mean}, tokenizer=CharTokenizer(), batch_size=4)
    torch.testing.assert_close(a["mlp_hidden.1"]["mean"].result()["mean"], b["mlp_hidden.1"]["mean"].result()["mean"])


def test_token_budget_and_long_documents() -> None:
    model = build("llama")
    long_doc = "abcdefghij" * 10  # 100 tokens, split into chunks of 32
    result = collect(model, [long_doc, "tail text"], {"resid_post.0"}, {"top": lambda: TopK(k=3)},
                     tokenizer=CharTokenizer(), max_length=32, max_tokens=70, batch_size=2)
    assert result.tokens == 70 and result.batches == 2
    positions = result["resid_post.0"]["top"].result()["positions"]
    assert all(0 <= p < 70 for p in positions) and result["resid_post.0"]["top"].result()["documents"] == [0, 0, 0]


def test_topk_locations_point_into_documents() -> None:
    model = build("llama")
    texts = ["abcdefgh", "abcdefghijklmnop"]
    result = collect(model, texts, ["mlp_hidden.0"], {"top": lambda: TopK(k=1)}, tokenizer=CharTokenizer(),
                     max_length=5)
    top = result["mlp_hidden.0"]["top"].result()
    doc, pos, dim = top["documents"][0], top["positions"][0], top["dims"][0]
    cap = Capture()
    ids = torch.tensor([CharTokenizer()(texts[doc])["input_ids"]])
    start = pos - pos % 5  # the chunk that holds this position
    with torch.no_grad(), actkit.tap(model, read={"mlp_hidden.0": cap}):
        model(ids[:, start:start + 5])
    assert cap.last[0, pos - start, dim].item() == pytest.approx(top["values"][0], rel=1e-5)


def test_nan_is_reported_with_site_and_batch() -> None:
    model = build("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(actkit.ActkitError, match=r"NaN or inf at site resid_post\.1 in batch 0"):
        collect(model, TEXTS, "resid_post.*", {"norm": NormHistogram}, tokenizer=CharTokenizer())


def test_bad_input(tmp_path) -> None:
    model = build("llama")
    with pytest.raises(actkit.ActkitError, match="positive"):
        collect(model, TEXTS, "resid_post.0", {"m": Mean}, tokenizer=CharTokenizer(), max_tokens=0)
    with pytest.raises(actkit.ActkitError, match="shorter than one token"):
        collect(model, ["", ""], "resid_post.0", {"m": Mean}, tokenizer=CharTokenizer())
    with pytest.raises(actkit.ActkitError, match=r"block 40 does not exist.*0\.\.2"):
        collect(model, TEXTS, "resid_post.40", {"m": Mean}, tokenizer=CharTokenizer())
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(actkit.ActkitError, match="is empty"):
        read_texts(empty)
    with pytest.raises(actkit.ActkitError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(actkit.ActkitError, match="cannot read"):
        read_texts(binary)
    good = tmp_path / "good.txt"
    good.write_text("one\n\n two \nthree\n")
    assert read_texts(good) == ["one", " two ", "three"]


@pytest.mark.parametrize("split, batch_size", [(True, 1), (True, 3), (False, 2)])
def test_next_token_nll_equals_a_hand_computation(split: bool, batch_size: int) -> None:
    from actkit.core.collect import next_token_nll

    model, tok = build("llama"), CharTokenizer()
    texts = ["the cat sat on the mat", "x", "birds sing at dawn", "", "abcdefghijklmnop"]
    total, count = next_token_nll(model, texts, tok, limit=8, batch_size=batch_size, split=split)
    expected, expected_count = 0.0, 0
    for text in texts:  # each row alone, no padding, in float64
        ids = tok(text)["input_ids"]
        rows = [ids[i:i + 8] for i in range(0, len(ids), 8)] if split else [ids[:8]]
        for row in rows:
            if len(row) < 2:
                continue
            x = torch.tensor([row])
            with torch.no_grad():
                logits = model(input_ids=x).logits[0, :-1].double()
            expected += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            expected_count += len(row) - 1
    assert count == expected_count
    assert total == pytest.approx(expected, rel=1e-6)
    with pytest.raises(actkit.ActkitError, match="max_tokens must be a positive"):
        next_token_nll(model, texts, tok, limit=8, max_tokens=0)
