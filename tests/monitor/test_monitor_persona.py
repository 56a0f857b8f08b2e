"""Persona shift: the mean projection moves by exactly the steered amount at the probe's own site; correlations
equal hand values."""

from __future__ import annotations

import pytest
import torch

from actkit.core.interventions import Add
from actkit.errors import ActkitError
from actkit.monitor import Probe
from actkit.monitor.persona import correlation, mean_projection


def test_steering_at_the_probe_site_shifts_the_mean_projection_by_coef_times_v_dot_w(llama, tok):
    g = torch.Generator().manual_seed(6)
    probe = Probe("resid_post.1", torch.randn(64, generator=g), 0.5, 0.0, "mean-diff")
    v = torch.randn(64, generator=g)
    prompts = ["ab", "hello there", "zz"]
    base = mean_projection(llama, tok, prompts, probe)
    moved = mean_projection(llama, tok, prompts, probe, writes={"resid_post.1": Add(v, coef=3.0)})
    assert moved - base == pytest.approx(3.0 * float(v @ probe.weight), rel=1e-4)
    later = mean_projection(llama, tok, prompts, probe, writes={"resid_post.2": Add(v, coef=3.0)})
    assert later == pytest.approx(base, abs=1e-5)  # an edit after the probe's site cannot move it


def test_correlation_matches_hand_values():
    assert correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    r = correlation([1, 2, 3], [1, 3, 2])
    assert r["pearson"] == pytest.approx(0.5) and r["spearman"] == pytest.approx(0.5)
    tied = correlation([1, 1, 2, 3], [1, 2, 3, 4])  # ranks x: 1.5, 1.5, 3, 4
    x, y = torch.tensor([1.5, 1.5, 3, 4]), torch.tensor([1.0, 2, 3, 4])
    hand = float(((x - x.mean()) @ (y - y.mean())) / ((x - x.mean()).norm() * (y - y.mean()).norm()))
    assert tied["spearman"] == pytest.approx(hand)
    with pytest.raises(ActkitError, match="at least 3"):
        correlation([1, 2], [1, 2])
