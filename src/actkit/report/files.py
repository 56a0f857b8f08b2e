"""Writing result files safely: never over a user's file without ``--force``, never half a file.

Every report (a profile, a steering demo) is rendered into a hidden staging folder inside the output folder and
then moved into place file by file, each move an atomic rename on the same file system; a failure while rendering
leaves the output folder as it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actkit.errors import ActkitError


def check_writable(out_dir: str | Path, names: Sequence[str], *, overwrite: bool = False) -> None:
    """Fail before any work is done when `out_dir` already holds one of `names` and `overwrite` is off."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ActkitError(f"output folder {str(folder)!r} is a file; give a folder for --out")
    if overwrite:
        return
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        more = f" (and {len(taken) - 1} more report files)" if len(taken) > 1 else ""
        raise ActkitError(f"{str(folder / taken[0])!r} already exists{more}; pass --force to overwrite "
                          "(overwrite=True in Python)")


def make_folder(folder: Path) -> None:
    """Create `folder` (and its parents), or say clearly why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ActkitError(f"cannot create the output folder {str(folder)!r}: {error.strerror or error}") from None


class staging:
    """A hidden temporary folder inside `folder` (same file system, so moves out of it are atomic renames)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=".actkit-", suffix=".tmp", dir=self.folder))
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def publish(stage: Path, folder: Path, names: Sequence[str]) -> list[Path]:
    """Move the staged files `names` into `folder`, each with one atomic rename."""
    out = []
    for name in names:
        os.replace(stage / name, folder / name)
        out.append(folder / name)
    return out


def to_json(result: Any) -> str:
    """`result` as strict, indented JSON (NaN and infinity, which JSON lacks, become null)."""
    return json.dumps(_finite(result), indent=2)


def _finite(value: Any) -> Any:
    """Strict JSON has no NaN or infinity; write them as null rather than produce a file parsers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


__all__ = ["check_writable", "make_folder", "publish", "staging", "to_json"]
