"""Training: streaming through `token_batches`, the error goes down, the decoder rows stay unit norm."""

from __future__ import annotations

import random

import pytest
import torch
from sae_helpers import random_sae

from actkit.errors import ActkitError
from actkit.sae import evaluate_sae, train_sae
from actkit.sae._train import ReconstructionStats

from tiny import HIDDEN, CharTokenizer, build


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij klmno") for _ in range(40)) for _ in range(n)]


def test_training_reduces_the_reconstruction_error() -> None:
    model = build("llama")
    tokenizer = CharTokenizer()
    held_out = _texts(20, seed=9)
    sae, report = train_sae(model, tokenizer, _texts(120), "resid_post.1", n_features=64, k=8, batch_size=8,
                            lr=3e-3, epochs=2)
    assert report["tokens"] == 2 * 120 * 40 and report["steps"] == 30
    assert report["last_loss"] < 0.6 * report["first_loss"], report
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    trained = evaluate_sae(model, tokenizer, sae, held_out)
    untrained, _ = train_sae(model, tokenizer, _texts(8), "resid_post.1", n_features=64, k=8, batch_size=8,
                             lr=1e-12)
    before = evaluate_sae(model, tokenizer, untrained, held_out)
    assert trained["fve"] > before["fve"] + 0.2, (trained, before)
    assert trained["l0"] == pytest.approx(8.0)
    assert sae.metadata["actkit"]["hidden_size"] == HIDDEN and sae.site == "resid_post.1"


def test_max_tokens_bounds_the_stream() -> None:
    model = build("llama")
    endless = ("abcdefgh" * 5 for _ in iter(int, 1))  # an endless generator: read only up to the budget
    _, report = train_sae(model, CharTokenizer(), endless, "mlp_out.0", n_features=16, k=2, max_tokens=300)
    assert report["tokens"] == 300


def test_skip_first_leaves_out_each_rows_first_token_in_training_and_in_evaluation() -> None:
    model = build("llama")
    texts = ["abcdefgh" * 5] * 6  # 40 tokens each, one row each
    sae, report = train_sae(model, CharTokenizer(), texts, "resid_post.1", n_features=16, k=2, batch_size=3,
                            skip_first=True)
    assert report["tokens"] == 6 * 39 and sae.metadata["actkit"]["skip_first"] is True
    assert evaluate_sae(model, CharTokenizer(), sae, texts[:2])["tokens"] == 2 * 39
    sae.metadata["actkit"]["skip_first"] = False
    assert evaluate_sae(model, CharTokenizer(), sae, texts[:2])["tokens"] == 2 * 40


def test_reconstruction_stats_by_hand() -> None:
    sae = random_sae(HIDDEN)
    x = torch.randn(1, 10, HIDDEN, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 7:] = False
    stats = ReconstructionStats(sae)
    stats.update(x, mask)
    rows = x[0, :7]
    err = (rows - sae.decode(sae.encode(rows))).pow(2).sum()
    total = (rows - rows.mean(0)).pow(2).sum()
    result = stats.result()
    assert result["tokens"] == 7
    assert result["fve"] == pytest.approx(1 - float(err / total), rel=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_features": 8, "k": 9}, "larger than the dictionary"),
    ({"n_features": 0, "k": 1}, "positive integer"),
    ({"n_features": 8, "k": 2, "site": "resid_post.*"}, "one site"),
    ({"n_features": 8, "k": 2, "site": "resid_post.9"}, "resid_post.9"),
])
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    args = {"site": "resid_post.0", **kwargs}
    with pytest.raises(ActkitError, match=message):
        train_sae(build("llama"), CharTokenizer(), ["abc"], args.pop("site"), **args)
