"""Fixtures of the serve tests: a trained toy-dense vector folder, and `serve_process`, which starts
``actkit serve`` in a subprocess on a free loopback port, waits for ``/health`` and kills it at teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import actkit
from actkit.steer import read_pairs, save_vector, train_vector
from actkit.steer.pairs import DATA_DIR

SRC = Path(actkit.__file__).resolve().parents[1]
#: Seconds a server gets to load its model and answer /health.
START_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running ``actkit serve``: its base URL (``http://127.0.0.1:PORT``) and its process."""

    url: str
    process: subprocess.Popen[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        """Send `sig` and wait: the exit status and what the server wrote on stderr."""
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err


@pytest.fixture(scope="session")
def vector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``sentiment.safetensors``: a mean-diff vector of toy-dense at blocks 2 and 3."""
    folder = tmp_path_factory.mktemp("vectors")
    model, tokenizer = actkit.load("builtin:toy-dense")
    pairs = read_pairs(DATA_DIR / "toy-sentiment.jsonl")
    save_vector(train_vector(model, tokenizer, pairs, [2, 3]), folder / "sentiment.safetensors")
    return folder


class Servers:
    """Starts ``actkit serve`` processes and kills those still running at `close`."""

    def __init__(self) -> None:
        self.started: list[Served] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> Served:
        """``actkit serve ARGS --port FREE`` with `env` added to the environment, once ``/health`` answers."""
        port = free_port()
        environment = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
        process = subprocess.Popen([sys.executable, "-m", "actkit.cli", "serve", *args, "--port", str(port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        served = Served(f"http://127.0.0.1:{port}", process)
        self.started.append(served)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _, err = process.communicate()
                raise AssertionError(f"actkit serve exited with {process.returncode}: {err}")
            try:
                if httpx.get(f"{served.url}/health", timeout=1.0).status_code == 200:
                    return served
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"actkit serve did not answer /health within {START_S} s")

    def close(self) -> None:
        for served in self.started:
            if served.process.poll() is None:
                served.process.kill()
                served.process.communicate()


@pytest.fixture
def serve_process() -> Iterator[Callable[..., Served]]:
    """``serve_process(*args, env=None)`` -> `Served`: start ``actkit serve ARGS`` on a free loopback port; the
    servers still running at teardown are killed."""
    servers = Servers()
    yield servers.start
    servers.close()


@pytest.fixture(scope="module")
def serve_module() -> Iterator[Callable[..., Served]]:
    """Like `serve_process`, for servers a whole test module shares."""
    servers = Servers()
    yield servers.start
    servers.close()
