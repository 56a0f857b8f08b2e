"""Out-of-distribution scores: the per-neuron histogram equals a hand count, coverage is bounded and higher on the
fitted text, the baselines equal hand computations from the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from actkit.errors import ActkitError
from actkit.monitor.ood import NeuronHistogram, fit_coverage, ood_scores

IN = ["aaaa bbbb aaaa", "abab abab", "bbbb aaaa bb", "aabb aabb aa", "baba baba b", "ab ab ab ab"] * 2
OUT = ["zyxw vuts", "qrst uvwx", "mnop qrst"]


def test_neuron_histogram_equals_a_hand_count_and_merges():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g) * 2
    lo, hi = torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([1.0, 2.0, 4.0])
    h = NeuronHistogram(lo, hi, bins=4)
    h.update(x[:20])
    other = NeuronHistogram(lo, hi, bins=4)
    other.update(x[20:])
    h.merge(other)
    for j in range(3):
        edges = torch.linspace(float(lo[j]), float(hi[j]), 5)
        v = x[:, j]
        hand = [int((v < edges[0]).sum())] + [int(((v >= edges[k]) & (v < edges[k + 1])).sum()) for k in range(4)]
        hand.append(int((v >= edges[4]).sum()))
        assert h.result()["counts"][j].tolist() == hand
    assert h.count == 50


def test_coverage_is_higher_on_in_distribution_text_and_memory_is_flat(llama, tok):
    cov = fit_coverage(llama, tok, IN, sites="mlp_hidden.*", bins=8)
    assert sorted(cov.histograms) == ["mlp_hidden.0", "mlp_hidden.1", "mlp_hidden.2"]
    assert all(h.counts.shape == (96, 10) for h in cov.histograms.values())  # neurons x (bins + 2)
    more = fit_coverage(llama, tok, IN * 3, sites="mlp_hidden.1", bins=8)
    assert more.histograms["mlp_hidden.1"].counts.shape == (96, 10) and more.tokens == 3 * cov.tokens
    scores = ood_scores(llama, tok, IN[:4] + OUT, cov)
    assert set(scores) == {"coverage", "msp", "perplexity"}
    c = scores["coverage"]
    assert bool(((c >= 0) & (c <= 1)).all())
    assert float(c[4:].min()) > float(c[:4].max())


def test_baselines_equal_a_hand_computation(llama, tok):
    cov = fit_coverage(llama, tok, IN, sites="mlp_hidden.0", bins=8)
    scores = ood_scores(llama, tok, OUT + ["ab"], cov, batch_size=2)
    for i, text in enumerate(OUT + ["ab"]):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logp = F.log_softmax(llama(input_ids=ids).logits[0].double(), -1)
        assert float(scores["msp"][i]) == pytest.approx(1 - float(logp.max(-1).values.exp().mean()), abs=1e-5)
        nll = -logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].mean()
        assert float(scores["perplexity"][i]) == pytest.approx(float(nll), abs=1e-4)


def test_ood_bad_input(llama, tok):
    cov = fit_coverage(llama, tok, IN, sites="mlp_hidden.0", bins=8)
    with pytest.raises(ActkitError, match="context"):
        ood_scores(llama, tok, ["a" * 300], cov)
    with pytest.raises(ActkitError, match="non-empty list"):
        ood_scores(llama, tok, [], cov)
