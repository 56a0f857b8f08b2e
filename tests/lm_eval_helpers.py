"""A two-choice lm-evaluation-harness task written to a temporary folder (nothing downloaded), and a runner that
returns lm-eval's logged samples: shared by the tests that compare lm-eval's log-likelihoods with actkit's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

#: Toy-corpus review openings with a positive and a negative next word (label: the one the stars ask for).
DOCS = [
    {"prompt": "Kate reviewed the storm shelter, 2 stars: The radar was", "choices": [" wonderful", " poor"],
     "label": 1},
    {"prompt": "Lisa reviewed the flight, 5 stars: The breakfast was", "choices": [" wonderful", " boring"],
     "label": 0},
    {"prompt": "Emma reviewed the gym, 1 stars: The team was", "choices": [" lovely", " ugly"], "label": 1},
    {"prompt": "Leo reviewed the nursery, 4 stars: The soil was", "choices": [" excellent", " horrible"],
     "label": 0},
]
TASK = "toy_sentiment_ab"
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""


def write_task(folder: Path) -> Path:
    """Write `TASK` (its YAML and its documents) into `folder`; returns the folder."""
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    return folder


def run_task(model: str, model_args: dict[str, Any], folder: Path,
             monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """lm-eval's samples for `TASK` (written in `folder`), scored by lm-eval's `model` backend, offline."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = simple_evaluate(model=model, model_args=model_args, tasks=[TASK],
                              task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                              log_samples=True, cache_requests=False, bootstrap_iters=0)
    assert results is not None
    samples = list(results["samples"][TASK])
    assert sorted(s["doc"]["prompt"] for s in samples) == sorted(d["prompt"] for d in DOCS)
    return samples
