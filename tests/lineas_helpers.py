"""A hand-made LinEAS file for toy-dense (no training: instant and exactly known) for the serve, vLLM and
``vector inspect`` tests."""

from __future__ import annotations

from pathlib import Path

import torch

from actkit.steer.lineas import KIND, LinEAS, save_lineas
from actkit.steer.vectors import model_metadata

#: The blocks of `toy_lineas`; the last one also has a rank-`RANK` term.
LAYERS = (1, 3)
RANK = 2


def toy_lineas(model: torch.nn.Module, seed: int = 0) -> LinEAS:
    """Maps at `LAYERS` that change exactly the first half of the coordinates (the scale on the first quarter,
    the shift on the second eighth to the half), strong enough to change toy-dense's greedy text."""
    d = int(model.config.hidden_size)
    g = torch.Generator().manual_seed(seed)
    maps: dict[int, dict[str, torch.Tensor]] = {}
    for layer in LAYERS:
        scale = torch.zeros(d)
        scale[: d // 4] = 0.5 * torch.randn(d // 4, generator=g)
        shift = torch.zeros(d)
        shift[d // 8: d // 2] = 1.5 * torch.randn(d // 2 - d // 8, generator=g)
        maps[layer] = {"scale": scale, "shift": shift}
    maps[LAYERS[-1]]["down"] = torch.randn(d, RANK, generator=g) / d ** 0.5
    maps[LAYERS[-1]]["up"] = 0.3 * torch.randn(RANK, d, generator=g)
    return LinEAS(maps, metadata={**model_metadata(model), "method": KIND, "n_source": 4, "n_target": 4,
                                  "loss_start": 0.5, "loss_end": 0.25, "l1": 1e-3, "group": 1e-3})


def save_toy_lineas(model: torch.nn.Module, path: Path, seed: int = 0) -> LinEAS:
    """`toy_lineas`, written to `path`; returns the maps as written."""
    lineas = toy_lineas(model, seed)
    save_lineas(lineas, path)
    return lineas
