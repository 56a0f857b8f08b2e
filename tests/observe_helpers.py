"""Shared pieces of the observe tests: a byte tokenizer for the tiny models and an independent capture.

The capture hooks modules found by hand (not through actkit's anatomy tables) and runs one unpadded document
chunk at a time, so the reference sees exactly the tokens a profile should, with no padding and no actkit code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from actkit.observe import default_texts

CONTEXT = 128  # max_position_embeddings of the tiny models


class ByteTokenizer:
    """Bytes to ids 2..31 after a BOS of 1 (0 pads): all `collect` needs of a tokenizer, for any tiny model."""

    pad_token_id = 0
    model_max_length = 10**30

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1] + [2 + b % 30 for b in text.encode()]}

    def decode(self, ids: list[int]) -> str:
        return "".join("<s>" if i == 1 else chr(ord("a") + (i - 2) % 26) for i in ids)


def texts() -> list[str]:
    """A few short documents and one longer than the tiny context, so that splitting is exercised."""
    return default_texts()[:6] + [" ".join(default_texts()[6:9])]


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The block list, found by hand."""
    if hasattr(model, "bert"):
        return model.bert.encoder.layer
    if hasattr(model, "transformer"):
        return model.transformer.h
    return model.model.layers


Where = tuple[torch.nn.Module, str]  # a module and "input" or "output"


def capture(model: torch.nn.Module, docs: list[str], points: dict[str, Where],
            tokenizer: Callable | None = None) -> tuple[int, dict[str, np.ndarray]]:
    """Token count and, per named point, every token's vector (float64, tokens of all chunks concatenated)."""
    got: dict[str, list[np.ndarray]] = {name: [] for name in points}

    def keep(name: str, side: str):
        def on_output(module, args, output):
            value = output if isinstance(output, torch.Tensor) else output[0]
            got[name].append(value.detach().reshape(-1, value.shape[-1]).double().numpy())

        def on_input(module, args, kwargs):
            value = args[0] if args else kwargs["hidden_states"]
            got[name].append(value.detach().reshape(-1, value.shape[-1]).double().numpy())
        return on_output if side == "output" else on_input

    handles = []
    for name, (module, side) in points.items():
        if side == "output":
            handles.append(module.register_forward_hook(keep(name, side)))
        else:
            handles.append(module.register_forward_pre_hook(keep(name, side), with_kwargs=True))
    tokenizer = tokenizer or ByteTokenizer()
    count = 0
    try:
        with torch.no_grad():
            for doc in docs:
                ids = tokenizer(doc)["input_ids"]
                for start in range(0, len(ids), CONTEXT):
                    chunk = torch.tensor([ids[start:start + CONTEXT]])
                    model(input_ids=chunk)
                    count += chunk.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    return count, {name: np.concatenate(values) for name, values in got.items()}
