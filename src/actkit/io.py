"""Writing files safely: never over a user's file without ``overwrite``, never half a file, never a traceback.

This is the one place actkit writes results (and reads its safetensors files back: `read_safetensors`). Three
shapes cover every output:

- `atomic_file(path)`: one file (a vector, a GGUF control vector, a probe), written under a hidden temporary name
  in the same folder and renamed into place, so a reader sees the old file or the whole new one.
- `staging(folder)` + `publish(...)`: a report (several files in a user's folder), rendered into a hidden folder
  inside it and moved into place file by file.
- `atomic_folder(out_dir)`: a whole folder (a checkpoint), completed under a hidden sibling name and then renamed.

On any failure, an exception or SIGTERM (which the command line turns into an exception), the temporary file or
folder is removed and the output is left as it was. File-system errors (a folder that cannot be written, a path
under a regular file) become `ActkitError` with the path and the reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actkit.errors import ActkitError


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def make_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents), or say clearly why it cannot be."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ActkitError(f"cannot create the folder {str(path)!r}: a file is in the way "
                          "(it or one of its parents is a regular file)") from None
    except NotADirectoryError:
        raise ActkitError(f"cannot create the folder {str(path)!r}: one of its parents is a regular file") from None
    except OSError as error:
        raise ActkitError(f"cannot create the folder {str(path)!r}: {_reason(error)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ActkitError(f"the folder {str(path)!r} cannot be written (permission denied); choose another --out")
    return path


def check_writable(out_dir: str | Path, names: Sequence[str], *, overwrite: bool = False) -> None:
    """Fail before any work is done when `out_dir` cannot hold the report `names`, or already holds one of them
    and `overwrite` is off."""
    folder = Path(out_dir)
    _check_parents(folder)
    if folder.exists() and not folder.is_dir():
        raise ActkitError(f"output folder {str(folder)!r} is a file; give a folder for --out")
    writable = _existing_ancestor(folder)  # the folder, or the nearest parent it would be created in
    if not os.access(writable, os.W_OK | os.X_OK):
        raise ActkitError(f"the folder {str(writable)!r} cannot be written (permission denied); choose another --out")
    if overwrite:
        return
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        more = f" (and {len(taken) - 1} more report files)" if len(taken) > 1 else ""
        raise ActkitError(f"{str(folder / taken[0])!r} already exists{more}; pass --force to overwrite "
                          "(overwrite=True in Python)")


def check_output_file(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse a folder, a path under a regular file, an unwritable folder, or an existing file without
    `overwrite`; return the path. Call it before expensive work, so a user learns of the clash at once."""
    p = Path(path)
    if p.is_dir():
        raise ActkitError(f"{str(p)!r} is a folder; give a file name")
    _check_parents(p)
    if p.exists() and not overwrite:
        raise ActkitError(f"{str(p)!r} already exists; pass --force to overwrite it (overwrite=True in Python)")
    parent = _existing_ancestor(p.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ActkitError(f"cannot write {str(p)!r}: the folder {str(parent)!r} is not writable (permission denied)")
    return p


def check_output_folder(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse a file, the current folder or one of its parents, an unwritable parent, or an existing non-empty
    folder unless `overwrite` (the CLI's ``--force``); return the path."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ActkitError(f"{str(folder)!r} is a file; give a folder for --out")
    _check_parents(folder)
    resolved, here = folder.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise ActkitError(f"--out {str(folder)!r} is the current folder or one of its parents; it would be replaced "
                          "as a whole: give a new folder, for example --out pruned/")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ActkitError(f"{str(folder)!r} exists and is not empty; pass --force to replace it "
                          "(overwrite=True in Python), or choose another --out")
    parent = _existing_ancestor(folder.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ActkitError(f"cannot write {str(folder)!r}: the folder {str(parent)!r} is not writable "
                          "(permission denied)")
    return folder


def _existing_ancestor(path: Path) -> Path:
    path = path if str(path) else Path(".")
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_parents(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ActkitError(f"cannot write {str(path)!r}: {str(parent)!r} is a regular file, not a folder")
            return


@contextmanager
def atomic_file(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it becomes `path` (one rename).

    The folder is created if needed; an existing file is replaced only with `overwrite`.
    """
    p = check_output_file(path, overwrite=overwrite)
    make_folder(p.parent if str(p.parent) else ".")
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        tmp = Path(name)
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output should read like any file
        os.replace(tmp, p)
    except OSError as error:
        raise ActkitError(f"cannot write {str(p)!r}: {_reason(error)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write `text` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class staging:
    """A hidden temporary folder inside `folder` (same file system, so moves out of it are atomic renames)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.path = Path(tempfile.mkdtemp(prefix=".actkit-", suffix=".tmp", dir=self.folder))
        except OSError as error:
            raise ActkitError(f"cannot write into {str(self.folder)!r}: {_reason(error)}") from None
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def _stops_deferred() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C until the block ends, then deliver them to the handlers in place before, so a stop
    lands before or after the block, never inside it. Outside the main thread (no handlers there) it does nothing.

    A Python-level deferral rather than a signal mask: a process-directed signal blocked in the main thread is
    delivered to another thread (torch keeps several), whose flag the main thread would still act on at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {stop: signal.signal(stop, lambda signum, frame: caught.append(signum)) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def publish(stage: Path, folder: Path, names: Sequence[str]) -> list[Path]:
    """Move the staged files `names` into `folder`, each with one atomic rename, all of them or (when a stop
    arrives first) none: SIGTERM and Ctrl-C wait until the last rename is done."""
    out = []
    with _stops_deferred():
        for name in names:
            os.replace(stage / name, folder / name)
            out.append(folder / name)
    return out


@contextmanager
def atomic_folder(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden folder beside `out_dir`; when the block ends without error it takes that name.

    With `overwrite` an existing folder is replaced only once the new one is complete.
    """
    folder = check_output_folder(out_dir, overwrite)
    make_folder(folder.parent if str(folder.parent) else ".")
    old = folder.with_name(f".{folder.name}.old")
    stage: Path | None = None
    moved = False
    try:
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        except OSError as error:
            raise ActkitError(f"cannot write {str(folder)!r}: {_reason(error)}") from None
        stage.chmod(0o755)  # mkdtemp makes it private; the output should read like any folder
        yield stage
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            moved = True
            folder.rename(old)
        stage.rename(folder)
    finally:
        if moved and old.exists() and not folder.exists():
            old.rename(folder)  # stopped between the two renames: the user's folder goes back
        if moved:
            shutil.rmtree(old, ignore_errors=True)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def undone_on_failure(folder: str | Path) -> Iterator[Path]:
    """Yield `folder`; if it did not exist before and the block fails (an error, Ctrl-C, SIGTERM), remove it
    again, with the empty parents created for it, as long as nothing else was put there.

    `staging` and `make_folder` create a report's folder before the report is rendered; a run stopped while
    rendering then leaves the folder as it found it: absent.
    """
    path = Path(folder)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        yield path
    except BaseException:
        for p in created:
            try:
                p.rmdir()  # only if empty
            except OSError:
                break
        raise


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, str], dict[str, Any]]:
    """A safetensors file's text header and its tensors, read without pickle; a missing or unreadable file is an
    `ActkitError` naming `what` (``"vector file"``, ``"probe file"``...) and the path.

    The one reader behind vectors, LinEAS maps, probes and SAE weights, so each gives the same clear errors.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ActkitError(f"{what} {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as handle:  # type: ignore[no-untyped-call]
            header = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ActkitError(f"{str(p)!r} is not a readable safetensors file ({error})") from None
    return header, tensors


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


__all__ = ["atomic_file", "atomic_folder", "check_output_file", "check_output_folder", "check_writable",
           "make_folder", "publish", "staging", "to_json", "undone_on_failure", "write_text"]
