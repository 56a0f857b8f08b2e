"""`actkit.io` when a run is stopped half-way (an error, Ctrl-C, SIGTERM): the output is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from actkit.io import atomic_folder, undone_on_failure


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def test_atomic_folder_stopped_between_its_renames_puts_the_old_folder_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("old")
    before = _listing(tmp_path)
    real = Path.rename
    renames = []

    def stopped_on_second(self: Path, target: str | Path) -> Path:
        renames.append(self)
        if len(renames) == 2:  # the old folder is already aside; the new one is not yet in place
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", stopped_on_second)
    with pytest.raises(KeyboardInterrupt), atomic_folder(out, overwrite=True) as stage:
        (stage / "config.json").write_text("new")
    monkeypatch.undo()
    assert _listing(tmp_path) == before


def test_atomic_folder_failing_inside_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "a" / "model") as stage:
        (stage / "weights").write_text("half")
        raise KeyboardInterrupt
    assert _listing(tmp_path) == {"a": None}  # the parent folder was made; no hidden .model.*.partial in it


def test_undone_on_failure_removes_only_the_empty_folders_it_saw_created(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), undone_on_failure(tmp_path / "new" / "report") as out:
        out.mkdir(parents=True)
        raise RuntimeError("stopped")
    assert _listing(tmp_path) == {}

    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), undone_on_failure(kept):
        raise RuntimeError("stopped")
    assert kept.is_dir()  # it existed before the run

    with pytest.raises(RuntimeError), undone_on_failure(tmp_path / "busy" / "report") as out:
        out.mkdir(parents=True)
        (out / "theirs.txt").write_text("something another process wrote")
        raise RuntimeError("stopped")
    assert (tmp_path / "busy" / "report" / "theirs.txt").exists()  # never removes what holds files

    with undone_on_failure(tmp_path / "ok") as out:
        out.mkdir()
    assert out.is_dir()  # success keeps it
