"""The steering evaluation protocol: seeded disjoint splits, the choice made on dev only, harmonic means, win rates."""

from __future__ import annotations

import pytest
import torch

from actkit.errors import ActkitError
from actkit.evaluate import protocol
from actkit.evaluate.judges import Concept, Criteria, harmonic
from actkit.evaluate.protocol import (
    choose,
    evaluate_steering,
    read_prompts,
    split_indices,
    summary,
    tuned_settings,
    win_rate,
)
from actkit.models.packaged import byte_tokenizer

from tiny import build


def test_splits_are_disjoint_cover_everything_and_follow_the_seed():
    dev, test = split_indices(20, 0.5, seed=3)
    assert set(dev).isdisjoint(test) and sorted(dev + test) == list(range(20))
    assert (dev, test) == split_indices(20, 0.5, seed=3)
    assert dev != split_indices(20, 0.5, seed=4)[0]
    assert len(dev) == 10
    small_dev, small_test = split_indices(4, 0.9, seed=0)  # at least two on each side
    assert len(small_dev) == 2 and len(small_test) == 2


def test_too_few_items_to_split_is_a_clear_error():
    with pytest.raises(ActkitError, match="3 prompts are too few to split"):
        split_indices(3, 0.5, seed=0)


def test_harmonic_mean_is_zero_when_any_criterion_is_zero():
    assert harmonic(2, 2, 0) == 0.0
    assert harmonic(0, 2, 2) == 0.0
    assert Criteria(2, 0, 2).harmonic == 0.0
    assert harmonic(2, 2, 2) == pytest.approx(2.0)
    assert harmonic(1, 2, 2) == pytest.approx(3 / (1 + 0.5 + 0.5))
    assert summary([Criteria(2, 2, 2), Criteria(2, 2, 0)])["harmonic"] == pytest.approx(1.0)


def test_choice_takes_the_best_dev_harmonic_then_the_smaller_factor_within_the_kl_budget():
    records = [{"layer": 1, "factor": 0.4, "harmonic": 1.0, "kl": 0.1},
               {"layer": 2, "factor": 0.2, "harmonic": 1.0, "kl": 0.1},
               {"layer": 3, "factor": 0.8, "harmonic": 1.5, "kl": 2.0}]
    assert choose(records)["layer"] == 3
    assert choose(records, kl_budget=1.0)["layer"] == 2
    with pytest.raises(ActkitError, match="KL budget"):
        choose(records, kl_budget=0.01)


def test_win_rate_counts_ties_as_half():
    a = [Criteria(2, 2, 2), Criteria(1, 1, 1), Criteria(0, 2, 2)]
    b = [Criteria(1, 1, 1), Criteria(1, 1, 1), Criteria(2, 2, 2)]
    assert win_rate(a, b) == pytest.approx((1 + 0.5 + 0) / 3)


def test_the_choice_follows_dev_and_the_report_follows_test(monkeypatch):
    """Plant a difference: on dev, layer 0 at factor 0.5 is best; on test, layer 2 at factor 1.0 would be.

    The chosen setting must be dev's, and the reported scores must be test's at dev's choice."""
    tokenizer = byte_tokenizer()
    model = build("llama")
    model.resize_token_embeddings(len(tokenizer))
    model.generation_config.eos_token_id = None
    seen: list[tuple[str, int | None, float | None]] = []

    def planted(self, split, writes, instruction):
        layer = None if not writes else int(next(iter(writes)).split(".")[1])
        factor = None if not writes else float(next(iter(writes.values())).coef)
        seen.append((split, layer, factor))
        best = (0, 0.5) if split == "dev" else (2, 1.0)
        good = (layer, factor) == best
        score = Criteria(2, 2, 2) if good else Criteria(1, 1, 1)
        scores = [score] * len(self.prompts[split])
        return {**summary(scores), "kl": 0.0, "scores": scores, "completions": [""] * len(scores)}

    monkeypatch.setattr(protocol._Run, "measure", planted)
    pairs = [(f"good day {i}", f"bad day {i}") for i in range(8)]
    prompts = [f"prompt {i}:" for i in range(8)]
    result = evaluate_steering(model, tokenizer, pairs, prompts, Concept("x", "Say x.", "positive"),
                               methods=["mean-diff"], layers=[0, 1, 2], factors=[0.5, 1.0], max_new_tokens=2,
                               batch_size=8)
    row = result["methods"][0]
    assert (row["layer"], row["factor"]) == (0, 0.5)
    assert row["test"]["harmonic"] == pytest.approx(1.0)  # test at dev's choice, not test's best (2.0)
    assert [(layer, factor) for split, layer, factor in seen if split == "test" and layer is not None] == [(0, 0.5)]
    assert len([1 for split, layer, _ in seen if split == "dev"]) == 6  # the whole grid, on dev only
    split = result["split"]
    assert set(split["dev_prompts"]).isdisjoint(split["test_prompts"])
    assert set(split["train_pair_indices"]).isdisjoint(split["test_pair_indices"])


def test_read_prompts_takes_lines_or_jsonl_and_names_the_bad_line(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\nsecond prompt\n")
    assert read_prompts(lines) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"prompt": "b", "id": 2}\n')
    assert read_prompts(jsonl) == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(ActkitError, match=r"bad.jsonl', line 3: expected a JSON object with a non-empty string "
                                          r"field 'prompt'; found 'text'"):
        read_prompts(bad)


def test_tuned_settings_read_back_and_refuse_a_malformed_entry():
    assert tuned_settings({}) is None
    assert tuned_settings({"tuned": {"coef": 0.2, "relative": True}}) == (0.2, True)
    with pytest.raises(ActkitError, match="'tuned' is malformed"):
        tuned_settings({"tuned": {"coef": "big", "relative": True}})


def test_unknown_method_is_refused_before_any_work():
    with pytest.raises(ActkitError, match="unknown method 'steer-harder'"):
        evaluate_steering(torch.nn.Linear(1, 1), None, [], [], Concept("x", "y", "positive"),
                          methods=["mean-diff", "steer-harder"])


def test_lineas_is_trained_on_the_training_pairs_only_and_its_strength_chosen_on_dev(monkeypatch):
    """The ``lineas`` method: maps at every block from the training pairs (never the held-out ones), each
    strength of `LINEAS_STRENGTHS` tried on dev, the dev choice (planted: 0.5) scored on test."""
    from actkit.steer.lineas import AffineMap

    tokenizer = byte_tokenizer()
    model = build("llama")
    model.resize_token_embeddings(len(tokenizer))
    model.generation_config.eos_token_id = None
    seen: list[tuple[str, float | None, int]] = []

    def planted(self, split, writes, instruction):
        maps = list((writes or {}).values())
        assert all(isinstance(m, AffineMap) for m in maps)
        strength = maps[0].strength if maps else None
        seen.append((split, strength, len(maps)))
        good = strength == (0.5 if split == "dev" else 1.0)
        scores = [Criteria(2, 2, 2) if good else Criteria(1, 1, 1)] * len(self.prompts[split])
        return {**summary(scores), "kl": 0.0, "scores": scores, "completions": [""] * len(scores)}

    trained_on: list[str] = []
    real = protocol.train_from_pairs

    def spy(model, tokenizer, pairs, layers, **options):
        trained_on.extend(p.positive for p in pairs)
        return real(model, tokenizer, pairs, layers, **options)

    monkeypatch.setattr(protocol._Run, "measure", planted)
    monkeypatch.setattr(protocol, "train_from_pairs", spy)
    pairs = [(f"good day {i}", f"bad day {i}") for i in range(10)]
    result = evaluate_steering(model, tokenizer, pairs, [f"prompt {i}:" for i in range(8)],
                               Concept("x", "Say x.", "positive"), methods=["lineas"], max_new_tokens=2,
                               batch_size=8, lineas={"steps": 2})
    row = result["methods"][0]
    assert (row["method"], row["layer"], row["factor"]) == ("lineas", None, 0.5)
    assert row["test"]["harmonic"] == pytest.approx(1.0)  # test at dev's choice, not test's best
    assert [s for split, s, _ in seen if split == "dev"] == list(protocol.LINEAS_STRENGTHS)
    assert {n for _, s, n in seen if s is not None} == {model.config.num_hidden_layers}  # every block
    held_out = {pairs[i][0] for i in result["split"]["test_pair_indices"]}
    assert trained_on and not held_out & set(trained_on)
