"""The actkit command: output schemas, files, and bad input ending as a message and exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import actkit
from actkit import cli

from cli_helpers import assert_bad_input, invoke, save_tiny

LAYER_KEYS = {"index", "resid_norm_mean", "resid_norm_p50", "resid_norm_p99", "resid_norm_max"}
PROFILE_KEYS = {"model", "tokens", "layers", "massive", "logits", "unavailable"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random BERT and Mixtral saved as ordinary Hugging Face folders, with a byte-level tokenizer."""
    return {family: save_tiny(family, tmp_path_factory.mktemp(family)) for family in ("bert", "mixtral")}


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"actkit {actkit.__version__}"


def test_profile_json_schema() -> None:
    result = invoke("profile", "--max-tokens", "200", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert PROFILE_KEYS <= set(data)
    assert data["model"] == cli.DEFAULT_MODEL
    assert data["tokens"] == 200
    model, _ = actkit.load(cli.DEFAULT_MODEL)
    assert [layer["index"] for layer in data["layers"]] == list(range(actkit.Anatomy.of(model).n_layers))
    assert all(LAYER_KEYS <= set(layer) for layer in data["layers"])
    assert all({"sparsity", "signal", "magnitude", "attn_logit_max"} <= set(layer) for layer in data["layers"])


def test_profile_table() -> None:
    result = invoke("profile", "--max-tokens", "100")
    assert result.exit_code == 0, result.output
    assert f"model {cli.DEFAULT_MODEL}" in result.stdout
    assert "family llama" in result.stdout and "100 tokens" in result.stdout
    for column in ("block", "mean", "p50", "p99", "max", "attn_out", "mlp_out", "near 0", "dead/on", "massive"):
        assert column in result.stdout


def test_profile_out_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "results"
    first = invoke("profile", "--max-tokens", "50", "--out", str(out), "--json")
    assert first.exit_code == 0, first.output
    written = json.loads((out / "profile.json").read_text())
    assert written == json.loads(first.stdout)
    assert {"report.html", "norms.png", "magnitudes.png", "sparsity.png", "signal.png"} <= {
        p.name for p in out.iterdir()}
    assert 'src="magnitudes.png"' in (out / "report.html").read_text()
    again = invoke("profile", "--max-tokens", "60", "--out", str(out))
    assert_bad_input(again, "already exists", "--force")
    assert json.loads((out / "profile.json").read_text())["tokens"] == 50  # untouched
    forced = invoke("profile", "--max-tokens", "60", "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "profile.json").read_text())["tokens"] == 60


def test_profile_text_file(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("First document.\n\nSecond one, a little longer.\n")
    result = invoke("profile", "--text", str(text), "--json")
    assert result.exit_code == 0, result.output
    _, tokenizer = actkit.load(cli.DEFAULT_MODEL)
    expected = sum(len(tokenizer(line)["input_ids"]) for line in ["First document.", "Second one, a little longer."])
    assert json.loads(result.stdout)["tokens"] == expected


def test_profile_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert_bad_input(invoke("profile", "--text", str(empty)), "empty")
    assert_bad_input(invoke("profile", "--text", str(tmp_path / "missing.txt")), "does not exist")
    assert_bad_input(invoke("profile", "--max-tokens", "0"), "--max-tokens", "positive")
    assert_bad_input(invoke("profile", "--batch-size", "0"), "--batch-size")
    assert_bad_input(invoke("profile", "--top-k", "0"), "--top-k")
    assert_bad_input(invoke("profile", "--sparsity-eps", "0"), "--sparsity-eps")
    assert_bad_input(invoke("profile", "--model", str(tmp_path / "no-such-model")), "no-such-model")
    assert_bad_input(invoke("profile", "--dtype", "int8"), "int8")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert_bad_input(invoke("profile", "--out", str(not_a_folder)), "is a file")


def test_profile_without_matplotlib_still_writes_the_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke("profile", "--max-tokens", "40", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "pip install 'actkit[report]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.json", "report.html"]


def test_profile_massive_intervention_flag() -> None:
    result = invoke("profile", "--max-tokens", "60", "--massive-intervention", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "massive_intervention" in data
    if data["massive_intervention"] is None:  # the default model may have no massive activation
        assert "massive_intervention" in data["unavailable"]
    else:
        assert set(data["massive_intervention"]["perplexity"]) == {"original", "zero", "mean"}


def test_unknown_option_is_a_usage_error() -> None:
    assert invoke("profile", "--no-such-option").exit_code == 2


def test_profile_encoder_and_moe_folders(folders: dict[str, Path]) -> None:
    for family, folder in folders.items():
        result = invoke("profile", "--model", str(folder), "--max-tokens", "300", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["tokens"] == 300
        assert len(data["layers"]) == 3, family
        assert all(layer["resid_norm_max"] >= layer["resid_norm_p99"] > 0 for layer in data["layers"])
        assert all(layer["attn_logit_max"] is not None for layer in data["layers"])
        if family == "mixtral":
            assert all(layer["router"]["experts"] == 4 for layer in data["layers"])
            assert "sparsity" in data["unavailable"]
        else:
            assert all(layer["sparsity"]["neurons"] == 96 for layer in data["layers"])


def test_sites(folders: dict[str, Path]) -> None:
    result = invoke("sites", "--model", str(folders["mixtral"]), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["family"] == "mixtral" and data["blocks"] == 3
    assert {"embed", "resid_post.2", "router.0", "expert_out.1.3", "logits"} <= set(data["sites"])
    table = invoke("sites", "--model", str(folders["mixtral"]))
    assert table.exit_code == 0, table.output
    assert "expert_out" in table.stdout and "experts 0-3" in table.stdout
    only = json.loads(invoke("sites", "--site", "mlp_hidden.*", "--site", "embed", "--json").stdout)
    assert only["sites"] == ["mlp_hidden.0", "mlp_hidden.1", "mlp_hidden.2", "mlp_hidden.3", "embed"]


def test_sites_bad_site() -> None:
    assert_bad_input(invoke("sites", "--site", "nonsense.1"), "unknown site kind")
    assert_bad_input(invoke("sites", "--site", "resid_post.99"), "does not exist")
    assert_bad_input(invoke("sites", "--site", "router.*"), "matches no site")


def test_main_prints_errors_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["actkit", "profile", "--max-tokens", "0"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: --max-tokens")
