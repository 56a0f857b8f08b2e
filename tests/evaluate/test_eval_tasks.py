"""The task protocol (`evaluate_task`): seeded disjoint splits, the dev-best choice, test numbers that equal the
library's own measures computed apart, KL, the prompting baseline, bad input, and ``actkit eval task``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actkit import ActkitError
from actkit.core.hooks import Capture, tap
from actkit.evaluate import evaluate_task
from actkit.evaluate.protocol import choose
from actkit.evaluate.tasks import _Scorer, _writes, prompt_rows
from actkit.localize.function_vectors import (
    QUERY,
    FunctionVector,
    first_token,
    function_vector,
    task_vector,
    zero_shot_accuracy,
)

from cli_helpers import assert_bad_input, invoke
from tiny import DecodingTokenizer, build

SHOTS, PROMPTS, TOP, COEFS = 2, 2, 2, (1.0, 4.0)


class Tok(DecodingTokenizer):
    """One id per character, spaces dropped: the answer's first token is its first letter."""

    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        return super().__call__(text.replace(" ", ""))


def _char(token: int) -> str:
    """A character the tokenizer maps to `token` (ids 1..31)."""
    return chr(token - 1 + 62)


@pytest.fixture(scope="module")
def llama():
    return build("llama")


@pytest.fixture(scope="module")
def examples(llama):
    """16 examples; every other one's answer is the model's own zero-shot guess, so accuracies are not all 0."""
    tok = Tok()
    inputs = [a + b for a, b in zip("abcdefghijklmnop", "qrstuvwxyzqrstuv", strict=True)]
    out = []
    for k, x in enumerate(inputs):
        with torch.no_grad():
            guess = int(llama(input_ids=torch.tensor([tok(QUERY.format(x=x))["input_ids"]])).logits[0, -1].argmax())
        out.append((x, _char(guess) + "z" if k % 2 == 0 and guess > 0 else x[::-1]))
    return out


@pytest.fixture(scope="module")
def result(llama, examples):
    return evaluate_task(llama, Tok(), examples, shots=SHOTS, prompts=PROMPTS, top=TOP, coefs=COEFS)


def _parts(result, examples):
    s = result["split"]
    return ([examples[i] for i in s["train_indices"]], [examples[i] for i in s["dev_indices"]],
            [examples[i] for i in s["test_indices"]])


def test_splits_are_disjoint_complete_and_seeded(llama, examples, result):
    s = result["split"]
    train, dev, test = set(s["train_indices"]), set(s["dev_indices"]), set(s["test_indices"])
    assert (len(train), len(dev), len(test)) == (8, 4, 4) == (s["train"], s["dev"], s["test"])
    assert not (train & dev or train & test or dev & test) and train | dev | test == set(range(16))
    again = evaluate_task(llama, Tok(), examples, methods=["mean-diff"], shots=SHOTS, prompts=PROMPTS, layers=[1],
                          coefs=COEFS)
    other = evaluate_task(llama, Tok(), examples, methods=["mean-diff"], shots=SHOTS, prompts=PROMPTS, layers=[1],
                          coefs=COEFS, seed=1)
    keys = ("train_indices", "dev_indices", "test_indices")
    assert [again["split"][k] for k in keys] == [s[k] for k in keys]
    assert [other["split"][k] for k in keys] != [s[k] for k in keys]


def test_the_chosen_setting_is_the_dev_best_by_the_tie_rule(result):
    assert result["grid"]["layers"] == [0, 1, 2]  # n/6, n/3, n/2, 2n/3 of 3 blocks
    for m in result["methods"]:
        if m["method"] == "prompt":
            assert len(m["dev"]) == 1 and m["layer"] is None and m["coef"] is None
            continue
        assert len(m["dev"]) == 3 * len(COEFS)
        best = max(r["accuracy"] for r in m["dev"])
        tied = [r for r in m["dev"] if r["accuracy"] == best]
        coef = min(r["coef"] for r in tied)
        layer = min(r["layer"] for r in tied if r["coef"] == coef)
        assert (m["layer"], m["coef"]) == (layer, coef), m["method"]
    records = [{"layer": 2, "coef": 1.0, "accuracy": 0.5, "kl": 0.1}, {"layer": 1, "coef": 4.0, "accuracy": 0.5,
                                                                        "kl": 0.1},
               {"layer": 0, "coef": 1.0, "accuracy": 0.5, "kl": 0.3}, {"layer": 1, "coef": 2.0, "accuracy": 0.9,
                                                                        "kl": 2.0}]
    rule = {"key": "accuracy", "strength": "coef"}
    assert choose(records, **rule)["coef"] == 2.0
    assert (choose(records, 1.0, **rule)["layer"], choose(records, 0.2, **rule)["layer"]) == (0, 2)


def test_function_vector_numbers_equal_the_library_measures_computed_apart(llama, examples, result):
    tok = Tok()
    train, _, test = _parts(result, examples)
    row = next(m for m in result["methods"] if m["method"] == "function-vector")
    fv = function_vector(llama, tok, train, shots=SHOTS, prompts=PROMPTS, top=TOP, seed=0)
    assert row["heads"] == [list(h) for h in fv.heads]
    moved = FunctionVector(fv.vector, row["layer"], fv.heads, fv.effects)
    assert row["test"]["accuracy"] == zero_shot_accuracy(llama, tok, test, moved, coef=row["coef"])
    probs, kls = [], []
    with torch.no_grad():
        for x, y in test:
            ids = torch.tensor([tok(QUERY.format(x=x))["input_ids"]])
            base = torch.log_softmax(llama(input_ids=ids).logits[0, -1], -1)
            with tap(llama, write=moved.writes(row["coef"])):
                steered = torch.log_softmax(llama(input_ids=ids).logits[0, -1], -1)
            probs.append(float(steered[first_token(tok, y)].exp()))
            kls.append(float((base.exp() * (base - steered)).sum()))
    assert row["test"]["answer_prob"] == pytest.approx(sum(probs) / len(probs), rel=1e-5)
    assert row["test"]["kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert result["unsteered"]["test"]["accuracy"] == zero_shot_accuracy(llama, tok, test)
    assert 0.0 < result["unsteered"]["test"]["accuracy"]  # the guesses planted in the fixture are in the test set


def test_kl_is_zero_unsteered_and_at_coefficient_zero_positive_with_a_vector(llama, examples, result):
    assert result["unsteered"]["test"]["kl"] == 0.0 and result["unsteered"]["dev"]["kl"] == 0.0
    for m in result["methods"]:
        assert m["test"]["kl"] > 1e-6, m["method"]
    _, dev, _ = _parts(result, examples)
    scorer = _Scorer(llama, Tok(), {"dev": dev})
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert scorer.measure("dev", _writes(vector, 1, 0.0))["kl"] == 0.0
    assert scorer.measure("dev", _writes(vector, 1, 1.0))["kl"] > 1e-6


def test_prompt_row_is_in_context_accuracy_with_train_demonstrations(llama, examples, result):
    tok = Tok()
    train, _, test = _parts(result, examples)
    rows = prompt_rows(train, test, SHOTS, 0)
    hits = []
    with torch.no_grad():
        for (text, y), (x, _) in zip(rows, test, strict=True):
            demos = [line.split(":")[0] for line in text.split("\n")[:-1]]
            assert len(demos) == SHOTS and set(demos) <= {a for a, _ in train} and text.endswith(f"\n{x}:")
            logits = llama(input_ids=torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
            hits.append(int(int(logits.argmax()) == first_token(tok, y)))
    row = next(m for m in result["methods"] if m["method"] == "prompt")
    assert row["test"]["hits"] == hits and row["test"]["accuracy"] == sum(hits) / len(hits)
    assert row["win_rate_vs_prompt"] is None
    for m in result["methods"]:
        if m["method"] != "prompt":
            expected = sum(1.0 if a > b else 0.5 if a == b else 0.0
                           for a, b in zip(m["test"]["hits"], hits, strict=True)) / len(hits)
            assert m["win_rate_vs_prompt"] == expected
    accuracies = [m["test"]["accuracy"] for m in result["methods"]]
    assert accuracies == sorted(accuracies, reverse=True)


def test_mean_diff_is_in_context_minus_zero_shot_means(llama, examples):
    tok = Tok()
    train = examples[:8]
    vector = task_vector(llama, tok, train, [1], shots=SHOTS, prompts=PROMPTS, seed=0)[1]
    from actkit.localize.function_vectors import _prompts

    def mean(texts):
        cap, total = Capture(), torch.zeros(64, dtype=torch.float64)
        for text in texts:
            with torch.no_grad(), tap(llama, read={"resid_post.1": cap}):
                llama(input_ids=torch.tensor([tok(text)["input_ids"]]))
            total += cap.last[0, -1].double()
        return total / len(texts)

    icl = [text for text, _ in _prompts(train, SHOTS, PROMPTS, 0, shuffled=False)]
    expected = mean(icl) - mean([QUERY.format(x=x) for x, _ in train])
    assert torch.allclose(vector.double(), expected, atol=1e-5) and float(expected.norm()) > 0


def test_bad_input_names_the_problem_and_the_fix(llama, examples):
    tok = Tok()
    with pytest.raises(ActkitError, match="too few for 2 shots.*at least 8 examples or fewer shots"):
        evaluate_task(llama, tok, examples[:7], shots=SHOTS)
    with pytest.raises(ActkitError, match="at least 14 examples"):
        evaluate_task(llama, tok, examples[:12], shots=5)
    with pytest.raises(ActkitError, match="unknown method 'probe'; use some of function-vector"):
        evaluate_task(llama, tok, examples, methods=["probe"], shots=SHOTS)
    with pytest.raises(ActkitError, match="positive finite"):
        evaluate_task(llama, tok, examples, coefs=(1.0, 0.0), shots=SHOTS)
    with pytest.raises(ActkitError, match="layer 5 does not exist; the model has 3 blocks"):
        evaluate_task(llama, tok, examples, layers=[5], shots=SHOTS)
    with pytest.raises(ActkitError, match="mean-diff: no .layer, coef. stays within the KL budget of 1e-09 nats"):
        evaluate_task(llama, tok, examples, methods=["mean-diff"], layers=[1], shots=SHOTS, prompts=PROMPTS,
                      kl_budget=1e-9)


def _task(tmp_path: Path) -> Path:
    names = ["Anna", "Tom", "Lisa", "Mark", "John", "Mary", "Sarah", "David", "Emma", "James", "Kate", "Paul"]
    path = tmp_path / "copy.jsonl"
    path.write_text("".join(json.dumps({"input": n, "output": n}) + "\n" for n in names))
    return path


@pytest.mark.usefixtures("cached_load")
def test_eval_task_cli_json_out_and_bad_input(tmp_path: Path) -> None:
    task, out = _task(tmp_path), tmp_path / "task.json"
    fast = ["--model", "builtin:toy-dense", "--shots", "2", "--prompts", "2", "--top", "2"]
    result = invoke("eval", "task", "--task", task, *fast, "--layers", "0,1", "--coefs", "1,2", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert (printed["split"]["train"], printed["split"]["dev"], printed["split"]["test"]) == (6, 3, 3)
    assert {m["method"] for m in printed["methods"]} == {"function-vector", "mean-diff", "random", "prompt"}
    assert printed["grid"]["layers"] == [0, 1] and printed["grid"]["coefs"] == [1.0, 2.0]
    assert printed["environment"]["threads"] >= 1
    assert_bad_input(invoke("eval", "task", "--task", task, *fast, "--out", out), "exists", "--force")
    assert_bad_input(invoke("eval", "task", "--task", "synonyms"), "neither a shipped task")
    assert_bad_input(invoke("eval", "task", "--task", task, "--methods", "fv"), "use some of function-vector")
    assert_bad_input(invoke("eval", "task", "--task", task, "--coefs", "1,-2"), "positive numbers")
    assert_bad_input(invoke("eval", "task", "--task", task, *fast, "--layers", "9"), "layer 9 does not exist")
