"""Write an edited model as an ordinary Hugging Face checkpoint, atomically, with a JSON report beside it.

Every export (pruned weights, sliced experts, baked-in ablation) ends the same way: ``save_pretrained`` into a
folder that ``from_pretrained`` loads, plus a small JSON file saying what was done. The folder is written under a
temporary sibling name and renamed into place, so a crash or a bad input never leaves half a checkpoint, and an
existing folder is only replaced when the caller says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from actkit.io import atomic_folder, check_output_folder


def save_checkpoint(
    model: nn.Module,
    out_dir: str | Path,
    *,
    report_name: str,
    report: dict[str, Any],
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Save `model` (and `tokenizer`) with ``save_pretrained`` and `report` as ``out_dir/report_name``.

    The checkpoint is complete in a temporary folder next to `out_dir` before it takes that name; with `overwrite`
    an existing folder is replaced only once the new one is complete.
    """
    with atomic_folder(out_dir, overwrite=overwrite) as staging:
        saver: Any = model
        saver.save_pretrained(staging)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staging)
        (staging / report_name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


__all__ = ["check_output_folder", "save_checkpoint"]
