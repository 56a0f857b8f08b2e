"""What per-row steering costs one decode step of the serving engine, in CPU time (robust to other jobs).

A batch of 8 rows of builtin:toy-dense decodes one token per step from a KV cache, as `actkit.serve.engine.Engine`
does it, three ways: unsteered; each steered row's `Add` restricted to its row with `OnRows` (the engine's first
design, one write per row per step); and the engine's folded add (`_batch_writes`: one add of a (rows, d) vector
with per-row coefficients and position spans), with each step's context and mask given by the engine
(`_Held.expect`) rather than worked out from the inputs, as the engine does. Every row but the last is steered with its own
coefficient. One torch thread, CPU time of this process, median over interleaved rounds.

    python bench/serve_step.py [--rounds 7] [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from actkit import Add, load
from actkit.core.hooks import tap
from actkit.core.interventions import OnRows
from actkit.serve.engine import GenerationRequest, Stream, _batch_writes, _Fold, _Held, _Row

ROWS, PROMPT, SITE = 8, 12, "resid_post.1"


def writes(way: str, vector: torch.Tensor) -> dict[str, Any] | None:
    """The batch's writes: none, one OnRows per steered row, or the engine's fold."""
    coefs = [0.5 + 0.25 * i for i in range(ROWS - 1)]
    if way == "unsteered":
        return None
    if way == "onrows":
        out = []
        for i, c in enumerate(coefs):
            only = torch.zeros(ROWS, dtype=torch.bool)
            only[i] = True
            out.append(OnRows(Add(vector, c), only))
        return {SITE: out}
    rows = [_Row(GenerationRequest([1] * PROMPT, 1, writes={SITE: Add(vector, c)}), Stream(), frozenset(), None)
            for c in coefs]
    rows.append(_Row(GenerationRequest([1] * PROMPT, 1), Stream(), frozenset(), None))
    return dict(_batch_writes(rows, torch.float32, torch.device("cpu")))


def step_ms(model: Any, way: str, vector: torch.Tensor, steps: int) -> float:
    """CPU milliseconds per decode step of the batch, steered `way`."""
    ids = torch.randint(5, 100, (ROWS, PROMPT), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        mask = torch.ones(ROWS, PROMPT, dtype=torch.long)
        token = ids[:, -1:]
        hooks = writes(way, vector)
        lengths = torch.full((ROWS,), PROMPT)
        with tap(model, write=hooks, prompt_lengths=lengths) if hooks else _nothing() as state:
            spans = [w.spans for w in (hooks or {}).get(SITE, []) if isinstance(w, _Fold)]
            held = _Held(state, lengths, spans) if way == "fold" else None
            start = time.process_time()
            for k in range(steps):
                mask = torch.cat([mask, torch.ones(ROWS, 1, dtype=torch.long)], dim=1)
                positions = torch.full((ROWS, 1), PROMPT + k)
                if held is not None:
                    held.expect(positions, [PROMPT + k] * ROWS)
                out = model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
            return 1000 * (time.process_time() - start) / steps


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load("builtin:toy-dense")
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    ways = ["unsteered", "onrows", "fold"]
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.rounds):
        for way in ways:
            times[way].append(step_ms(model, way, vector, args.steps))
    base = statistics.median(times["unsteered"])
    print(f"torch {torch.__version__}, 1 thread; builtin:toy-dense, {ROWS} rows ({ROWS - 1} steered), "
          f"median of {args.rounds} rounds of {args.steps} decode steps (CPU ms per step)")
    for way in ways:
        ms = statistics.median(times[way])
        print(f"  {way:>9}: {ms:6.3f} ms  ({ms / base:.3f} of unsteered)")


if __name__ == "__main__":
    main()
