"""Tensor parallelism: toy-dense over two CPU worker processes (``tensor_parallel_size=2``) with the plugin gives
the tokens of one process, which the other tests hold equal to `actkit.generate`.

Each rank's runner steers its own copy of the pass: the blocks' outputs are all-reduced before they leave the
block, so every rank writes the same rows with the same values. The engine runs in a child process (this file run
as a script), each worker bound to one CPU (``VLLM_CPU_OMP_THREADS_BIND``: vLLM's automatic binding wants one NUMA
node per worker). The test is skipped, with the reason printed, only when the two-worker engine cannot start here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

NEW = 32
PROMPTS = ["Anna reviewed the hotel: The room was", "Bob reviewed the cafe: The"]
STEERS = [None, [{"vector": "sentiment", "coef": 2.0}], [{"ablate": "sentiment"}],
          [{"vector": "sentiment", "coef": -4.0, "positions": "generated"}, {"vector": "refusal", "coef": 3.0}]]


def _child(folder: str) -> None:
    """Run toy-dense with two tensor-parallel workers; print STARTED, then the tokens of every prompt and steer."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=256, enable_prefix_caching=False,
              seed=0, tensor_parallel_size=2)
    print("STARTED", flush=True)
    tokenizer = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]
    params = [SamplingParams(max_tokens=NEW, temperature=0.0, extra_args={"steer": json.dumps(s)} if s else None)
              for s in STEERS for _ in PROMPTS]
    outs = llm.generate(prompts * len(STEERS), params, use_tqdm=False)
    eos = tokenizer.eos_token_id
    print("RESULT " + json.dumps([[t for t in o.outputs[0].token_ids if t != eos] for o in outs]), flush=True)


def test_two_tensor_parallel_workers_steer_as_one_process(vector_dir: Path) -> None:
    import actkit
    from actkit.models.packaged import builtin_folder
    from actkit.serve.steering import VectorRegistry, build_writes, parse_steer

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"tensor parallelism needs two CPUs for its two workers; this process may use {cpus}")
    env = {**os.environ, "ACTKIT_VECTORS": str(vector_dir), "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
           "VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}|{cpus[1]}",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    folder = str(builtin_folder("toy-dense"))
    try:
        done = subprocess.run([sys.executable, __file__, folder], env=env, capture_output=True, text=True,
                              timeout=400, check=False)
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        if "STARTED" not in out:
            pytest.skip("the two-worker engine did not start within 400 s on this machine")
        raise
    lines = done.stdout.splitlines()
    if "STARTED" not in lines:
        reason = [line for line in done.stderr.splitlines() if "Error" in line][-1:] or done.stderr[-500:]
        print(f"tensor_parallel_size=2 could not start here: {reason}")
        pytest.skip(f"tensor_parallel_size=2 could not start here: {reason}")
    results = [line for line in lines if line.startswith("RESULT ")]
    assert done.returncode == 0 and results, done.stderr[-4000:]
    got: list[list[int]] = json.loads(results[-1][len("RESULT "):])

    model, tokenizer = actkit.load("builtin:toy-dense")
    registry = VectorRegistry.from_folder(vector_dir, model)
    expected: list[Any] = []
    for steer in STEERS:
        writes = build_writes(registry, parse_steer(steer, None)) if steer else None
        expected += [actkit.generate_ids(model, tokenizer, [p], writes=writes, max_new_tokens=NEW)[0] for p in PROMPTS]
    assert got == expected
    plain = got[:len(PROMPTS)]
    assert all(got[i:i + len(PROMPTS)] != plain for i in range(len(PROMPTS), len(got), len(PROMPTS)))  # each steers


if __name__ == "__main__":
    _child(sys.argv[1])
