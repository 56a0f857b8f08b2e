"""The report files: profile.json, the PNG plots and report.html; atomic, escaped, and without matplotlib too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from actkit import ActkitError
from actkit.observe import profile
from actkit.report import html, plots
from actkit.report.profile import write_report

from observe_helpers import ByteTokenizer, texts
from tiny import build

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result() -> dict:
    model = build("llama")
    with torch.no_grad():  # a massive channel, so that every table and plot has content
        model.model.layers[1].mlp.down_proj.weight[7] *= 1e4
    found = profile(model, ByteTokenizer(), texts(), max_tokens=150, model_name="<tiny & 'odd'>")
    found["massive"][0]["token"] = "<script>alert(1)</script>"
    return found


def test_report_writes_json_plots_and_html(result: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = write_report(result, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["profile.json", "report.html", *plots.PLOT_FILES])  # no staging folder left
    assert report.skipped is None and sorted(p.name for p in report.files) == names
    assert json.loads((out / "profile.json").read_text())["tokens"] == 150
    for name in plots.PLOT_FILES:
        assert (out / name).read_bytes().startswith(PNG)
    page = (out / "report.html").read_text()
    for name in plots.PLOT_FILES:
        assert f'src="{name}"' in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "&lt;tiny &amp; &#x27;odd&#x27;&gt;" in page
    assert "Massive activations" in page and "Per block" in page


def _fast_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in plots for tests about files, not figures (a real PNG takes a few hundred ms)."""
    def fake(result: dict, path: Path) -> bool:
        path.write_bytes(PNG)
        return True

    for name in plots.PLOT_FILES:
        monkeypatch.setitem(plots._PLOTS, name, fake)


def test_report_refuses_to_overwrite_without_force(result: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_plots(monkeypatch)
    write_report(result, tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    stamp = (tmp_path / "norms.png").stat().st_mtime_ns
    with pytest.raises(ActkitError, match="already exists.*--force"):
        write_report(result, tmp_path)
    assert (tmp_path / "norms.png").stat().st_mtime_ns == stamp
    changed = dict(result, tokens=7)
    write_report(changed, tmp_path, overwrite=True)
    assert json.loads((tmp_path / "profile.json").read_text())["tokens"] == 7
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_failure_while_rendering_leaves_the_folder_untouched(result: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bool:
        raise RuntimeError("disk on fire")

    _fast_plots(monkeypatch)
    monkeypatch.setitem(plots._PLOTS, "signal.png", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_report(result, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_the_json_and_html_are_still_written(result: dict, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    report = write_report(result, tmp_path)
    assert report.skipped is not None and "pip install 'actkit[report]'" in report.skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.json", "report.html"]
    assert "pip install" in (tmp_path / "report.html").read_text()


def test_plots_skip_what_has_no_data(result: dict, tmp_path: Path) -> None:
    dense_free = {**result, "layers": [{**layer, "sparsity": None} for layer in result["layers"]]}
    assert plots.plot_sparsity(dense_free, tmp_path / "sparsity.png") is False
    assert not (tmp_path / "sparsity.png").exists()
    page = html.render(dense_free, ["norms.png"], None)
    assert page.count("<img") == 1
