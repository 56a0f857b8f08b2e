"""Helpers of the vLLM tests (run in ``.venv-vllm``): toy-dense in vLLM with the plugin, and its greedy tokens."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def toy_engine(folder: Path, budget: int) -> Iterator[Any]:
    """toy-dense in vLLM (eager, float32, no prefix caching, at most `budget` tokens per pass, so long prompts are
    prefilled in chunks), the plugin on with the vector folder `folder`."""
    from actkit.models.packaged import builtin_folder
    from actkit.vllm import plugin
    from vllm import LLM

    os.environ[plugin.VECTORS_ENV] = str(folder)
    engine = LLM(model=str(builtin_folder("toy-dense")), dtype="float32", enforce_eager=True, max_model_len=256,
                 enable_prefix_caching=False, max_num_batched_tokens=budget, max_num_seqs=16, seed=0)
    try:
        yield engine
    finally:
        del engine
        gc.collect()


def greedy(llm: Any, tokenizer: Any, prompts: list[str], steers: list[Any], new: int) -> list[list[int]]:
    """`new` greedy tokens of each prompt under its steering (JSON text or None), the EOS vLLM keeps removed."""
    from vllm import SamplingParams

    params = [SamplingParams(max_tokens=new, temperature=0.0, extra_args={"steer": s} if s is not None else None)
              for s in steers]
    outs = llm.generate([{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in prompts], params,
                        use_tqdm=False)
    eos = tokenizer.eos_token_id
    return [[t for t in o.outputs[0].token_ids if t != eos] for o in outs]
