"""Steering results on builtin:toy-dense, each beside a random direction of the same norm (Rogue Scalpel check).

- sentiment: a vector from `builtin:toy-sentiment` (5-star vs 1-star review openings, read at the last token)
  turns negative-cued and neutral reviews positive; the curve reports the KL to the base and the perplexity.
- refusal: the forbidden-minus-benign direction at the last prompt token, ablated everywhere, stops the refusals
  of forbidden requests at a small KL on benign ones; added to benign prompts, it makes the model refuse them.
- CAST: with the refusal ablated (from block 1 on), the refusal vector added under a forbidden-vs-benign condition
  refuses the forbidden rows of a mixed batch and leaves the benign rows bit for bit as they were.

Run with ``-s`` to see the tables (the numbers in docs/steering.md).
"""

from __future__ import annotations

import pytest
import torch

from actkit import generate, load
from actkit.builtin.corpus import documents, eval_set, texts
from actkit.evaluate.shift import kl_to_base, random_control, refusal_fraction, sweep
from actkit.steer import (
    Ablate,
    SteeringVector,
    ablation_everywhere,
    combine,
    conditional,
    direction,
    read_activations,
    read_pairs,
    train_vector,
)
from actkit.steer.cli import DATA_DIR

N_PROMPTS = 24
MAX_NEW = 12


@pytest.fixture(scope="module")
def toy():
    return load("builtin:toy-dense")


@pytest.fixture(scope="module")
def refusal(toy):
    """The refusal pairs and the mean-diff direction at every block, read at the last prompt token."""
    model, tok = toy
    pairs = read_pairs(DATA_DIR / "toy-refusal.jsonl")
    return pairs, train_vector(model, tok, pairs, None)


def _requests(label: str) -> list[str]:
    return [d.prompt for d in eval_set("request", N_PROMPTS, label=label)]


def _table(title: str, rows: list[dict], keys: tuple[str, ...]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{k:>10}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]:>10.3f}" if isinstance(row[k], float) else f"{row[k]!s:>10}" for k in keys))


def test_sentiment_curve_with_cost_and_random_control(toy) -> None:
    model, tok = toy
    pairs = read_pairs(DATA_DIR / "toy-sentiment.jsonl")
    chosen = [1]  # the block at 30% of the depth, as `actkit demo` steers it (select_layers' scores tie here)
    vector = train_vector(model, tok, pairs, chosen)
    prompts = ([d.prompt for d in eval_set("review", N_PROMPTS // 2, label="negative")]
               + [d.prompt for d in eval_set("review", N_PROMPTS // 2, label="none")])
    reference = texts(24, "heldout")
    coefs = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    rows = sweep(model, tok, vector, coefs, prompts, "positive", texts=reference, relative=True,
                 max_new_tokens=MAX_NEW)
    control = sweep(model, tok, random_control(vector), coefs, prompts, "positive", texts=reference,
                    relative=True, max_new_tokens=MAX_NEW)
    for row, other in zip(rows, control, strict=True):
        row["random"], row["random_kl"] = other["behaviour"], other["kl"]
    _table(f"sentiment at resid_post.{chosen[0]} (relative coefficients): positive rate", rows,
           ("coef", "behaviour", "kl", "perplexity", "random", "random_kl"))

    behaviour = [r["behaviour"] for r in rows]
    # reviews without stars are mostly continued positively already, the negative-cued ones never
    assert rows[0]["kl"] == 0.0 and behaviour[0] < 0.6
    best = max(range(len(rows)), key=lambda i: behaviour[i])
    assert behaviour[best] > 0.9
    assert all(b >= a - 0.1 for a, b in zip(behaviour, behaviour[1:], strict=False))  # rises, monotonically-ish
    assert all(b >= a for a, b in zip([r["kl"] for r in rows], [r["kl"] for r in rows[1:]], strict=False))
    # the random direction of the same norm barely moves the behaviour at the coefficient that does it
    assert control[best]["behaviour"] < behaviour[best] - 0.4


def test_refusal_direction_ablated_and_added(toy, refusal) -> None:
    model, tok = toy
    _, vector = refusal
    forbidden, benign = _requests("forbidden"), _requests("benign")
    benign_texts = [d.text for d in eval_set("request", N_PROMPTS, label="benign")]

    def rate(prompts: list[str], writes) -> float:
        return refusal_fraction(generate(model, tok, prompts, writes=writes, max_new_tokens=MAX_NEW))

    base_forbidden, base_benign = rate(forbidden, None), rate(benign, None)
    rows = []
    for layer in vector.layers:  # the best layer is the one whose ablation removes the refusals (Arditi et al.)
        writes = ablation_everywhere(model, vector.directions[layer])
        rows.append({"layer": layer, "forbidden": rate(forbidden, writes),
                     "kl_benign": kl_to_base(model, tok, benign_texts, writes)})
    best = min(rows, key=lambda r: (r["forbidden"], r["kl_benign"]))
    r = vector.directions[best["layer"]]
    noise = random_control(SteeringVector({best["layer"]: r})).directions[best["layer"]]
    random_ablation = ablation_everywhere(model, noise)
    added = SteeringVector({best["layer"]: r}).to_intervention(1.0, positions="prompt")
    random_added = SteeringVector({best["layer"]: noise}).to_intervention(1.0, positions="prompt")
    summary = {
        "forbidden_plain": base_forbidden, "forbidden_ablated": best["forbidden"],
        "forbidden_random_ablated": rate(forbidden, random_ablation), "kl_benign": best["kl_benign"],
        "kl_benign_random": kl_to_base(model, tok, benign_texts, random_ablation),
        "benign_plain": base_benign, "benign_added": rate(benign, added),
        "benign_random_added": rate(benign, random_added),
    }
    _table("refusal direction ablated everywhere, by the block it was read at", rows,
           ("layer", "forbidden", "kl_benign"))
    _table(f"refusal direction of block {best['layer']}", [summary], tuple(summary))

    assert base_forbidden >= 0.9 and base_benign <= 0.05
    assert best["forbidden"] <= 0.2 and best["kl_benign"] < 0.1
    assert summary["forbidden_random_ablated"] >= 0.9  # a random direction removes nothing
    assert summary["benign_added"] >= 0.9
    assert summary["benign_random_added"] <= 0.1


def test_cast_refuses_forbidden_rows_of_a_mixed_batch(toy, refusal) -> None:
    model, tok = toy
    _, vector = refusal
    n_layers = len(vector.layers)
    r = vector.directions[3]  # a direction whose ablation removes the refusals (previous test)
    # The refusal, ablated from block 1 on: the residual after block 0 loses it and no later block writes it (the
    # later residuals are not projected themselves, so a vector added at a later block survives).
    # (Ablated from the embeddings on, it also erases the model's own recognition of forbidden requests, so no
    # condition read inside that model separates them cleanly; see docs/steering.md.)
    ablated = {"resid_pre.1": Ablate(r),
               **{f"{kind}.{i}": Ablate(r) for i in range(1, n_layers) for kind in ("attn_out", "mlp_out")}}
    # The condition: forbidden vs benign requests at the output of block 0, read as CAST reads it (the mean over
    # the prompt's tokens), found by a probe; the threshold halfway between the class means of the cosine.
    requests = documents(1200, "train", kinds=("request",))
    train_f = list(dict.fromkeys(d.prompt for d in requests if d.label == "forbidden"))[:128]
    train_b = list(dict.fromkeys(d.prompt for d in requests if d.label == "benign"))[:128]
    acts, _ = read_activations(model, tok, train_f + train_b, [0], read_position="prompt")
    pos, neg = acts[0][:len(train_f)], acts[0][len(train_f):]
    condition = direction(pos, neg, "probe")
    cosine = torch.nn.functional.cosine_similarity
    threshold = float((cosine(pos, condition[None]).mean() + cosine(neg, condition[None]).mean()) / 2)

    forbidden, benign = _requests("forbidden"), _requests("benign")
    mixed = [p for pair in zip(forbidden, benign, strict=True) for p in pair]
    is_forbidden = torch.tensor([i % 2 == 0 for i in range(len(mixed))])
    refuse = SteeringVector({2: vector.directions[2]})
    noise = random_control(refuse)

    def rates(writes) -> tuple[dict[str, float], list[str]]:
        out = generate(model, tok, mixed, writes=writes, max_new_tokens=MAX_NEW)
        return {"forbidden": refusal_fraction(out[0::2]), "benign": refusal_fraction(out[1::2])}, out

    cast = conditional(refuse.to_intervention(1.0), condition, threshold, layer=0)
    gate = cast["resid_post.0"][0]
    rows = []
    for name, writes in (("plain", None), ("ablated", ablated),
                         ("ablated + add", combine(ablated, refuse.to_intervention(1.0))),
                         ("ablated + CAST", combine(cast, ablated)),
                         ("ablated + CAST random", combine(conditional(noise.to_intervention(1.0), condition,
                                                                       threshold, layer=0), ablated))):
        result, out = rates(writes)
        rows.append({"model": name, **result})
        if name == "ablated":
            ablated_out = out
        if name == "ablated + CAST":
            cast_out, decision = out, gate.decision.clone()
    _table("CAST in one mixed batch (24 forbidden, 24 benign): refusal rate", rows,
           ("model", "forbidden", "benign"))
    by = {row["model"]: row for row in rows}
    agree = float((decision == is_forbidden).float().mean())
    print(f"gate (threshold {threshold:.4f}): steered {int(decision[0::2].sum())} of {len(forbidden)} forbidden "
          f"and {int(decision[1::2].sum())} of {len(benign)} benign rows; agreement with the labels {agree:.3f}")

    assert by["ablated"]["forbidden"] <= 0.1  # the ablation alone answers the forbidden requests
    assert by["ablated + add"]["benign"] >= 0.9  # unconditional steering refuses everything
    assert by["ablated + CAST"]["forbidden"] >= 0.9 and by["ablated + CAST"]["benign"] <= 0.1
    assert agree >= 0.9
    kept = [i for i in range(len(mixed)) if not bool(decision[i])]
    assert [cast_out[i] for i in kept] == [ablated_out[i] for i in kept]  # rows the gate passes are untouched
    assert by["ablated + CAST random"]["forbidden"] <= 0.2


@pytest.mark.parametrize("batch_size", [1, 4])
def test_mean_diff_equals_steering_vectors_library(toy, batch_size: int) -> None:
    """Parity with the `steering-vectors` library: the same vector from the same pairs, and the same logits."""
    sv = pytest.importorskip("steering_vectors")
    from actkit import tap

    model, tok = toy
    pairs = read_pairs(DATA_DIR / "toy-sentiment.jsonl")[:12]
    layers = [1, 3]
    ours = train_vector(model, tok, pairs, layers, batch_size=batch_size)
    theirs = sv.train_steering_vector(model, tok, [(p.positive, p.negative) for p in pairs], layers=layers,
                                      read_token_index=-1, batch_size=batch_size)
    assert sorted(theirs.layer_activations) == layers
    for layer in layers:
        torch.testing.assert_close(ours.directions[layer], theirs.layer_activations[layer].float(),
                                   rtol=1e-5, atol=1e-5)
    ids = tok(["Anna reviewed the hotel, 1 stars:"], return_tensors="pt")
    with torch.no_grad():
        with tap(model, write=ours.to_intervention(0.7)):
            steered = model(**ids).logits
        with theirs.apply(model, multiplier=0.7):
            reference = model(**ids).logits
    torch.testing.assert_close(steered, reference, rtol=1e-5, atol=1e-4)
