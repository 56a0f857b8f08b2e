"""``actkit patch`` on the built-in model: JSON shape, the heatmap, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_bad_input, invoke

pytestmark = pytest.mark.usefixtures("cached_load")

CLEAN = "When Anna and Tom went to the shop, Tom gave a book to"
CORRUPT = "When Anna and Tom went to the shop, Anna gave a book to"
PAIR = ["--clean", CLEAN, "--corrupt", CORRUPT, "--answer", "Anna", "--foil", "Tom"]


@pytest.mark.parametrize("method", ["exact", "atp", "atp-star"])
def test_json_has_one_effect_per_block_and_position(method: str) -> None:
    result = invoke("patch", *PAIR, "--method", method, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["site"] == "resid_post" and data["method"] == method
    assert len(data["effects"]) == 4 and all(len(row) == 15 for row in data["effects"])
    assert data["clean_metric"] > data["corrupt_metric"]
    if method == "exact":  # the last block at the last position carries the whole difference
        assert data["effects"][-1][-1] == pytest.approx(data["clean_metric"] - data["corrupt_metric"], abs=1e-4)


def test_heads_and_the_heatmap(tmp_path: Path) -> None:
    result = invoke("patch", *PAIR, "--site", "heads", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "strongest" in result.stdout and "head" in result.stdout
    data = json.loads((tmp_path / "patch.json").read_text())
    assert data["columns"] == "head" and len(data["effects"][0]) == 4
    assert (tmp_path / "patch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = invoke("patch", *PAIR, "--out", tmp_path)
    assert_bad_input(again, "already exists", "--force")
    assert invoke("patch", *PAIR, "--out", tmp_path, "--force").exit_code == 0


def test_bad_input_is_named() -> None:
    assert_bad_input(invoke("patch", *PAIR[:2], "--corrupt", "When Anna went to the shop, Anna gave a book to",
                            "--answer", "Anna", "--foil", "Tom"), "same length")
    assert_bad_input(invoke("patch", *PAIR, "--site", "resid_mid"), "unknown patching site")
    assert_bad_input(invoke("patch", *PAIR, "--method", "fast"), "unknown method")
    assert_bad_input(invoke("patch", *PAIR[:6]), "needs a foil")
    assert_bad_input(invoke("patch", *PAIR[:4], "--answer", "Anna Tom", "--foil", "Tom"), "not one")
