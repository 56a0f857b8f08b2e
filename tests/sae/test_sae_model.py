"""The SAE's arithmetic: top-k keeps exactly k features, and encode-edit-decode keeps the reconstruction error."""

from __future__ import annotations

import pytest
import torch
from sae_helpers import random_sae

from actkit.core.hooks import Capture, tap
from actkit.core.interventions import Add
from actkit.errors import ActkitError
from actkit.sae import EncodeEditDecode, FeatureEdit, SparseAutoencoder, sae_writes

from tiny import HIDDEN, build, tokens


def test_topk_keeps_exactly_k_features_the_largest_ones() -> None:
    sae = random_sae(HIDDEN, d_sae=48, k=5)
    x = torch.randn(3, 7, HIDDEN, generator=torch.Generator().manual_seed(1)) * 4
    f = sae.encode(x)
    assert f.shape == (3, 7, 48)
    assert bool(((f != 0).sum(-1) == 5).all())
    pre = sae.pre_acts(x)
    # the kept ones are the k largest pre-activations, unchanged
    top = pre.topk(5, dim=-1)
    assert torch.equal(f.gather(-1, top.indices), top.values)


def test_a_relu_sae_keeps_every_positive_pre_activation() -> None:
    top = random_sae(HIDDEN)
    relu = SparseAutoencoder(top.W_enc, top.b_enc, top.W_dec, top.b_dec, site=top.site, architecture="standard")
    x = torch.randn(4, HIDDEN)
    assert torch.equal(relu.encode(x), torch.relu(relu.pre_acts(x)))


def test_k_larger_than_the_dictionary_is_refused() -> None:
    sae = random_sae(HIDDEN, d_sae=8, k=2)
    with pytest.raises(ActkitError, match="larger than the dictionary"):
        SparseAutoencoder(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, site="resid_post.1", k=9)


def test_no_edit_returns_the_input_exactly_and_the_model_is_unchanged() -> None:
    model = build("llama")
    sae = random_sae(HIDDEN)
    ids = tokens()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        noop = EncodeEditDecode(sae, FeatureEdit(torch.tensor([0, 3, 7]), 0.0, mode="add"))
        seen = Capture()
        with tap(model, write={"resid_post.1": noop}, read={"resid_post.1": seen}):
            edited = model(input_ids=ids).logits
    assert torch.equal(edited, plain)
    x = seen.last
    assert torch.equal(noop(x, torch.ones(x.shape[:2], dtype=torch.bool), None), x)  # type: ignore[arg-type]


def test_an_edit_is_decode_of_the_edited_features_plus_the_reconstruction_error() -> None:
    sae = random_sae(HIDDEN)
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(3)) * 3
    edit = EncodeEditDecode(sae, FeatureEdit(torch.tensor([4, 9]), 6.5, mode="set"))
    new = edit.edit(x, None)  # type: ignore[arg-type]
    f = sae.encode(x)
    g = f.clone()
    g[..., 4] = 6.5
    g[..., 9] = 6.5
    expected = sae.decode(g) + (x - sae.decode(f))
    torch.testing.assert_close(new, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(new, x)


def test_per_row_features_and_amplify() -> None:
    sae = random_sae(HIDDEN)
    f = sae.encode(torch.randn(2, 3, HIDDEN) * 3)
    out = FeatureEdit(torch.tensor([[1], [2]]), 10.0, mode="amplify")(f)
    peak = f.amax(-1)
    torch.testing.assert_close(out[0, :, 1], f[0, :, 1] + 10 * peak[0])
    torch.testing.assert_close(out[1, :, 2], f[1, :, 2] + 10 * peak[1])
    assert torch.equal(out[0, :, 2], f[0, :, 2]) and torch.equal(out[1, :, 1], f[1, :, 1])


def test_adding_features_adds_their_unit_decoder_rows() -> None:
    model = build("llama")
    sae = random_sae(HIDDEN)
    sae.W_dec[3] *= 2.0  # not unit: the direction is the row's direction
    ids = tokens()
    writes = sae_writes(sae, [3, 5], 1.5)
    by_hand = Add(sae.W_dec[3] / sae.W_dec[3].norm() + sae.W_dec[5], coef=1.5)
    with torch.no_grad():
        with tap(model, write=writes):
            a = model(input_ids=ids).logits
        with tap(model, write={"resid_post.1": by_hand}):
            b = model(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_a_feature_out_of_range_is_refused() -> None:
    sae = random_sae(HIDDEN, d_sae=48)
    with pytest.raises(ActkitError, match="feature 48 is out of range"):
        sae_writes(sae, [48], 1.0)
    with pytest.raises(ActkitError, match="out of range"):
        sae_writes(sae, [-1], 1.0, mode="clamp")
