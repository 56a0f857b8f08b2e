"""The import layers of ARCHITECTURE.md hold: import-linter's contracts in pyproject.toml are all kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_only() -> None:
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if linter is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]' installs it)")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([linter, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
