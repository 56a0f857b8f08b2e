"""Write an edited model as an ordinary Hugging Face checkpoint, atomically, with a JSON report beside it.

Every export (pruned weights, sliced experts, baked-in ablation) ends the same way: ``save_pretrained`` into a
folder that ``from_pretrained`` loads, plus a small JSON file saying what was done. The folder is written under a
temporary sibling name and renamed into place, so a crash or a bad input never leaves half a checkpoint, and an
existing folder is only replaced when the caller says so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from actkit.errors import ActkitError


def check_output_folder(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse a file, or an existing non-empty folder unless `overwrite` (the CLI's ``--force``); return the path.

    Call it before any expensive work, so a user learns about the clash at once.
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ActkitError(f"{str(folder)!r} is a file; give a folder for the checkpoint")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ActkitError(f"{str(folder)!r} exists and is not empty; pass --force to replace it "
                          "(overwrite=True in Python), or choose another --out")
    return folder


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
    folder = check_output_folder(out_dir, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the checkpoint should read like any folder
    try:
        saver: Any = model
        saver.save_pretrained(staging)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staging)
        (staging / report_name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


__all__ = ["check_output_folder", "save_checkpoint"]
