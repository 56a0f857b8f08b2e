"""Arad et al.'s feature scores against hand computations on a tiny model."""

from __future__ import annotations

import math

import torch
from sae_helpers import random_sae

from actkit.core.hooks import Capture, tap
from actkit.core.interventions import Apply
from actkit.core.positions import Last
from actkit.sae import input_scores, logit_lens_tokens, output_scores

from tiny import HIDDEN, VOCAB, CharTokenizer, build


def test_logit_lens_tokens_are_the_top_tokens_of_each_decoder_row() -> None:
    model = build("llama")
    sae = random_sae(HIDDEN, d_sae=12)
    lens = logit_lens_tokens(model, sae, top=5, chunk=5)
    with torch.no_grad():
        probs = torch.softmax(model.lm_head(model.model.norm(sae.W_dec)), dim=-1)
    assert torch.equal(lens, probs.topk(5, dim=-1).indices)


def test_output_score_by_hand() -> None:
    model = build("llama")
    tokenizer = CharTokenizer()
    sae = random_sae(HIDDEN, d_sae=12, k=4)
    lens = logit_lens_tokens(model, sae, top=3)
    prompt = "hello there,"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    got = output_scores(model, tokenizer, sae, lens, features=[2, 7], prompt=prompt, amplify=10.0, batch_size=1)
    for n, feature in enumerate((2, 7)):
        def amplified(x: torch.Tensor, feature: int = feature) -> torch.Tensor:
            f = sae.encode(x)
            g = f.clone()
            g[..., feature] += 10.0 * f.max(dim=-1).values
            return x + (g - f) @ sae.W_dec

        with torch.no_grad(), tap(model, write={"resid_post.1": Apply(amplified, positions=Last())}):
            probs = torch.softmax(model(input_ids=ids).logits[0, -1], dim=-1)
        order = torch.argsort(probs, descending=True)
        ranks = [int((order == t).nonzero()) for t in lens[feature]]
        expected = (1 - min(ranks) / VOCAB) * float(probs[lens[feature]].max())
        assert math.isclose(float(got[n]), expected, rel_tol=1e-5), (float(got[n]), expected)


def test_input_score_is_the_share_of_top_contexts_peaking_on_a_top_token() -> None:
    model = build("llama")
    tokenizer = CharTokenizer()
    sae = random_sae(HIDDEN, d_sae=6, k=2)
    sae.b_enc += 1.0  # every token fires two features
    texts = ["abcab", "bbbcc", "hello", "zzzz a", "qwerty", "ghij", "a"]
    lens = logit_lens_tokens(model, sae, top=12)
    got = input_scores(model, tokenizer, sae, texts, lens, contexts=3, min_contexts=2, batch_size=2)
    seen = Capture()
    peaks: list[list[tuple[float, int]]] = [[] for _ in range(6)]
    with torch.no_grad(), tap(model, read={"resid_post.1": seen}):
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            model(input_ids=ids)
            f = sae.encode(seen.last[0])
            for i in range(6):
                value, where = f[:, i].max(0)
                if value > 0:
                    peaks[i].append((float(value), int(ids[0, where])))
    scored = [float(v) for v in got["input_score"] if not math.isnan(float(v))]
    assert len(scored) >= 3 and len(set(scored)) >= 2, got  # not vacuous: several features, different scores
    for i in range(6):
        best = sorted(peaks[i], reverse=True)[:3]
        if len(best) < 2:
            assert math.isnan(float(got["input_score"][i]))
            continue
        expected = sum(token in lens[i].tolist() for _, token in best) / len(best)
        assert float(got["input_score"][i]) == expected
        assert int(got["contexts"][i]) == len(best)
