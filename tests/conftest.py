"""Test setup: tiny models run fastest on one thread (measured: oversubscribed threads cost up to 100x here).

`cached_load`: a module that marks itself ``pytestmark = pytest.mark.usefixtures("cached_load")`` loads each model
once for all its tests (the commands import `actkit.models.load` when they run).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import actkit.models

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cached_load() -> Iterator:
    """Replace `actkit.models.load` with a per-module cache for the module's duration; yields the cached load."""
    original = actkit.models.load
    cache: dict[tuple, tuple] = {}

    def load(spec, *, dtype="float32", device="cpu"):
        key = (str(spec), str(dtype), str(device))
        if key not in cache:
            cache[key] = original(spec, dtype=dtype, device=device)
        return cache[key]

    actkit.models.load = load
    yield load
    actkit.models.load = original
