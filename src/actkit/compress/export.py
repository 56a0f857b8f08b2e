"""Save a weight-pruned model: an ordinary Hugging Face checkpoint with ``pruning.json`` beside it.

`prune_weights` returns a model whose pruned weights are zeros and a report of what was done; `export_pruned` is
the one way to keep both, from Python as from ``actkit prune weights``. The folder loads with ``from_pretrained``
(and so in vLLM or any engine) as a dense model: zeros save no memory until a sparse kernel reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from actkit.compress.weights import REPORT_FILE
from actkit.errors import ActkitError
from actkit.models.checkpoint import save_checkpoint


def export_pruned(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    report: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a pruned model, its tokenizer and its report as a Hugging Face checkpoint folder.

    The folder is written under a hidden name beside `out_dir` and takes its name only once complete, so a crash,
    Ctrl-C or SIGTERM never leaves half a checkpoint.

    Arguments:
        model: the pruned model (the first result of `prune_weights`).
        tokenizer: its tokenizer, saved beside it (None: the weights and config alone).
        out_dir: the folder to write; its parents are created.
        report: the report of `prune_weights`, with anything the caller adds (the model's name, an evaluation);
            written as ``out_dir/pruning.json``.
        overwrite: replace an existing non-empty folder (only once the new one is complete).

    Returns:
        The folder.

    Raises `ActkitError` when `out_dir` is a file, the current folder, unwritable, or exists and is not empty
    without `overwrite`, or when `report` cannot be written as JSON, before anything is written.
    """
    if not isinstance(report, dict):
        raise ActkitError(f"report must be the dict prune_weights returned, not {type(report).__name__}")
    try:
        json.dumps(report)
    except (TypeError, ValueError) as error:
        raise ActkitError(f"the report cannot be written as JSON ({error}); keep to numbers, strings, lists and "
                          "dicts") from None
    return save_checkpoint(model, out_dir, report_name=REPORT_FILE, report=report, tokenizer=tokenizer,
                           overwrite=overwrite)


__all__ = ["REPORT_FILE", "export_pruned"]
