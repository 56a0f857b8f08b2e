"""The evaluation protocol for in-context tasks (function vectors): choose on development examples, report on test.

`evaluate_steering` judges concepts in generated text; a task such as antonyms has a right answer instead, so
`evaluate_task` applies the same protocol with an accuracy judge:

1. **Splits** (seeded, stated in the result): the examples into a *train* half (`split_indices`, half each way)
   and a held-out half, which is split again (`split_indices`, `dev_fraction`) into *dev* and *test* examples.
   Vectors are found on the train examples only, and the prompting baseline draws its demonstrations from them;
   the layer and coefficient are chosen on dev; every reported number is on test (40 examples: 20 / 10 / 10).
2. **Methods** (`TASK_METHODS`): ``function-vector`` (`actkit.localize.function_vector` on the train examples,
   its heads fixed once; the same summed vector is added after whichever candidate block is tried);
   ``mean-diff`` (`actkit.localize.function_vectors.task_vector`: mean last-token activation of in-context
   prompts minus zero-shot prompts, at each candidate block); ``random`` (a random direction with the function
   vector's norm, `random_control`); ``prompt`` (in context: `shots` train demonstrations before the query; no
   grid). Every vector is added at ``resid_post.{layer}``, the last token of the zero-shot prompt ``"{x}:"``.
3. **Choice on dev**: every (layer, coef) of the grid; the score is the top-1 accuracy of the first answer token
   (as `zero_shot_accuracy`); ties go to the smaller coefficient, then the lower layer (`choose`), among the
   settings whose dev KL is within `kl_budget` when one is given.
4. **Test**: the chosen setting's accuracy, the answer token's mean probability, the mean
   ``KL(unsteered || method)`` (nats) of the next-token distribution at the query's last token (the prompting
   baseline: after its demonstrations, against the zero-shot prompt unsteered), and the win rate against
   prompting (per test example: 1 when the method is right and prompting wrong, 1/2 when both are right or both
   wrong, 0 otherwise).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.hooks import tap
from actkit.core.interventions import Add, Intervention
from actkit.core.layers import resolve_layers
from actkit.core.positions import Last
from actkit.errors import ActkitError
from actkit.evaluate.protocol import choose, split_indices
from actkit.evaluate.shift import random_control
from actkit.localize.function_vectors import (
    QUERY,
    first_token,
    function_vector,
    icl_prompt,
    task_vector,
)
from actkit.steer.vectors import SteeringVector

#: Every method `evaluate_task` accepts (all run by default).
TASK_METHODS = ("function-vector", "mean-diff", "random", "prompt")
#: Coefficients tried on the dev examples (absolute: the vector as found, times the coefficient).
DEFAULT_COEFS = (1.0, 2.0, 4.0)

Example = tuple[str, str]


def task_layers(model: nn.Module) -> list[int]:
    """The default candidate blocks: n/6, n/3 (where `function_vector` adds its vector), n/2 and 2n/3."""
    n = Anatomy.of(model).n_layers
    return sorted({max(0, n // 6), n // 3, n // 2, (2 * n) // 3})


def prompt_rows(demonstrations: Sequence[Example], queries: Sequence[Example], shots: int,
                seed: int) -> list[Example]:
    """The prompting baseline's (prompt, answer) per query: `shots` demonstrations drawn (seeded, in order of the
    queries) from `demonstrations`, then the query."""
    rng = random.Random(seed)
    return [(icl_prompt(rng.sample(list(demonstrations), shots), x), y) for x, y in queries]


def _writes(vector: torch.Tensor, layer: int, coef: float) -> dict[str, Intervention]:
    return {f"resid_post.{layer}": Add(vector, coef, positions=Last())}


class _Scorer:
    """Next-token distributions at the last token of each prompt, scored against the unsteered zero-shot ones."""

    def __init__(self, model: nn.Module, tokenizer: Any, splits: dict[str, list[Example]]):
        self.model, self.tokenizer = model, tokenizer
        self.examples = splits
        self.answers = {s: torch.tensor([first_token(tokenizer, y) for _, y in rows]) for s, rows in splits.items()}
        self.zero = {s: [QUERY.format(x=x) for x, _ in rows] for s, rows in splits.items()}
        self.base = {s: self.logprobs(texts, None) for s, texts in self.zero.items()}

    def logprobs(self, texts: Sequence[str], writes: dict[str, Intervention] | None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        rows = []
        with torch.no_grad(), tap(self.model, write=writes or {}):
            for text in texts:
                ids = torch.tensor([list(self.tokenizer(text)["input_ids"])], device=device)
                rows.append(torch.log_softmax(self.model(input_ids=ids).logits[0, -1].float(), -1).cpu())
        return torch.stack(rows)

    def measure(self, split: str, writes: dict[str, Intervention] | None,
                texts: Sequence[str] | None = None) -> dict[str, Any]:
        """Accuracy, answer probability and KL on a split: zero-shot prompts with `writes`, or `texts` as given."""
        logp = self.logprobs(self.zero[split] if texts is None else texts, writes)
        answers, base = self.answers[split], self.base[split]
        hits = (logp.argmax(-1) == answers).tolist()
        prob = logp.gather(1, answers[:, None])[:, 0].exp()
        kl = (base.exp() * (base - logp)).sum(-1).clamp_min(0.0)
        return {"accuracy": sum(hits) / len(hits), "answer_prob": float(prob.mean()), "kl": float(kl.mean()),
                "hits": [int(h) for h in hits]}


def _wins(hits: Sequence[int], baseline: Sequence[int]) -> float:
    """Per example, 1 when `hits` is right and `baseline` wrong, 1/2 when they agree, 0 otherwise; averaged."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(hits, baseline, strict=True)) / len(hits)


def _check(examples: Sequence[Example], methods: Sequence[str], coefs: Sequence[float], shots: int, prompts: int,
           dev_fraction: float, kl_budget: float | None) -> list[str]:
    if not methods:
        raise ActkitError(f"no methods given; use some of {', '.join(TASK_METHODS)}")
    unknown = [m for m in methods if m not in TASK_METHODS]
    if unknown:
        raise ActkitError(f"unknown method {unknown[0]!r}; use some of {', '.join(TASK_METHODS)}")
    if not coefs or any(not math.isfinite(c) or c <= 0 for c in coefs):
        raise ActkitError(f"coefficients must be positive finite numbers such as 1,2,4; got {list(coefs)}")
    if shots < 1 or prompts < 1:
        raise ActkitError(f"shots and prompts must be at least 1, got {shots} and {prompts}")
    if not 0.0 < dev_fraction < 1.0:
        raise ActkitError(f"the dev fraction must lie strictly between 0 and 1, got {dev_fraction}")
    if kl_budget is not None and not kl_budget > 0:
        raise ActkitError(f"the KL budget must be a positive number of nats, got {kl_budget}")
    least = max(2 * (shots + 2), 8)
    if len(examples) < least:
        raise ActkitError(f"{len(examples)} examples are too few for {shots} shots: the train half needs shots + 2 "
                          f"= {shots + 2} (demonstrations, a query, an output to shuffle in) and the held-out half "
                          f"4 (2 dev, 2 test); give at least {least} examples or fewer shots")
    for x, y in examples:
        if not str(x).strip() or not str(y).strip():
            raise ActkitError(f"an example has an empty input or output: {(x, y)!r}; remove it")
    return list(dict.fromkeys(methods))


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    methods: Sequence[str] = TASK_METHODS,
    layers: Sequence[int] | None = None,
    coefs: Sequence[float] = DEFAULT_COEFS,
    shots: int = 5,
    prompts: int = 12,
    top: int = 10,
    seed: int = 0,
    dev_fraction: float = 0.5,
    kl_budget: float | None = None,
    task: str = "task",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate function vectors, a mean-difference task vector and a random direction against prompting on an
    in-context task, each tuned on dev examples and scored on test ones (see the module docstring).

    Arguments:
        model, tokenizer: the model.
        examples: (input, output) pairs of the task; the answer is the first token of ``" " + output``.
        methods: some of `TASK_METHODS`.
        layers: the candidate blocks (None: `task_layers`).
        coefs: the coefficients tried (absolute, positive).
        shots: demonstrations per in-context prompt (finding vectors, and the prompting baseline).
        prompts: in-context prompts for `function_vector` (and as many shuffled) and for the mean-diff means.
        top: heads summed into the function vector.
        seed: the seed of both splits, of the prompts drawn and of the random direction.
        dev_fraction: the share of the held-out half used for dev.
        kl_budget: the largest dev KL (nats) a chosen setting may have (None: no limit).
        task: the task's name, recorded.
        log: called with a line of progress now and then.

    Returns:
        A JSON-ready dict: ``task``, ``split``, ``grid``, ``unsteered`` (dev and test), ``methods`` (best test
        accuracy first: ``method``, ``layer``, ``coef``, ``dev`` (every dev record), ``test``,
        ``win_rate_vs_prompt``; ``heads`` for the function vector), ``seconds``.

    Raises:
        ActkitError: too few examples for the split and the shots, an unknown method, non-positive coefficients,
            a layer the model does not have.
    """
    start = time.monotonic()
    chosen = _check(examples, methods, coefs, shots, prompts, dev_fraction, kl_budget)
    grid = task_layers(model) if layers is None else resolve_layers(model, list(layers))
    say = log or (lambda line: None)
    items = [(str(x), str(y)) for x, y in examples]
    train_idx, held = split_indices(len(items), 0.5, seed, "examples", ("train", "held-out"))
    dev_pos, test_pos = split_indices(len(held), dev_fraction, seed, "held-out examples")
    dev_idx, test_idx = [held[i] for i in dev_pos], [held[i] for i in test_pos]
    train = [items[i] for i in train_idx]
    scorer = _Scorer(model, tokenizer, {"dev": [items[i] for i in dev_idx], "test": [items[i] for i in test_idx]})
    say(f"splits: {len(train)} train / {len(dev_idx)} dev / {len(test_idx)} test examples; layers {grid}, "
        f"coefs {list(coefs)}")
    unsteered = {s: scorer.measure(s, None) for s in ("dev", "test")}
    vectors: dict[str, dict[int, torch.Tensor]] = {}
    extra: dict[str, dict[str, Any]] = {}
    if "function-vector" in chosen or "random" in chosen:
        found = time.monotonic()
        fv = function_vector(model, tokenizer, train, shots=shots, prompts=prompts, top=top, seed=seed)
        vectors["function-vector"] = dict.fromkeys(grid, fv.vector)
        extra["function-vector"] = {"heads": [list(h) for h in fv.heads], "found_at_layer": fv.layer,
                                    "norm": float(fv.vector.norm()), "seconds_to_find": time.monotonic() - found}
        noise = random_control(SteeringVector({0: fv.vector}), seed=seed).directions[0]
        vectors["random"] = dict.fromkeys(grid, noise)
        extra["random"] = {"norm": float(noise.norm()), "random_seed": seed}
        say(f"function vector: heads {fv.heads}, norm {float(fv.vector.norm()):.3f}")
    if "mean-diff" in chosen:
        vectors["mean-diff"] = task_vector(model, tokenizer, train, grid, shots=shots, prompts=prompts, seed=seed)
        extra["mean-diff"] = {"norms": {str(k): float(v.norm()) for k, v in vectors["mean-diff"].items()}}
    rows = {s: prompt_rows(train, scorer.examples[s], shots, seed) for s in ("dev", "test")}
    results = []
    for method in chosen:
        records: list[dict[str, Any]] = []
        if method == "prompt":
            found_dev = scorer.measure("dev", None, [text for text, _ in rows["dev"]])
            records.append({"layer": None, "coef": None, **_public(found_dev)})
            best = records[0]
            test = scorer.measure("test", None, [text for text, _ in rows["test"]])
        else:
            for layer in grid:
                for coef in coefs:
                    found_dev = scorer.measure("dev", _writes(vectors[method][layer], layer, coef))
                    records.append({"layer": layer, "coef": float(coef), **_public(found_dev)})
            least = min(r["kl"] for r in records)
            if kl_budget is not None and least > kl_budget:
                raise ActkitError(f"{method}: no (layer, coef) stays within the KL budget of {kl_budget:g} nats on "
                                  f"the dev examples (the smallest KL was {least:.4g}); raise the budget or try "
                                  "smaller coefficients")
            best = choose(records, kl_budget, key="accuracy", strength="coef")
            test = scorer.measure("test", _writes(vectors[method][best["layer"]], best["layer"], best["coef"]))
        say(f"{method}: layer {best['layer']}, coef {best['coef']}: dev accuracy {best['accuracy']:.2f}, test "
            f"{test['accuracy']:.2f}")
        results.append({"method": method, "layer": best["layer"], "coef": best["coef"], "test": test, "dev": records,
                        **extra.get(method, {})})
    prompt_hits = next((r["test"]["hits"] for r in results if r["method"] == "prompt"), None)
    for r in results:
        r["win_rate_vs_prompt"] = (None if prompt_hits is None or r["method"] == "prompt"
                                   else _wins(r["test"]["hits"], prompt_hits))
    results.sort(key=lambda r: -r["test"]["accuracy"])
    return {
        "task": task,
        "split": {"seed": seed, "dev_fraction": dev_fraction, "train": len(train_idx), "dev": len(dev_idx),
                  "test": len(test_idx), "train_indices": train_idx, "dev_indices": dev_idx,
                  "test_indices": test_idx},
        "grid": {"layers": grid, "coefs": [float(c) for c in coefs], "kl_budget": kl_budget, "shots": shots,
                 "prompts": prompts, "top": top, "site": "resid_post", "position": "last"},
        "unsteered": unsteered,
        "methods": results,
        "seconds": time.monotonic() - start,
    }


def _public(found: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k != "hits"}


__all__ = ["DEFAULT_COEFS", "TASK_METHODS", "evaluate_task", "prompt_rows", "task_layers"]
