"""Dynamic composition, backtracking and the caller's own vectors as methods of the evaluation harness.

The harness measures an adaptive method's KL with writes that replay each row as it was generated; so the replayed
teacher-forced distributions must equal the ones the decode loop chose every token from."""

from __future__ import annotations

import pytest
import torch

from actkit.core.decode import decode_ids
from actkit.errors import ActkitError
from actkit.evaluate.judges import Concept
from actkit.evaluate.likelihood import continuation_log_softmax
from actkit.evaluate.protocol import choose, evaluate_steering
from actkit.models.packaged import byte_tokenizer
from actkit.steer import SteeringVector
from actkit.steer.backtrack import Backtracking, backtrack_generate, vector_probe
from actkit.steer.backtrack import replay_writes as backtrack_replay
from actkit.steer.dynamic import DynamicComposition
from actkit.steer.dynamic import replay_writes as dynamic_replay

from backtrack_helpers import RoundTrip, probe_scores
from tiny import DecodingTokenizer, build


@pytest.fixture(scope="module")
def llama():
    model = build("llama")
    model.generation_config.eos_token_id = None  # fixed lengths
    return model


def _vectors() -> list[SteeringVector]:
    g = torch.Generator().manual_seed(0)
    return [SteeringVector({1: torch.randn(64, generator=g) * 2}), SteeringVector({2: torch.randn(64, generator=g) * 2})]


def _recorder(records: list[dict[int, torch.Tensor]]):
    """A decode callback keeping, per row, the log-distribution each kept token was chosen from."""

    def record(step) -> None:
        for r, kept in enumerate(step.generated):
            if not step.finished[r] and not step.rolled_back[r]:
                records[r][len(kept)] = torch.log_softmax(step.logits[r].double(), -1)

    return record


def _replayed(model, contexts, ids, writes) -> dict[int, torch.Tensor]:
    rows = list(zip(contexts, ids, strict=True))
    return {i: lp for i, _, lp in continuation_log_softmax(model, rows, writes, batch_size=2)}


def test_a_dynamic_generation_replays_in_one_teacher_forced_pass(llama) -> None:
    tok = DecodingTokenizer()
    prompts = ["the quick brown fox", "hi", "steering vectors", "ab"]
    vectors = _vectors()
    composition = DynamicComposition(vectors, len(prompts), alpha_max=3.0)
    records: list[dict[int, torch.Tensor]] = [{} for _ in prompts]
    ids = decode_ids(llama, tok, prompts, writes=composition.writes, callbacks=[composition, _recorder(records)],
                     max_new_tokens=6)
    contexts = [tok(p)["input_ids"] for p in prompts]
    assert any(a > 0.05 for row in composition.alphas for step in row for a in step)
    replay = dynamic_replay(vectors, composition.alphas, [len(c) for c in contexts])
    replayed = _replayed(llama, contexts, ids, replay)  # two rows per pass: the writes follow the batch's rows
    plain = _replayed(llama, contexts, ids, None)
    for r in range(len(prompts)):
        chosen = torch.stack([records[r][t] for t in range(len(ids[r]))])
        assert torch.allclose(replayed[r], chosen, atol=1e-4)
        assert not torch.allclose(plain[r], chosen, atol=1e-2)  # the replay does steer


@pytest.mark.parametrize("strength", ["fixed", "confidence"])
def test_a_backtracked_generation_replays_in_one_teacher_forced_pass(llama, strength) -> None:
    tok = RoundTrip()
    steer, other = _vectors()
    prompts = [tok.decode([5, 6, 7, 8, 9]), tok.decode([3, 4]), tok.decode([10, 11, 12, 13]), tok.decode([20])]
    probe = vector_probe(other, 2, 0.0)
    peaks = sorted(max(s[1:]) for s in probe_scores(llama, tok, prompts, probe, 10))
    probe.threshold = (peaks[1] + peaks[2]) / 2  # two rows cross it, two never do
    result = backtrack_generate(llama, tok, prompts, probe, steer, coef=1.5, k=3, max_new_tokens=10,
                                strength=strength)
    assert sorted(result.backtracks) == [0, 0, 1, 1]
    assert [s is None for s in result.starts] == [b == 0 for b in result.backtracks]
    watch = Backtracking(probe, steer, len(prompts), coef=1.5, k=3, strength=strength)
    records: list[dict[int, torch.Tensor]] = [{} for _ in prompts]
    ids = decode_ids(llama, tok, prompts, writes=watch.writes, reads=watch.reads,
                     callbacks=[watch, _recorder(records)], max_new_tokens=10)
    assert ids == result.ids
    contexts = [tok(p)["input_ids"] for p in prompts]
    replayed = _replayed(llama, contexts, ids, backtrack_replay(result, steer))
    plain = _replayed(llama, contexts, ids, None)
    for r in range(len(prompts)):
        chosen = torch.stack([records[r][t] for t in range(len(ids[r]))])
        assert torch.allclose(replayed[r], chosen, atol=1e-4)
        assert torch.allclose(plain[r], chosen, atol=1e-4) == (result.backtracks[r] == 0)


def _tiny():
    tokenizer = byte_tokenizer()
    model = build("llama")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    model.generation_config.eos_token_id = None
    return model, tokenizer


PAIRS = [(f"I love my cat {i}.", f"I love my car {i}.") for i in range(8)]
PROMPTS = [f"Prompt number {i}:" for i in range(6)]
CATS = Concept("cats", "Talk about cats.", "words:cat,cats")


def test_the_harness_runs_adaptive_methods_and_ones_own_vectors() -> None:
    model, tokenizer = _tiny()
    g = torch.Generator().manual_seed(1)
    own = SteeringVector({2: torch.randn(64, generator=g)}, metadata={"mean_norms": {"2": 3.0}})
    result = evaluate_steering(model, tokenizer, PAIRS, PROMPTS, CATS, methods=["dynamic", "backtrack"],
                               layers=[0, 1], factors=[0.5, 2.0], max_new_tokens=4, batch_size=2,
                               vectors={"mine": own})
    rows = {m["method"]: m for m in result["methods"]}
    assert set(rows) == {"dynamic", "backtrack", "mine"}
    for name in ("dynamic", "backtrack"):
        row = rows[name]
        assert [(r["layer"], r["factor"]) for r in row["dev"]] == [(0, 0.5), (0, 2.0), (1, 0.5), (1, 2.0)]
        best = choose(row["dev"])
        assert (row["layer"], row["factor"]) == (best["layer"], best["factor"])
        assert row["test"]["perplexity"] is None and row["likelihood"] is None  # no fixed intervention
        assert row["test"]["kl"] >= 0.0 and len(row["examples"]) == result["split"]["test"]
    assert all(0.0 < r["mean_coef"] <= r["factor"] + 1e-6 for r in rows["dynamic"]["dev"])
    assert all(r["kl"] > 0.0 for r in rows["dynamic"]["dev"])  # unsteered passes agree exactly: 0 means no replay
    assert all(0.0 <= r["rows_backtracked"] <= 1.0 for r in rows["backtrack"]["dev"])
    assert isinstance(rows["backtrack"]["threshold"], float)
    assert [r["layer"] for r in rows["mine"]["dev"]] == [2, 2]  # its own block, not the grid's
    assert rows["mine"]["test"]["perplexity"] > 0 and rows["mine"]["likelihood"] is not None


def test_ones_own_vectors_are_checked_before_any_work() -> None:
    model, tokenizer = _tiny()
    fine = SteeringVector({1: torch.ones(64)}, metadata={"mean_norms": {"1": 1.0}})
    with pytest.raises(ActkitError, match="not a built-in method"):
        evaluate_steering(model, tokenizer, PAIRS, PROMPTS, CATS, methods=["prompt"], vectors={"mean-diff": fine})
    with pytest.raises(ActkitError, match="does not fit"):
        evaluate_steering(model, tokenizer, PAIRS, PROMPTS, CATS, methods=["prompt"],
                          vectors={"wide": SteeringVector({1: torch.ones(65)})})
