"""``actkit sae train|features`` and ``actkit generate --sae``: outputs, and bad input as exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sae_helpers import random_sae

from actkit.sae import load_sae, save_sae

from cli_helpers import assert_bad_input, invoke

pytestmark = pytest.mark.usefixtures("cached_load")  # each model loaded once for the module

PROMPT = "Tom reviewed the gym:"


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sae") / "toy"
    result = invoke("sae", "train", "--site", "resid_post.2", "--features", "64", "--k", "4", "--out", out,
                    "--tokens", "1500", "--eval-tokens", "400", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["site"] == "resid_post.2" and data["training"]["tokens"] == 1500
    assert 0 < data["heldout"]["fve"] <= 1 and data["heldout"]["l0"] == pytest.approx(4.0)
    return out


def test_train_writes_a_saelens_folder(sae_folder: Path) -> None:
    assert sorted(p.name for p in sae_folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    sae = load_sae(sae_folder)
    assert (sae.d_in, sae.d_sae, sae.k, sae.site) == (256, 64, 4, "resid_post.2")
    assert sae.metadata["actkit"]["model"] == "builtin:toy-dense"


def test_features_json_lists_scores_and_top_tokens(sae_folder: Path) -> None:
    result = invoke("sae", "features", sae_folder, "--tokens", "400", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["features"]
    assert len(rows) == 64 and data["prompt"] == "From my experience,"
    assert [r["output_score"] for r in rows] == sorted((r["output_score"] for r in rows), reverse=True)
    assert all(0 <= r["output_score"] <= 1 and len(r["top_tokens"]) == 8 for r in rows)
    table = invoke("sae", "features", sae_folder, "--tokens", "400", "--limit", "3", "--sort", "feature")
    assert table.exit_code == 0, table.output
    assert "top tokens" in table.stdout


def test_generate_with_a_feature_adds_its_decoder_row(sae_folder: Path) -> None:
    plain = invoke("generate", "-p", PROMPT, "-n", "6", "--json")
    strong = invoke("generate", "-p", PROMPT, "-n", "6", "--json", "--sae", sae_folder, "--feature", "5",
                    "--coef", "300")
    clamped = invoke("generate", "-p", PROMPT, "-n", "6", "--json", "--sae", sae_folder, "--feature", "5,6",
                     "--coef", "0", "--clamp")
    for result in (plain, strong, clamped):
        assert result.exit_code == 0, result.output
    row = json.loads(strong.stdout)
    assert row["sae"] == str(sae_folder) and row["feature"] == "5" and row["coef"] == 300
    assert row["completion"] != json.loads(plain.stdout)["completion"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--feature", "64", "--coef", "1"], "feature 64 is out of range"),
    (["--feature", "x"], "--feature 'x'"),
    ([], "--sae needs --feature"),
    (["--feature", "1", "--layers", "2"], "--layers is for --vector"),
    (["--feature", "1", "--clamp", "--relative"], "--relative"),
])
def test_generate_bad_sae_options(sae_folder: Path, args: list[str], needle: str) -> None:
    assert_bad_input(invoke("generate", "-p", PROMPT, "--sae", sae_folder, *args), needle)


def test_generate_feature_without_sae_and_both_sources() -> None:
    assert_bad_input(invoke("generate", "-p", PROMPT, "--feature", "1"), "--feature needs --sae")
    assert_bad_input(invoke("generate", "-p", PROMPT, "--sae", "x", "--vector", "y", "--feature", "1"),
                     "not both")


def test_an_sae_for_another_hidden_size_exits_2(tmp_path: Path) -> None:
    save_sae(random_sae(64, site="resid_post.2"), tmp_path / "other")
    assert_bad_input(invoke("generate", "-p", PROMPT, "--sae", tmp_path / "other", "--feature", "1"),
                     "size 64 at resid_post.2", "size 256 there")
    assert_bad_input(invoke("sae", "features", tmp_path / "other"), "size 64")


def test_a_site_without_an_sae_exits_2(tmp_path: Path) -> None:
    assert_bad_input(invoke("sae", "features", tmp_path), "no cfg.json")
    assert_bad_input(invoke("generate", "-p", PROMPT, "--sae", tmp_path / "none", "--feature", "1"),
                     "does not exist")


@pytest.mark.parametrize(("args", "needle"), [
    (["--features", "8", "--k", "9"], "larger than the dictionary"),
    (["--features", "8", "--k", "0"], "k must be a positive"),
    (["--features", "8", "--k", "2", "--site", "resid_post.9"], "resid_post.9"),
    (["--features", "8", "--k", "2", "--tokens", "0"], "--tokens must be positive"),
])
def test_train_bad_input_exits_2(tmp_path: Path, args: list[str], needle: str) -> None:
    base = {"--site": "resid_post.2"}
    if "--site" in args:
        base = {}
    flat = [x for kv in base.items() for x in kv]
    assert_bad_input(invoke("sae", "train", *flat, *args, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


def test_train_checks_out_before_loading_the_model(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("sae", "train", "--site", "resid_post.2", "--features", "8", "--k", "2", "--model",
                    "no/such-model-anywhere", "--out", blocker / "out")
    assert_bad_input(result, "a-file", "is a regular file")
    assert blocker.read_text() == "not a folder"
