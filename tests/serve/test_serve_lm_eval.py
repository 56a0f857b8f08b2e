"""lm-evaluation-harness scores log-likelihoods through ``actkit serve`` exactly as actkit does in process.

lm-eval's ``local-completions`` model is the real client: it tokenizes with the toy model's own tokenizer folder,
sends ``echo`` + ``logprobs`` + ``max_tokens: 1`` completions (the prompt's log-probabilities) and sums the
continuation's. The task is a two-choice sentiment task on toy-corpus reviews that the test writes to a temporary
folder (a task YAML and a JSONL file; nothing is downloaded). Each request's log-likelihood must equal a plain
forward of the model on the same token ids (log_softmax, summed over the continuation) within 1e-4: unsteered,
and steered through a preset model name (``toy-dense:sentiment@0.8``, the vector of conftest's ``vector_dir``)
against the writes that preset means (`steering_writes`, relative) under `tap`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from actkit import load, tap
from actkit.models import builtin_folder
from actkit.steer import load_vector, steering_writes

from lm_eval_helpers import run_task, write_task

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("tenacity", reason="lm-eval's API models need it: pip install 'lm-eval[api]'")

VECTOR = "sentiment"
COEF = 0.8
@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return load("builtin:toy-dense")


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Any], vector_dir: Path) -> str:
    """One server for the module: toy-dense with conftest's sentiment vector; its base URL."""
    return str(serve_module("--model", "builtin:toy-dense", "--vectors", str(vector_dir)).url)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


def _evaluate(base: str, model_name: str, task_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """lm-eval's samples for the task, scored by ``local-completions`` through the server as `model_name`."""
    args = {"model": model_name, "base_url": f"{base}/v1/completions", "tokenizer_backend": "huggingface",
            "tokenizer": str(builtin_folder("toy-dense")), "tokenized_requests": True, "add_bos_token": True,
            "max_length": 256, "max_retries": 1, "num_concurrent": 4}
    return run_task("local-completions", args, task_dir, monkeypatch)


def _reference(model: Any, tokenizer: Any, context: str, continuation: str,
               writes: Mapping[str, Any] | None) -> float:
    """The continuation's log-likelihood from one plain forward (with `writes` under `tap`), tokenized as lm-eval
    tokenizes it: BOS + context, then the continuation's own tokens."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tokenizer.bos_token_id, *ctx, *cont]])
    with torch.inference_mode(), tap(model, write=writes):
        logits = model(input_ids=ids).logits.double()
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    picked = logprobs.gather(-1, targets[:, None])[:, 0]
    return float(picked[-len(cont):].sum())


@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "preset"])
def test_lm_eval_loglikelihoods_match_in_process(steered: bool, toy: tuple[Any, Any], vector_dir: Path,
                                                 server: str, task_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = toy
    name = f"toy-dense:{VECTOR}@{COEF}" if steered else "toy-dense"
    vector = load_vector(vector_dir / f"{VECTOR}.safetensors", model)
    writes = steering_writes(vector, COEF, relative=True) if steered else None  # what the preset means
    samples = _evaluate(server, name, task_dir, monkeypatch)
    moved = 0.0
    for sample in samples:
        doc = sample["doc"]
        got = [float(resp[0][0]) for resp in sample["resps"]]
        want = [_reference(model, tokenizer, doc["prompt"], choice, writes) for choice in doc["choices"]]
        assert got == pytest.approx(want, abs=1e-4), doc["prompt"]
        plain = [_reference(model, tokenizer, doc["prompt"], choice, None) for choice in doc["choices"]]
        moved = max(moved, *(abs(a - b) for a, b in zip(got, plain, strict=True)))
    assert (moved > 1e-2) == steered  # the preset really steered, and only the preset
