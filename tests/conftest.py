"""Test setup: tiny models run fastest on one thread (measured: oversubscribed threads cost up to 100x here)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
