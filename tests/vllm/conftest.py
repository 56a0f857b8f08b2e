"""Setup of the vLLM tests, which run in the vLLM environment (``./run test-vllm``, ``.venv-vllm``). Without
vLLM (the main suite's venv) only the engine-neutral test_vllm_rows.py is collected.

vLLM's CPU build needs its device named (NOTES.md: else it may load its AVX512 library), a KV cache size, no
hub access, and in one process no engine subprocess and one thread; these are set before vLLM is imported.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

collect_ignore_glob: list[str] = []
# this folder is itself named vllm, so on the tests' path it is a namespace package without an origin
_spec = importlib.util.find_spec("vllm")
if _spec is None or _spec.origin is None:
    # vLLM lives in its own venv (./run test-vllm); test_vllm_rows.py needs no vLLM and runs everywhere
    collect_ignore_glob = ["test_vllm_steering.py", "test_vllm_server.py", "test_vllm_export.py", "test_vllm_tp.py"]

for _key, _value in {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                     "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="session")
def vector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``sentiment.safetensors`` (toy-dense, blocks 2 and 3) and ``refusal.safetensors``
    (block 1): two vectors a request can pick from."""
    import actkit
    from actkit.steer import read_pairs, save_vector, train_vector
    from actkit.steer.pairs import DATA_DIR

    folder = tmp_path_factory.mktemp("vectors")
    model, tokenizer = actkit.load("builtin:toy-dense")
    for name, layers in [("sentiment", [2, 3]), ("refusal", [1])]:
        pairs = read_pairs(DATA_DIR / f"toy-{name}.jsonl")
        save_vector(train_vector(model, tokenizer, pairs, layers), folder / f"{name}.safetensors")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running OpenAI-compatible server: its ``/v1`` base URL and its process."""

    base_url: str
    process: subprocess.Popen[bytes]


def spawn(command: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    """Start `command` (a server on `port`), its output to `log`."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Server(f"http://127.0.0.1:{port}/v1", process)


def wait_ready(server: Server, timeout: float, log: Path) -> None:
    """Wait until ``/v1/models`` answers; fail with the end of `log` if the server exits or is too slow."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited with {server.process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.base_url}/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def servers(vector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """vLLM's OpenAI server with the plugin and ``actkit serve``, both on toy-dense named ``toy-dense`` and
    with `vector_dir`, started side by side (vLLM takes one to three minutes on a busy 2-core machine)."""
    from actkit.models.packaged import builtin_folder

    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, "PYTHONPATH": str(SRC), "ACTKIT_VECTORS": str(vector_dir),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    vllm_port, actkit_port = free_port(), free_port()
    started: dict[str, Server] = {}
    try:
        started["vllm"] = spawn(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(builtin_folder("toy-dense")),
             "--served-model-name", "toy-dense", "--host", "127.0.0.1", "--port", str(vllm_port), "--dtype",
             "float32", "--enforce-eager", "--no-enable-prefix-caching", "--max-model-len", "256", "--seed", "0"],
            env, vllm_port, logs / "vllm.log")
        started["actkit"] = spawn(
            [sys.executable, "-m", "actkit.cli", "serve", "--model", "builtin:toy-dense", "--vectors",
             str(vector_dir), "--port", str(actkit_port)], env, actkit_port, logs / "actkit.log")
        wait_ready(started["actkit"], 300.0, logs / "actkit.log")
        wait_ready(started["vllm"], 400.0, logs / "vllm.log")
        yield started
    finally:
        for server in started.values():
            stop(server)
