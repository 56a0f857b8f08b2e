"""Probes: scores equal the hand projection, AUROC equals a hand count, thresholds meet the stated rate, files are
checked against the model, bad labels are refused."""

from __future__ import annotations

import itertools

import pytest
import torch

from actkit.errors import ActkitError
from actkit.monitor import (
    Probe,
    auroc,
    load_probe,
    probe_from_vector,
    save_probe,
    threshold_at_fpr,
    train_probe,
)
from actkit.monitor.probe import fit_direction, split_held_out
from actkit.steer import SteeringVector
from actkit.steer.vectors import model_metadata

from tiny import build

POS = ["aaaa bbb", "abab aaa", "aaab bba", "baaa aab", "aabb aaa", "aaaa aaa", "abaa bab", "aaba aab"]
NEG = ["zzzz yyy", "zyzy zzz", "zzzy yyz", "yzzz zzy", "zzyy zzz", "zzzz zzz", "zyzz yzy", "zzyz zzy"]


def hand_auroc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=g).double().tolist()  # many ties
    labels = [i % 2 for i in range(40)]
    assert auroc(scores, labels) == pytest.approx(hand_auroc(scores, labels), abs=1e-12)
    assert auroc([3.0, 1.0], [1, 0]) == 1.0 and auroc([1.0, 3.0], [1, 0]) == 0.0


@pytest.mark.parametrize("fpr", [0.0, 0.05, 0.1, 0.25])
def test_threshold_meets_the_false_positive_rate_on_calibration_data(fpr):
    scores = torch.randn(200, generator=torch.Generator().manual_seed(1))
    t = threshold_at_fpr(scores, fpr)
    assert float((scores > t).double().mean()) == pytest.approx(fpr)  # 200 * fpr is whole and the scores distinct
    assert float((scores >= t).double().mean()) > fpr  # the lowest such threshold: one more negative at or above


@torch.no_grad()
def test_probe_score_equals_the_hand_projection(llama, tok):
    probe = train_probe(llama, tok, POS + NEG, [1] * 8 + [0] * 8, layers=[1], method="logistic")
    texts = ["abba", "zzz yz", "a"]
    ids = [torch.tensor([tok(t)["input_ids"]]) for t in texts]
    hand = []
    for row in ids:
        hidden = llama(input_ids=row, output_hidden_states=True).hidden_states[2][0, -1]  # resid_post.1, last token
        hand.append(float(hidden.double() @ probe.weight.double() + probe.bias))
    assert probe.score(llama, tok, texts, batch_size=2).tolist() == pytest.approx(hand, abs=1e-4)
    mean_probe = Probe(probe.site, probe.weight, probe.bias, 0.0, "logistic", reduce="mean")
    hidden = llama(input_ids=ids[1], output_hidden_states=True).hidden_states[2][0].double().mean(0)
    assert float(mean_probe.score(llama, tok, texts[1:2])[0]) == pytest.approx(
        float(hidden @ mean_probe.weight.double() + mean_probe.bias), abs=1e-4)


@pytest.mark.parametrize("method", ["mean-diff", "logistic", "pca"])
def test_methods_separate_shifted_classes(method):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 16, generator=g, dtype=torch.float64)
    y = torch.tensor([1] * 30 + [0] * 30)
    x[:30, 3] += 4.0
    w, b = fit_direction(x, y, method)
    assert auroc(x @ w + b, y) > 0.95
    assert abs(float(w[3])) == pytest.approx(float(w.abs().max()))


def test_mean_diff_probe_puts_the_midpoint_at_zero():
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    w, b = fit_direction(x, torch.tensor([1, 1, 0, 0]), "mean-diff")
    assert w.tolist() == [1.0, 0.0] and b == pytest.approx(-1.0)  # means 3 and -1


def test_logistic_probe_matches_logits_in_raw_coordinates():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0]) + 3.0
    y = (x[:, 0] + 0.1 * x[:, 1] > 3.0).long()
    w, b = fit_direction(x, y, "logistic")
    predicted = ((x @ w + b) > 0).long()
    assert float((predicted == y).double().mean()) > 0.9


def test_train_probe_reports_held_out_metrics_and_picks_a_block(llama, tok):
    probe = train_probe(llama, tok, POS + NEG, [1] * 8 + [0] * 8, layers=None, method="mean-diff", fpr=0.0)
    meta = probe.metadata
    assert meta["n_train"] + meta["n_held_out"] == 16 and meta["n_held_out"] == 4
    assert set(meta["layer_auroc"]) == {"0", "1", "2"}
    assert probe.layer == max(range(3), key=lambda k: (meta["layer_auroc"][str(k)], -k))
    train, test = split_held_out(torch.tensor([1] * 8 + [0] * 8), 0.25, 0)
    texts = POS + NEG
    scores = probe.score(llama, tok, [texts[i] for i in test])
    labels = [1 if i < 8 else 0 for i in test]
    assert meta["auroc"] == pytest.approx(hand_auroc(scores.tolist(), labels))
    train_neg = probe.score(llama, tok, [texts[i] for i in train if i >= 8])
    assert int((train_neg > probe.threshold).sum()) == 0  # fpr 0 on the calibration (training) negatives


def test_probe_file_round_trip_and_refusal_for_another_model(llama, tok, tmp_path):
    probe = train_probe(llama, tok, POS + NEG, [1] * 8 + [0] * 8, layers=[2], method="pca")
    path = save_probe(probe, tmp_path / "p.safetensors")
    back = load_probe(path, llama)
    assert torch.equal(back.weight, probe.weight)
    assert (back.site, back.bias, back.threshold, back.method, back.reduce) == (
        probe.site, probe.bias, probe.threshold, probe.method, probe.reduce)
    assert back.metadata["auroc"] == probe.metadata["auroc"]
    with pytest.raises(ActkitError, match="exists"):
        save_probe(probe, path)
    other = build("qwen2")
    with pytest.raises(ActkitError, match="does not fit.*model_type"):
        load_probe(path, other)
    far = Probe("resid_post.7", probe.weight, 0.0, 0.0, "pca", metadata=dict(probe.metadata))
    save_probe(far, tmp_path / "far.safetensors")
    with pytest.raises(ActkitError, match="block 7 does not exist"):
        load_probe(tmp_path / "far.safetensors", llama)


def test_bad_probe_files_are_refused(tmp_path, llama):
    from safetensors.torch import save_file

    save_file({"layers.0": torch.zeros(4)}, str(tmp_path / "v.safetensors"), metadata={"actkit": "{}"})
    with pytest.raises(ActkitError, match="steering vector"):
        load_probe(tmp_path / "v.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a file")
    with pytest.raises(ActkitError, match="not a readable"):
        load_probe(tmp_path / "junk.safetensors")
    with pytest.raises(ActkitError, match="does not exist"):
        load_probe(tmp_path / "none.safetensors")


def test_probe_from_vector_projects_on_the_unit_direction(llama):
    v = torch.zeros(64)
    v[5] = 3.0
    vector = SteeringVector({1: v}, metadata=model_metadata(llama))
    probe = probe_from_vector(vector, 1)
    x = torch.randn(4, 64)
    assert torch.allclose(probe.project(x), x[:, 5])
    assert probe.site == "resid_post.1" and probe.method == "vector"
    with pytest.raises(ActkitError, match="no direction at block 0"):
        probe_from_vector(vector, 0)


@pytest.mark.parametrize(("labels", "message"), [
    ([0, 1, 2, 1], "must be 0 or 1"),
    (["yes", 0, 1, 1], "must be 0 or 1"),
    ([1, 1, 1, 1], "both classes"),
    ([1, 0, 0, 0], "too few examples"),
])
def test_bad_labels_are_refused(llama, tok, labels, message):
    with pytest.raises(ActkitError, match=message):
        train_probe(llama, tok, ["ab", "ba", "aa", "bb"], labels, layers=[0])


def test_texts_longer_than_the_context_are_refused(llama, tok):
    with pytest.raises(ActkitError, match="context"):
        train_probe(llama, tok, ["a" * 200, "b", "c", "d"], [1, 1, 0, 0], layers=[0])
