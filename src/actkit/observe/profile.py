"""The residual-norm profile: how large the residual stream is after each block.

The norm of the residual stream grows through a transformer, often by orders of magnitude, and a few tokens
(attention sinks, massive activations) can be far larger than the rest. Steering coefficients, ablations and
quantization ranges all have to be read against this scale, so the profile is the first thing to look at on a
new model. It is one `collect` pass with a `NormHistogram` at every ``resid_post`` site: constant memory, exact
mean and max, quantiles to about 0.1%.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from actkit.core.collect import collect
from actkit.core.sites import Site
from actkit.core.stats import NormHistogram
from actkit.errors import ActkitError

PROFILE_FILE = "profile.json"


def profile(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Iterable[str],
    *,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Per-block L2 norms of the residual stream leaving each block, over every token of `texts`.

    Arguments:
        model: a model of a family in the anatomy (decoder, encoder or MoE).
        tokenizer: its tokenizer.
        texts: documents, split and batched by `collect`'s text rules; `read_texts` reads a file.
        max_tokens: stop after this many tokens; None reads all of `texts`.
        batch_size: chunks per forward pass.
        progress: show a progress bar.
        model_name: the name recorded in the result; default the model's ``name_or_path`` or class name.

    Returns:
        ``{"model": name, "tokens": N, "layers": [{"index": i, "resid_norm_mean", "resid_norm_p50",
        "resid_norm_p99", "resid_norm_max"}, ...]}`` with one entry per block, in order. Plain Python values,
        ready for `json.dumps`.
    """
    found = collect(model, texts, "resid_post.*", {"norm": NormHistogram}, tokenizer=tokenizer,
                    batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    layers = []
    for site in found.sites:
        norms = found.reducers[site]["norm"].result()
        layers.append({
            "index": Site.parse(site).layer,
            "resid_norm_mean": float(norms["mean"]),
            "resid_norm_p50": float(norms["p50"]),
            "resid_norm_p99": float(norms["p99"]),
            "resid_norm_max": float(norms["max"]),
        })
    return {"model": model_name or _name_of(model), "tokens": int(found.tokens), "layers": layers}


def _name_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return str(name) if name else type(model).__name__


def write_profile(result: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write `result` to ``out_dir/profile.json``, atomically, so a crash never leaves half a file.

    Arguments:
        result: what `profile` returned.
        out_dir: the folder; created if missing.
        overwrite: replace an existing ``profile.json`` (the CLI's ``--force``); otherwise that is an error.

    Returns:
        The path written.
    """
    folder = Path(out_dir)
    path = folder / PROFILE_FILE
    check_writable(folder, overwrite=overwrite)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ActkitError(f"cannot create the output folder {str(folder)!r}: {error.strerror or error}") from None
    text = to_json(result) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{PROFILE_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Fail before any work is done when ``out_dir`` already holds a profile and `overwrite` is off."""
    folder = Path(out_dir)
    path = folder / PROFILE_FILE
    if folder.exists() and not folder.is_dir():
        raise ActkitError(f"output folder {str(folder)!r} is a file; give a folder for --out")
    if path.exists() and not overwrite:
        raise ActkitError(f"{str(path)!r} already exists; pass --force to overwrite it (overwrite=True in Python)")


def to_json(result: dict[str, Any]) -> str:
    """`result` as strict, indented JSON (NaN and infinity, which JSON lacks, become null)."""
    return json.dumps(_finite(result), indent=2)


def _finite(value: Any) -> Any:
    """Strict JSON has no NaN or infinity; write them as null rather than produce a file parsers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
