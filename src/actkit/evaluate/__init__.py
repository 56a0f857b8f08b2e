"""Evaluation: how well a model models text, whether a behaviour is there, and what an edit costs.

- `perplexity(model, tokenizer, texts)`: exp of the mean next-token loss (the core's `next_token_nll`).
- Behaviour scorers (greedy, batched, left padding): `refusal_rate`, `sentiment_agreement`, `positive_rate`,
  `name_mover_accuracy`, built on the string detectors `is_refusal`, `sentiment_score` / `sentiment_label`
  and `first_word`, and on the core's `actkit.generate`. The words they count are a `Lexicon` the caller may
  pass (default `ENGLISH`).
- Steering: `sweep` (behaviour, KL and perplexity over coefficients), `random_control` (a random direction of
  the same norm), `kl_to_base`, `steered_perplexity`, and the completion scores `positive_fraction`,
  `refusal_fraction`, `mention_fraction`.
- The steering evaluation protocol (AxBench-style, `protocol`): `evaluate_steering` (each method's layer and
  factor chosen on development prompts, scored on test prompts, against prompting and a random direction),
  `tune_vector` (``actkit vector tune``), `split_indices`, `read_prompts`; judges (`judges`): `make_judge`
  (``rules``, ``embed``, ``openai:URL``), `Concept`, `Criteria`, `harmonic`, `parse_scores`, `Embedder`;
  likelihood scores (`likelihood`): `likelihood_margins` (Pres et al.), `continuation_logprobs`; methods that
  steer while they decode (`adaptive`: dynamic composition, backtracking), measured by replaying each row.
- The same protocol for in-context tasks (`tasks`): `evaluate_task` (function vectors, a mean-diff task vector and
  a random direction, each tuned on dev examples, against in-context prompting; accuracy of the first answer
  token on test examples; ``actkit eval task``).
"""

from __future__ import annotations

from actkit.evaluate.behaviours import (
    first_word,
    is_refusal,
    name_mover_accuracy,
    positive_rate,
    refusal_rate,
    sentiment_agreement,
    sentiment_label,
    sentiment_score,
)
from actkit.evaluate.judges import Concept, Criteria, Embedder, harmonic, make_judge, parse_scores
from actkit.evaluate.lexicon import ENGLISH, Lexicon
from actkit.evaluate.likelihood import continuation_logprobs, likelihood_margins
from actkit.evaluate.perplexity import nll, perplexity
from actkit.evaluate.protocol import evaluate_steering, read_prompts, split_indices, tune_vector
from actkit.evaluate.shift import (
    kl_to_base,
    mention_fraction,
    positive_fraction,
    random_control,
    refusal_fraction,
    steered_perplexity,
    sweep,
)
from actkit.evaluate.tasks import evaluate_task

__all__ = ["ENGLISH", "Concept", "Criteria", "Embedder", "Lexicon", "continuation_logprobs", "evaluate_steering",
           "evaluate_task",
           "first_word", "harmonic", "likelihood_margins", "make_judge", "parse_scores", "read_prompts",
           "split_indices", "tune_vector", "is_refusal", "kl_to_base", "mention_fraction",
           "name_mover_accuracy", "nll", "perplexity", "positive_fraction", "positive_rate", "random_control",
           "refusal_fraction", "refusal_rate", "sentiment_agreement", "sentiment_label", "sentiment_score",
           "steered_perplexity", "sweep"]
