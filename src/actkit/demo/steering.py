"""The steering demo: train vectors from shipped pairs, steer, compare with the plain model, and report.

This is actkit's main job: for each `Experiment`, `run_demo` trains a vector, sweeps a few coefficients, and
measures what each buys (a behaviour score of greedy continuations) and what it costs (KL to the plain model and
perplexity on reference text), beside a random direction of the same norm, so that an effect is only credited to
the direction when the random one does not produce it. Real models get a sentiment and a topic (weddings, ActAdd's
example) experiment; the built-in toy models get sentiment and refusal, the behaviours their corpus teaches.
Nothing is written until every experiment is done: `actkit.report.steering.write_steering_report` then writes the
report and the vectors in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from actkit.builtin.corpus import eval_set, texts
from actkit.core.anatomy import Anatomy
from actkit.errors import ActkitError
from actkit.evaluate.shift import Score, mention_fraction, random_control, sweep
from actkit.models.naming import model_name
from actkit.observe.default_text import default_texts
from actkit.report.steering import environment
from actkit.steer.directions import train_vector
from actkit.steer.layers import select_layers
from actkit.steer.pairs import pairs_path, read_pairs
from actkit.steer.vectors import SteeringVector

#: Neutral openings whose continuation a sentiment vector should colour.
SENTIMENT_PROMPTS = (
    "I went to the new restaurant last night. The food was", "My review of the hotel: the room was",
    "Yesterday I watched a movie, and honestly it was", "The weather this weekend was", "I think that my job is",
    "Here is what I thought of the concert:", "The train ride home was", "My neighbour's dog is",
    "The book I just finished was", "Our trip to the city was", "The customer service on the phone was",
    "My first day at the new school was",
)
#: Openings with no topic, for a topic vector to pull towards weddings.
TOPIC_PROMPTS = (
    "I went up to my friend and said", "Let me tell you about my weekend.", "The most important thing in life is",
    "Yesterday at work,", "My favourite thing to do on a Sunday is", "I have been thinking a lot about",
    "The best news I heard this year is", "Last summer my family", "When I was a child, I dreamed of",
    "The letter in the mailbox said", "This weekend we are going to", "My plan for next month is",
)
#: A continuation is about weddings when it contains one of these words.
WEDDING_WORDS = ("wedding", "bride", "groom", "marriage", "married", "marry", "ceremony", "vows", "honeymoon",
                 "bridesmaid", "engaged", "engagement")


@dataclass(frozen=True)
class Experiment:
    """One steering experiment: which pairs, where to read and write, which prompts, and how to score them.

    Arguments:
        name: a short name (the vector file and the report section).
        pairs: a shipped pairs file, ``builtin:NAME``.
        behaviour: what the score measures, in words (the report's column header).
        score: completions -> number (higher = more of the behaviour), or ``"positive"`` / ``"refusal"``.
        prompts: n -> the prompts whose continuations are scored.
        coefs: the coefficients swept (0 is the plain model).
        layer: the block to read and steer; None picks it with `select_layers`.
        depth: with `layer` None and `select` False, the block at this fraction of the model's depth.
        select: rank the blocks with `select_layers` and use the best one.
        read_position: which tokens of a pair text give its activation.
        positions: which tokens to steer while generating (None: all).
        relative: coefficients are fractions of the mean residual norm at the block.
    """

    name: str
    pairs: str
    behaviour: str
    score: Score | str
    prompts: Callable[[int], list[str]]
    coefs: tuple[float, ...]
    layer: int | None = None
    depth: float = 0.4
    select: bool = False
    read_position: str = "last"
    positions: str | None = None
    relative: bool = True

    def block(self, model: nn.Module, tokenizer: Any, pairs: Sequence[Any]) -> tuple[int, list[dict[str, Any]]]:
        """The block this experiment steers, and the layer ranking when one was computed."""
        if self.layer is not None:
            return self.layer, []
        if self.select:
            ranking, chosen = select_layers(model, tokenizer, pairs, read_position=self.read_position)
            return chosen[0], ranking
        n_layers = Anatomy.of(model).n_layers
        return min(max(round(self.depth * n_layers), 1), n_layers - 1), []


def _fixed(prompts: Sequence[str]) -> Callable[[int], list[str]]:
    return lambda n: list(prompts[:n])


def _reviews(n: int) -> list[str]:
    """Held-out toy reviews: half cued negative (1-2 stars), half without stars."""
    return ([d.prompt for d in eval_set("review", n - n // 2, label="negative")]
            + [d.prompt for d in eval_set("review", n // 2, label="none")])


def _benign(n: int) -> list[str]:
    return [d.prompt for d in eval_set("request", n, label="benign")]


#: Experiments for a real (pretrained) model. Vectors are read as the mean over every token but the first: many
#: models put a massive activation on their first token, which would dominate a mean over all tokens.
REAL = (
    Experiment("sentiment", "builtin:sentiment", "positive rate", "positive", _fixed(SENTIMENT_PROMPTS),
               (-0.15, 0.0, 0.15), depth=0.4, read_position="from:1"),
    Experiment("weddings", "builtin:weddings", "mentions weddings", mention_fraction(WEDDING_WORDS),
               _fixed(TOPIC_PROMPTS), (0.0, 0.2, 0.3), depth=0.3, read_position="from:1"),
)
#: Experiments for the built-in toy models, on held-out prompts of their corpus.
TOY = (
    Experiment("sentiment", "builtin:toy-sentiment", "positive rate", "positive", _reviews, (0.0, 0.4, 0.8),
               depth=0.3),
    Experiment("refusal", "builtin:toy-refusal", "refusal rate", "refusal", _benign, (0.0, 1.0), select=True,
               positions="prompt", relative=False),
)


def experiments_for(spec: str) -> tuple[Experiment, ...]:
    """The toy experiments for ``builtin:`` models, the real-model ones otherwise."""
    return TOY if spec.startswith("builtin:") else REAL


def reference_texts(spec: str, n: int = 16) -> list[str]:
    """Text the cost (KL, perplexity) is measured on: held-out toy corpus, or the built-in English sample."""
    return texts(n, "heldout") if spec.startswith("builtin:") else default_texts()[:n]


def _example_coef(rows: list[dict[str, Any]]) -> float:
    """The coefficient whose behaviour differs most from the plain model's (the smallest such, on ties)."""
    base = next(r for r in rows if r["coef"] == 0.0)["behaviour"]
    best = max(rows, key=lambda r: (abs(r["behaviour"] - base), -abs(r["coef"])))
    return float(best["coef"])


def run_experiment(model: nn.Module, tokenizer: Any, experiment: Experiment, reference: Sequence[str], *,
                   prompts: int = 8, max_new_tokens: int = 24) -> tuple[SteeringVector, dict[str, Any]]:
    """Train the experiment's vector, sweep it and a random control; the vector and a JSON-ready result."""
    if 0.0 not in experiment.coefs:
        raise ActkitError(f"experiment {experiment.name!r} must sweep coefficient 0 (the plain model)")
    pairs = read_pairs(pairs_path(experiment.pairs))
    start = time.perf_counter()
    layer, ranking = experiment.block(model, tokenizer, pairs)
    vector = train_vector(model, tokenizer, pairs, [layer], read_position=experiment.read_position)
    trained_s = time.perf_counter() - start
    chosen = experiment.prompts(prompts)
    kwargs: dict[str, Any] = dict(texts=reference, relative=experiment.relative, positions=experiment.positions,
                                  max_new_tokens=max_new_tokens, keep_completions=True)
    rows = sweep(model, tokenizer, vector, experiment.coefs, chosen, experiment.score, **kwargs)
    control = sweep(model, tokenizer, random_control(vector), experiment.coefs, chosen, experiment.score, **kwargs)
    example = _example_coef(rows)
    steered = next(r for r in rows if r["coef"] == example)["completions"]
    plain = next(r for r in rows if r["coef"] == 0.0)["completions"]
    result = {
        "name": experiment.name,
        "pairs": experiment.pairs,
        "pair_count": len(pairs),
        "behaviour": experiment.behaviour,
        "site": f"resid_post.{layer}",
        "read_position": experiment.read_position,
        "positions": experiment.positions or "all",
        "relative": experiment.relative,
        "vector_norm": float(vector.directions[layer].norm()),
        "mean_residual_norm": vector.mean_norm(layer),
        "train_seconds": trained_s,
        "ranking": ranking,
        "rows": [{k: v for k, v in r.items() if k != "completions"} for r in rows],
        "random": [{k: v for k, v in r.items() if k != "completions"} for r in control],
        "example_coef": example,
        "examples": [{"prompt": p, "plain": a, "steered": b} for p, a, b in zip(chosen, plain, steered, strict=True)],
    }
    return vector, result


def vector_files(experiments: Sequence[Experiment]) -> list[str]:
    """The vector files of the demo's folder, relative to it, one per experiment."""
    return [f"vectors/{e.name}.safetensors" for e in experiments]


def run_demo(model: nn.Module, tokenizer: Any, spec: str, *, prompts: int = 8, max_new_tokens: int = 24,
             experiments: Sequence[Experiment] | None = None, log: Callable[[str], None] | None = None,
             ) -> tuple[dict[str, Any], dict[str, SteeringVector]]:
    """Run every experiment on `model`; write nothing.

    The results and the vectors are written together afterwards by
    `actkit.report.steering.write_steering_report`, so that a run stopped half-way leaves no vector without its
    report.

    Arguments:
        model: the model to steer.
        tokenizer: its tokenizer.
        spec: what the user typed to load it (``builtin:`` models get the toy experiments; recorded in the results).
        prompts: prompts per experiment.
        max_new_tokens: tokens generated per prompt.
        experiments: the experiments to run; None: `experiments_for(spec)`.
        log: receives one line as each experiment starts (the CLI shows it on stderr).

    Returns:
        The JSON-ready results (each experiment's ``vector_file`` is where its vector goes, relative to the report's
        folder) and the vectors, keyed by that file name.
    """
    chosen = tuple(experiments) if experiments is not None else experiments_for(spec)
    reference = reference_texts(spec)
    start = time.perf_counter()
    results = []
    vectors = {}
    for experiment, file in zip(chosen, vector_files(chosen), strict=True):
        if log is not None:
            log(f"{experiment.name}: training a vector from {experiment.pairs}, sweeping {list(experiment.coefs)}")
        vector, result = run_experiment(model, tokenizer, experiment, reference, prompts=prompts,
                                        max_new_tokens=max_new_tokens)
        result["vector_file"] = file
        vectors[file] = vector
        results.append(result)
    summary = {
        "model": spec,
        "model_name": model_name(model),
        "reference_texts": len(reference),
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "seconds": time.perf_counter() - start,
        "environment": environment(),
        "experiments": results,
    }
    return summary, vectors


__all__ = ["REAL", "SENTIMENT_PROMPTS", "TOPIC_PROMPTS", "TOY", "WEDDING_WORDS", "Experiment", "experiments_for",
           "reference_texts", "run_demo", "run_experiment", "vector_files"]
