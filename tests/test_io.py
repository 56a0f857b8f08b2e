"""actkit.io: atomic files and folders, refusing to overwrite, clear errors for paths that cannot be written."""

from __future__ import annotations

import os

import pytest

from actkit.errors import ActkitError
from actkit.io import atomic_file, atomic_folder, check_output_folder, check_writable, write_text


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_file_replaces_only_when_the_block_succeeds(tmp_path) -> None:
    target = tmp_path / "v.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old" and _hidden(tmp_path) == []
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _hidden(tmp_path) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_existing_file_is_not_overwritten_silently(tmp_path) -> None:
    target = tmp_path / "v.txt"
    write_text(target, "mine")
    with pytest.raises(ActkitError, match="already exists; pass --force"):
        write_text(target, "other")
    assert target.read_text() == "mine"


def test_a_path_under_a_regular_file_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ActkitError, match="is a regular file, not a folder"):
        write_text(tmp_path / "file" / "sub" / "v.txt", "y")
    with pytest.raises(ActkitError, match="regular file"):
        check_writable(tmp_path / "file" / "out", ["report.md"])
    with pytest.raises(ActkitError, match="regular file"):
        check_output_folder(tmp_path / "file" / "ckpt", overwrite=True)


def test_a_folder_is_not_a_file_name(tmp_path) -> None:
    with pytest.raises(ActkitError, match="is a folder; give a file name"):
        write_text(tmp_path, "x", overwrite=True)


def test_atomic_folder_leaves_the_old_folder_when_the_block_fails(tmp_path) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(ActkitError, match="not empty; pass --force"):
        with atomic_folder(out):
            pass
    with pytest.raises(RuntimeError), atomic_folder(out, overwrite=True) as stage:
        (stage / "config.json").write_text("half")
        raise RuntimeError("killed")
    assert (out / "config.json").read_text() == "old" and _hidden(tmp_path) == []
    with atomic_folder(out, overwrite=True) as stage:
        (stage / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "new" and _hidden(tmp_path) == []


def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("user data")
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ActkitError, match="current folder or one of its parents"):
            check_output_folder(out, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "user data"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder, so permissions cannot fail here")
def test_an_unwritable_folder_is_a_clear_error(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ActkitError, match="permission denied"):
            write_text(locked / "v.txt", "x")
        with pytest.raises(ActkitError, match="permission denied"):
            check_writable(locked, ["report.md"])
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's /sys, where nobody may create files")
def test_a_folder_nobody_may_write_is_a_clear_error_even_for_root() -> None:
    with pytest.raises(ActkitError, match="cannot (create the folder|write)"):
        write_text("/sys/actkit-test/v.txt", "x")


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_stop_during_publish_waits_until_every_file_is_in_place(tmp_path) -> None:
    import signal

    from actkit.io import publish, staging

    out = tmp_path / "out"
    out.mkdir()
    received: list[list[str]] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append(sorted(p.name for p in out.iterdir() if not p.name.startswith("."))))
    try:
        with staging(out) as stage:
            for name in ("a.json", "b.png", "c.html"):
                (stage / name).write_text(name)
            real = os.replace

            def replace_then_stop(src, dst):  # the stop arrives between the first and the second rename
                real(src, dst)
                if str(dst).endswith("a.json"):
                    os.kill(os.getpid(), signal.SIGTERM)

            os.replace = replace_then_stop
            try:
                publish(stage, out, ["a.json", "b.png", "c.html"])
            finally:
                os.replace = real
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [["a.json", "b.png", "c.html"]]  # handled only once all three were published
