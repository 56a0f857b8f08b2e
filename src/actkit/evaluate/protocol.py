"""The steering evaluation protocol: choose each method's layer and factor on development prompts, report on test.

AxBench (Wu et al., 2025) found that prompting beats every steering method once each is tuned on one split and
scored on another; Pres et al. ask for likelihood scores beside generation scores. `evaluate_steering` follows both:

1. **Splits** (seeded, stated in the result): the prompts into development and test (`split_indices`), the pairs
   into training and test. Vectors are trained on the training pairs only; likelihood margins use the test pairs.
2. **Methods**: the steering directions ``mean-diff``, ``pca-diff``, ``probe`` and ``actadd`` (its first
   training pair); ``random``, a random direction with the norm of the mean-diff vector at each layer; and
   ``prompt``, the prompting baseline (the concept's instruction written before each prompt). On request,
   ``lineas``: LinEAS maps at every block, trained on the training pairs (negatives as source, positives as
   target), their strength chosen from `LINEAS_STRENGTHS` (they have no single layer); ``dynamic`` and
   ``backtrack``: the mean-diff vector steered by dynamic composition or by backtracking on a probe
   (`actkit.evaluate.adaptive`: their KL is measured with writes that replay each row as it was generated; they
   have no perplexity or likelihood margin). Vectors of the caller's own (files: SAE features, other tools) are
   methods too, named by the caller, tried at their own blocks.
3. **Choice on development prompts**: every steering method is tried at every (layer, factor) of the grid
   (factors are relative: fractions of the mean residual norm at the layer, the same strength whatever the
   method), its greedy continuations judged (`actkit.evaluate.judges`); the setting with the highest mean
   harmonic score wins (ties: the smaller factor, then the lower layer), among those whose KL stays within
   `kl_budget` when one is given.
4. **Test**: the chosen setting is scored on the test prompts: mean concept, instruction and fluency (0-2), mean
   harmonic score, KL to the unsteered model, perplexity on reference text, the likelihood margin on the test pairs,
   and the win rate against prompting (per test prompt: 1 when the method's harmonic score is higher, 1/2 on a tie).

KL is the mean per-token ``KL(unsteered || method)`` of the next-token distributions over the method's own test
continuations (the prompting baseline sees its instruction, the unsteered model does not); perplexity is the
method's on reference texts (steering at every token; the prompting baseline with its instruction before each text).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.collect import context_length
from actkit.core.generate import generate
from actkit.core.layers import resolve_layers
from actkit.errors import ActkitError
from actkit.evaluate.adaptive import ADAPTIVE_METHODS, probe_threshold, run_adaptive
from actkit.evaluate.judges import Concept, Criteria, Judge, check_judge, make_judge
from actkit.evaluate.likelihood import (
    Row,
    continuation_logprobs,
    encode,
    kl_on_continuations,
    likelihood_margins,
)
from actkit.evaluate.shift import random_control
from actkit.steer.directions import train_vector
from actkit.steer.layers import select_layers
from actkit.steer.lineas import LinEAS, train_from_pairs
from actkit.steer.pairs import Pair, as_pairs
from actkit.steer.vectors import SteeringVector, check_fits, restrict_layers, steering_writes

STEERING_METHODS = ("mean-diff", "pca-diff", "probe", "actadd")
#: What `evaluate_steering` runs unless told otherwise.
DEFAULT_METHODS = (*STEERING_METHODS, "prompt", "random")
#: Every method it accepts. Only on request: LinEAS trains through the model (minutes on SmolLM2); dynamic
#: composition and backtracking run their own decode loop (2-3 times a fixed vector's passes).
METHODS = (*DEFAULT_METHODS, "lineas", *ADAPTIVE_METHODS)
#: LinEAS strengths tried on the development prompts (``x + s * (T(x) - x)``; 1 is the map as trained): maps
#: trained briefly overshoot on some models and undershoot on others (docs/steering.md), so both sides of 1.
LINEAS_STRENGTHS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: LinEAS training settings unless `evaluate_steering` is given others (`actkit.steer.train_lineas` options).
LINEAS_TRAINING: dict[str, Any] = {"steps": 50, "lr": 0.01}
#: Relative factors tried on the development prompts (fractions of the mean residual norm at the layer).
DEFAULT_FACTORS = (0.05, 0.1, 0.2, 0.4, 0.8)
#: Depths (fractions of the block count) of the candidate layers with ``layers="auto"``, beside the layer
#: `select_layers` ranks first.
AUTO_DEPTHS = (0.25, 0.4, 0.55, 0.7)


def split_indices(n: int, dev_fraction: float, seed: int, what: str = "prompts",
                  names: tuple[str, str] = ("dev", "test"), least: int = 2) -> tuple[list[int], list[int]]:
    """A seeded shuffle of ``range(n)`` cut into two disjoint, sorted parts.

    Arguments:
        n: how many items.
        dev_fraction: the share of the first part (rounded, then kept to at least `least` on each side).
        seed: the seed of the shuffle (the global random state is not touched).
        what, names: for the error message.
        least: the fewest items each part may hold.

    Returns:
        ``(first, second)`` index lists.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ActkitError(f"the {names[0]} fraction must lie strictly between 0 and 1, got {dev_fraction}")
    if n < 2 * least:
        raise ActkitError(f"{n} {what} are too few to split into {names[0]} and {names[1]} ({least} or more "
                          f"each): give at least {2 * least}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(max(least, round(n * dev_fraction)), n - least)
    return sorted(order[:k]), sorted(order[k:])


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: one per non-empty line, or JSONL whose objects carry a ``prompt`` string.

    A file is JSONL when its first non-empty line starts with ``{``; then every line must be such an object.
    Errors name the file, the line and the expected field.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActkitError(f"prompts file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ActkitError(f"cannot read prompts file {str(p)!r}: {error}; give a UTF-8 text or JSONL file") from None
    lines = [(n, line) for n, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ActkitError(f"prompts file {str(p)!r} holds no prompts; give one per line, or JSONL with a 'prompt' "
                          "field")
    if not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    prompts = []
    for number, line in lines:
        where = f"prompts file {str(p)!r}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ActkitError(f"{where}: not valid JSON ({error.msg}); the file is JSONL (its first line is an "
                              "object), so every line must be an object with a 'prompt' field") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            found = ", ".join(map(repr, item)) if isinstance(item, dict) else type(item).__name__
            raise ActkitError(f"{where}: expected a JSON object with a non-empty string field 'prompt'; found "
                              f"{found or 'no fields'}")
        prompts.append(item["prompt"])
    return prompts


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, validated and without repeats."""
    if not methods:
        raise ActkitError(f"no methods given; use some of {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ActkitError(f"unknown method {unknown[0]!r}; use some of {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def check_given(model: nn.Module, vectors: Mapping[str, SteeringVector]) -> dict[str, SteeringVector]:
    """The caller's own vectors, checked: names that are not built-in methods, vectors that fit the model."""
    for name, vector in vectors.items():
        if not name or name in METHODS:
            raise ActkitError(f"a vector of your own needs a name that is not a built-in method; got {name!r} "
                              f"(built-in: {', '.join(METHODS)})")
        if not isinstance(vector, SteeringVector):
            raise ActkitError(f"vector {name!r} is a {type(vector).__name__}, not a SteeringVector; load files "
                              "with actkit.steer.load_vector")
        check_fits(vector, model, source=f"vector {name!r}")
    return dict(vectors)


class _Run:
    """What every method of one evaluation shares: model, splits, unsteered continuations, the judge."""

    def __init__(self, model: nn.Module, tokenizer: Any, concept: Concept, train: list[Pair], test: list[Pair],
                 dev_prompts: list[str], test_prompts: list[str], reference: list[str], max_new_tokens: int,
                 batch_size: int, read_position: str, log: Callable[[str], None],
                 lineas_options: Mapping[str, Any] | None = None):
        self.model, self.tokenizer, self.concept = model, tokenizer, concept
        self.lineas_options = {**LINEAS_TRAINING, **(lineas_options or {})}
        self.maps: LinEAS | None = None
        self.train, self.test_pairs = train, test
        self.prompts = {"dev": dev_prompts, "test": test_prompts}
        self.reference, self.max_new_tokens, self.batch_size = reference, max_new_tokens, batch_size
        self.read_position, self.log = read_position, log
        self.base = {split: self.generate(p, None, None) for split, p in self.prompts.items()}
        self.judge: Judge | None = None
        self.vectors: dict[str, SteeringVector] = {}
        self.thresholds: dict[int, float] = {}
        self.given: set[str] = set()  # names of the caller's own vectors (methods tried at their own blocks)

    def context(self, prompt: str, instruction: str | None) -> str:
        return f"{instruction}\n\n{prompt}" if instruction else prompt

    def generate(self, prompts: list[str], writes: Any, instruction: str | None) -> list[str]:
        return generate(self.model, self.tokenizer, [self.context(p, instruction) for p in prompts], writes=writes,
                        max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)

    def vector(self, method: str, layers: list[int]) -> SteeringVector:
        """The method's vector at every candidate layer, trained on the training pairs only (cached)."""
        if method not in self.vectors:
            if method == "random":
                self.vectors[method] = random_control(self.vector("mean-diff", layers), seed=0)
            else:
                pairs = self.train[:1] if method == "actadd" else self.train
                self.vectors[method] = train_vector(self.model, self.tokenizer, pairs, layers, method=method,
                                                    read_position=self.read_position, batch_size=self.batch_size)
        return self.vectors[method]

    def lineas(self) -> LinEAS:
        """LinEAS maps at every block, trained on the training pairs only (cached)."""
        if self.maps is None:
            self.maps = train_from_pairs(self.model, self.tokenizer, self.train, None,
                                         read_position=self.read_position, batch_size=self.batch_size,
                                         **self.lineas_options)
            self.log(f"lineas: trained, loss {self.maps.metadata.get('loss_start', float('nan')):.3f} -> "
                     f"{self.maps.metadata.get('loss_end', float('nan')):.3f}")
        return self.maps

    def measure(self, split: str, writes: Any, instruction: str | None) -> dict[str, Any]:
        """Generate on a split, judge, and measure the KL over the continuations."""
        assert self.judge is not None
        prompts = self.prompts[split]
        completions = self.generate(prompts, writes, instruction)
        scores = self.judge.score(prompts, completions)
        base_rows = [encode(self.tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
        rows: list[Row] = [(list(self.tokenizer(self.context(p, instruction))["input_ids"]), cont)
                           for p, (_, cont) in zip(prompts, base_rows, strict=True)]
        kl = kl_on_continuations(self.model, base_rows, rows, writes, batch_size=self.batch_size)
        return {**summary(scores), "kl": kl, "scores": scores, "completions": completions}

    def measure_adaptive(self, split: str, method: str, layers: list[int], layer: int, factor: float
                         ) -> dict[str, Any]:
        """Generate with an adaptive method (the mean-diff vector at `layer`), judge, and measure the KL."""
        assert self.judge is not None
        prompts = self.prompts[split]
        vector = restrict_layers(self.vector("mean-diff", layers), [layer])
        if method == "backtrack" and layer not in self.thresholds:
            self.thresholds[layer] = probe_threshold(self.model, self.tokenizer, self.train, vector, layer,
                                                     batch_size=self.batch_size)
        decoded = run_adaptive(method, self.model, self.tokenizer, prompts, vector, factor,
                               max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                               threshold=self.thresholds.get(layer))
        scores = self.judge.score(prompts, decoded.completions)
        rows: list[Row] = list(zip(decoded.contexts, decoded.ids, strict=True))
        kl = kl_on_continuations(self.model, rows, rows, decoded.replay, batch_size=self.batch_size)
        return {**summary(scores), "kl": kl, **decoded.stats, "scores": scores, "completions": decoded.completions}

    def perplexity(self, writes: Any, instruction: str | None) -> float:
        rows = []
        prefix = list(self.tokenizer(f"{instruction}\n\n")["input_ids"]) if instruction else None
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        limit = context_length(self.model)
        for text in self.reference:
            ctx, cont = encode(self.tokenizer, "", text)
            if prefix is not None:
                ctx = prefix if ctx[0] in special else prefix + ctx
            rows.append((ctx, cont[:max(limit - len(ctx), 0)]))  # a long text is cut to the model's context
        logps = continuation_logprobs(self.model, rows, writes, batch_size=self.batch_size)
        count = sum(len(lp) for lp in logps)
        if count == 0:
            raise ActkitError("no reference tokens to score: every reference text is a single token")
        return math.exp(-sum(float(lp.sum()) for lp in logps) / count)


def summary(scores: Sequence[Criteria]) -> dict[str, float]:
    """Mean concept, instruction, fluency and harmonic score (the harmonic mean per continuation, then averaged)."""
    if not scores:
        raise ActkitError("no continuations to summarize")
    n = len(scores)
    return {"concept": sum(s.concept for s in scores) / n, "instruction": sum(s.instruction for s in scores) / n,
            "fluency": sum(s.fluency for s in scores) / n, "harmonic": sum(s.harmonic for s in scores) / n}


def choose(records: Sequence[dict[str, Any]], kl_budget: float | None = None, *, key: str = "harmonic",
           strength: str = "factor") -> dict[str, Any]:
    """The development record with the highest `key` score (ties: smaller `strength`, then lower layer), among
    those whose KL is within `kl_budget` when one is given."""
    allowed = [r for r in records if kl_budget is None or r["kl"] <= kl_budget]
    if not allowed:
        least = min(r["kl"] for r in records)
        raise ActkitError(f"no setting stays within the KL budget of {kl_budget:g} nats/token on the development "
                          f"prompts (the smallest KL was {least:.4g}); raise --kl-budget or try smaller factors")
    return max(allowed, key=lambda r: (r[key], -(r[strength] or 0.0), -(r["layer"] or 0)))


def candidate_layers(model: nn.Module, first: int, depths: Sequence[float] = AUTO_DEPTHS) -> list[int]:
    """The ``auto`` layer grid: blocks at `depths` (fractions of the depth), and `first` (select_layers' best)."""
    n = Anatomy.of(model).n_layers
    return sorted({min(max(round(d * (n - 1)), 0), n - 1) for d in depths} | {first})


def evaluate_steering(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair] | Sequence[Sequence[str]],
    prompts: Sequence[str],
    concept: Concept,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    layers: Sequence[int] | None = None,
    depths: Sequence[float] = AUTO_DEPTHS,
    factors: Sequence[float] = DEFAULT_FACTORS,
    judge: str = "rules",
    reference: Sequence[str] | None = None,
    seed: int = 0,
    dev_fraction: float = 0.5,
    test_pair_fraction: float = 0.3,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    read_position: str = "last",
    kl_budget: float | None = None,
    embedder: Callable[[Sequence[str]], Any] | None = None,
    judge_model: str | None = None,
    api_key: str | None = None,
    log: Callable[[str], None] | None = None,
    lineas: Mapping[str, Any] | None = None,
    vectors: Mapping[str, SteeringVector] | None = None,
) -> dict[str, Any]:
    """Evaluate steering methods against prompting, each tuned on development prompts and scored on test ones.

    Arguments:
        model, tokenizer: the model to steer.
        pairs: contrast pairs (``positive`` shows the concept); split into training and test pairs.
        prompts: the prompts whose continuations are judged; split into development and test prompts.
        concept: the concept (its name, the prompting baseline's instruction, the rules judge's rule).
        methods: some of `METHODS`.
        layers: the candidate blocks (None: ``auto``, see `candidate_layers`).
        depths: with ``auto``, the depths (fractions of the block count) tried beside select_layers' best.
        factors: the relative factors tried (fractions of the mean residual norm at the layer).
        judge: ``rules``, ``embed`` or ``openai:URL`` (see `actkit.evaluate.judges`).
        reference: texts for the perplexity (default: the test prompts).
        seed: the seed of both splits.
        dev_fraction: the share of prompts used for development.
        test_pair_fraction: the share of pairs held out for the likelihood margins.
        max_new_tokens: greedy tokens per continuation.
        batch_size: prompts per `generate` call and rows per forward pass.
        read_position: which tokens of a pair text give its activation (``last``, ``from:1``...).
        kl_budget: the largest development KL (nats/token) a chosen setting may have (None: no limit).
        embedder: sentence embeddings for the ``embed`` judge (`actkit.evaluate.judges.Embedder`).
        judge_model, api_key: for an ``openai:URL`` judge.
        log: called with a line of progress now and then.
        lineas: training options of the ``lineas`` method (`actkit.steer.train_lineas` keywords; default
            `LINEAS_TRAINING`).
        vectors: more methods: name -> a vector of the caller's (an SAE feature's decoder row from ``actkit sae
            vector``, a file from another tool), tried at each of its blocks and every factor, after `methods`.

    Returns:
        A JSON-ready dict: ``split``, ``grid``, ``select_layers``, ``judge``, ``unsteered`` and ``methods`` (one dict
        per method, best test harmonic score first: ``method``, ``layer``, ``factor``, ``test``, ``likelihood``,
        ``win_rate_vs_prompt``, ``dev`` (every development record), ``examples``).
    """
    return _evaluate(model, tokenizer, pairs, prompts, concept, methods=methods, layers=layers, depths=depths,
                     factors=factors,
                     judge=judge, reference=reference, seed=seed, dev_fraction=dev_fraction,
                     test_pair_fraction=test_pair_fraction, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     read_position=read_position, kl_budget=kl_budget, embedder=embedder, judge_model=judge_model,
                     api_key=api_key, log=log, lineas=lineas, vectors=vectors)[0]


def _evaluate(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair] | Sequence[Sequence[str]],
    prompts: Sequence[str],
    concept: Concept,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    layers: Sequence[int] | None = None,
    depths: Sequence[float] = AUTO_DEPTHS,
    factors: Sequence[float] = DEFAULT_FACTORS,
    judge: str = "rules",
    reference: Sequence[str] | None = None,
    seed: int = 0,
    dev_fraction: float = 0.5,
    test_pair_fraction: float = 0.3,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    read_position: str = "last",
    kl_budget: float | None = None,
    embedder: Callable[[Sequence[str]], Any] | None = None,
    judge_model: str | None = None,
    api_key: str | None = None,
    log: Callable[[str], None] | None = None,
    lineas: Mapping[str, Any] | None = None,
    vectors: Mapping[str, SteeringVector] | None = None,
) -> tuple[dict[str, Any], _Run]:
    """`evaluate_steering`, also returning the run (its vectors, for `tune_vector`)."""
    start = time.monotonic()
    chosen_methods = check_methods(methods)
    given = check_given(model, vectors or {})
    check_judge(judge)
    if not factors or any(not math.isfinite(f) or f <= 0 for f in factors):
        raise ActkitError(f"factors must be positive finite numbers, got {list(factors)}")
    items = as_pairs(pairs)
    train_idx, test_idx = split_indices(len(items), 1.0 - test_pair_fraction, seed, "pairs", ("training", "test"))
    dev_idx, testp_idx = split_indices(len(prompts), dev_fraction, seed, "prompts")
    say = log or (lambda line: None)
    train = [items[i] for i in train_idx]
    ranking, first = select_layers(model, tokenizer, train, seed=seed, read_position=read_position,
                                   batch_size=batch_size)
    grid_layers = candidate_layers(model, first[0], depths) if layers is None else resolve_layers(model, list(layers))
    dev_prompts, test_prompts = [prompts[i] for i in dev_idx], [prompts[i] for i in testp_idx]
    say(f"splits: {len(dev_prompts)} dev / {len(test_prompts)} test prompts, {len(train)} training / "
        f"{len(test_idx)} test pairs; layers {grid_layers}, factors {list(factors)}")
    run = _Run(model, tokenizer, concept, train, [items[i] for i in test_idx], dev_prompts, test_prompts,
               list(reference) if reference is not None else test_prompts, max_new_tokens, batch_size,
               read_position, say, lineas)
    run.vectors.update(given)
    run.given = set(given)
    run.judge = make_judge(judge, concept, model=model, tokenizer=tokenizer, pairs=train, prompts=dev_prompts,
                           unsteered=run.base["dev"], embedder=embedder, judge_model=judge_model, api_key=api_key)
    unsteered = run.measure("test", None, None)
    results = [_method(run, m, grid_layers, factors, kl_budget) for m in [*chosen_methods, *given]]
    base_scores = unsteered.pop("scores")
    unsteered_result = {"test": {**unsteered, "perplexity": run.perplexity(None, None)},
                        "likelihood": likelihood_margins(model, tokenizer, run.test_pairs, batch_size=batch_size)}
    prompt_scores = next((r["_scores"] for r in results if r["method"] == "prompt"), None)
    for r in results:
        scores = r.pop("_scores")
        r["win_rate_vs_prompt"] = (None if prompt_scores is None or r["method"] == "prompt"
                                   else win_rate(scores, prompt_scores))
    results.sort(key=lambda r: -r["test"]["harmonic"])
    for rank, r in enumerate(results, start=1):
        r["rank"] = rank
    unsteered_result["test"]["harmonic_per_prompt"] = [s.harmonic for s in base_scores]
    return {
        "concept": {"name": concept.name, "instruction": concept.instruction, "rule": concept.rule},
        "split": {"seed": seed, "dev_fraction": dev_fraction, "test_pair_fraction": test_pair_fraction,
                  "dev": len(dev_prompts), "test": len(test_prompts), "train_pairs": len(train),
                  "test_pairs": len(test_idx), "dev_prompts": dev_idx, "test_prompts": testp_idx,
                  "train_pair_indices": train_idx, "test_pair_indices": test_idx},
        "grid": {"layers": grid_layers, "factors": [float(f) for f in factors], "relative": True,
                 "kl_budget": kl_budget, "max_new_tokens": max_new_tokens, "read_position": read_position},
        "select_layers": {"first": first[0], "ranking": ranking},
        "judge": {"name": run.judge.name, "calibration": run.judge.calibration},
        "unsteered": unsteered_result,
        "methods": results,
        "seconds": time.monotonic() - start,
    }, run


def _writes(vector: SteeringVector, layer: int, factor: float) -> Any:
    return steering_writes(restrict_layers(vector, [layer]), factor, relative=True)


def _method(run: _Run, method: str, layers: list[int], factors: Sequence[float],
            kl_budget: float | None) -> dict[str, Any]:
    """One method: its development grid, the chosen setting, and its test scores."""
    instruction = run.concept.instruction if method == "prompt" else None
    fixed = method not in ("prompt", *ADAPTIVE_METHODS)  # one intervention per setting
    vector: SteeringVector | None = None
    grid: list[tuple[int | None, float | None]]
    if method == "prompt":
        grid = [(None, None)]
    elif method == "lineas":
        grid = [(None, s) for s in LINEAS_STRENGTHS]
    elif method in ADAPTIVE_METHODS:
        grid = [(layer, float(f)) for layer in layers for f in factors]
    else:
        vector = run.vectors[method] if method in run.given else run.vector(method, layers)
        grid = [(layer, float(f)) for layer in (vector.layers if method in run.given else layers) for f in factors]

    def writes(layer: int | None, factor: float | None) -> Any:
        if not fixed:
            return None
        assert factor is not None
        if vector is None:
            return run.lineas().to_intervention(factor)
        assert layer is not None
        return _writes(vector, layer, factor)

    def trial(split: str, layer: int | None, factor: float | None) -> dict[str, Any]:
        if method in ADAPTIVE_METHODS:
            assert layer is not None and factor is not None
            return run.measure_adaptive(split, method, layers, layer, factor)
        return run.measure(split, writes(layer, factor), instruction)

    records: list[dict[str, Any]] = []
    for i, (layer, factor) in enumerate(grid):
        records.append({"layer": layer, "factor": factor, **_public(trial("dev", layer, factor))})
        if layer is not None and (i + 1 == len(grid) or grid[i + 1][0] != layer):
            run.log(f"{method} at layer {layer}: best dev harmonic "
                    f"{max(r['harmonic'] for r in records if r['layer'] == layer):.3f}")
    best = choose(records, kl_budget)
    test = trial("test", best["layer"], best["factor"])
    likelihood: dict[str, Any] | None = None
    if method not in ADAPTIVE_METHODS:
        chosen = writes(best["layer"], best["factor"])
        test["perplexity"] = run.perplexity(chosen, instruction)
        context = (lambda text: run.context(text, run.concept.instruction)) if method == "prompt" else None
        likelihood = likelihood_margins(run.model, run.tokenizer, run.test_pairs, chosen, context=context,
                                        batch_size=run.batch_size)
    else:  # no fixed intervention to score fixed texts with (actkit.evaluate.adaptive)
        test["perplexity"] = None
    run.log(f"{method}: layer {best['layer']}, factor {best['factor']}: test harmonic {test['harmonic']:.3f}")
    scores = test.pop("scores")
    completions = test.pop("completions")
    examples = [{"prompt": p, "unsteered": b, "steered": c} for p, b, c in
                zip(run.prompts["test"], run.base["test"], completions, strict=True)]
    out = {"method": method, "layer": best["layer"], "factor": best["factor"], "test": test,
           "likelihood": likelihood, "dev": records, "examples": examples, "_scores": scores}
    if method == "backtrack":
        out["threshold"] = run.thresholds[best["layer"]]
    return out


def _public(found: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k not in ("scores", "completions")}


def win_rate(scores: Sequence[Criteria], baseline: Sequence[Criteria]) -> float:
    """Per prompt, 1 when `scores` beats `baseline` on the harmonic score, 1/2 on a tie; averaged."""
    if len(scores) != len(baseline) or not scores:
        raise ActkitError("win rate needs the same, non-zero number of scores on both sides")
    return sum(1.0 if a.harmonic > b.harmonic else 0.5 if a.harmonic == b.harmonic else 0.0
               for a, b in zip(scores, baseline, strict=True)) / len(scores)


def tune_vector(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair] | Sequence[Sequence[str]],
    prompts: Sequence[str],
    concept: Concept,
    *,
    method: str = "mean-diff",
    layers: Sequence[int] | None = None,
    factors: Sequence[float] = DEFAULT_FACTORS,
    kl_budget: float | None = None,
    judge: str = "rules",
    **options: Any,
) -> tuple[SteeringVector, dict[str, Any]]:
    """Choose the layer and coefficient of one method's vector for the user: best development score within a KL
    budget, reported on test prompts (the protocol of `evaluate_steering`, one method).

    Arguments:
        model, tokenizer, pairs, prompts, concept: as for `evaluate_steering`.
        method: a steering method (`STEERING_METHODS`).
        layers, factors, judge: the grid and the judge.
        kl_budget: the largest development KL (nats/token) allowed (None: no limit).
        options: more keyword arguments of `evaluate_steering` (seed, max_new_tokens, embedder...).

    Returns:
        ``(vector, result)``: the vector at the chosen layer only, its metadata holding ``tuned`` (``layer``,
        ``coef``, ``relative``, ``kl_budget``, ``judge``, the development and test scores); and the evaluation.
    """
    if method not in STEERING_METHODS:
        raise ActkitError(f"unknown method {method!r} to tune; use one of {', '.join(STEERING_METHODS)}")
    result, run = _evaluate(model, tokenizer, pairs, prompts, concept, methods=[method], layers=layers,
                            factors=factors, judge=judge, kl_budget=kl_budget, **options)
    row = result["methods"][0]
    dev = next(r for r in row["dev"] if r["layer"] == row["layer"] and r["factor"] == row["factor"])
    vector = restrict_layers(run.vectors[method], [row["layer"]])
    tuned = {"layer": row["layer"], "coef": row["factor"], "relative": True, "kl_budget": kl_budget,
             "judge": result["judge"]["name"], "concept": concept.name,
             "dev": {k: dev[k] for k in ("concept", "instruction", "fluency", "harmonic", "kl")},
             "test": {k: row["test"][k] for k in ("concept", "instruction", "fluency", "harmonic", "kl",
                                                   "perplexity")}}
    meta = {**vector.metadata, "layers": [row["layer"]], "tuned": tuned}
    return SteeringVector(dict(vector.directions), site=vector.site, metadata=meta), result


def tuned_settings(metadata: dict[str, Any]) -> tuple[float, bool] | None:
    """The coefficient and relative flag `tune_vector` stored in a vector's metadata, or None if it holds none.

    Raises:
        ActkitError: a ``tuned`` entry that is not an object with a finite ``coef`` and a boolean ``relative``.
    """
    tuned = metadata.get("tuned")
    if tuned is None:
        return None
    coef = tuned.get("coef") if isinstance(tuned, dict) else None
    relative = tuned.get("relative") if isinstance(tuned, dict) else None
    if (not isinstance(coef, (int, float)) or isinstance(coef, bool) or not math.isfinite(coef)
            or not isinstance(relative, bool)):
        raise ActkitError("the vector's metadata field 'tuned' is malformed: it must be an object with a finite "
                          "number 'coef' and a boolean 'relative'; pass --coef to steer anyway")
    return float(coef), relative


__all__ = ["AUTO_DEPTHS", "DEFAULT_FACTORS", "DEFAULT_METHODS", "LINEAS_STRENGTHS", "METHODS", "STEERING_METHODS",
           "candidate_layers", "check_given", "check_methods",
           "choose", "evaluate_steering", "read_prompts", "split_indices", "summary", "tune_vector",
           "tuned_settings", "win_rate"]
