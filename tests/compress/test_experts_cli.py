"""``actkit prune experts`` and ``actkit generate --experts-off``: outputs, files, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers as tf

from actkit.compress.experts import REPORT_FILE
from actkit.compress.experts.cli import parse_keep

from cli_helpers import assert_bad_input, invoke, save_tiny


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Mixtral and Llama as Hugging Face folders with a byte tokenizer, and a calibration file."""
    out = {family: save_tiny(family, tmp_path_factory.mktemp(family)) for family in ("mixtral", "llama")}
    text = tmp_path_factory.mktemp("text") / "calibration.txt"
    text.write_text("the cat sat on the mat\nan expert is a small MLP chosen by a router\nthird line\n")
    out["text"] = text
    return out


def test_prune_experts_on_the_builtin_moe(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    result = invoke("prune", "experts", "--out", str(out), "--keep", "0.75", "--calibration-documents", "24",
                    "--eval-documents", "8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "builtin:toy-moe" and report["method"] == "reap"
    assert report["experts_before"] == 8 and report["experts_after"] == 6 and report["top_k"] == 2
    assert [len(row["kept"]) for row in report["layers"]] == [6, 6, 6, 6]
    assert report["calibration"]["source"] == "builtin:train" and report["calibration"]["documents"] == 24
    ev = report["evaluation"]
    assert ev["perplexity_after"] > 1 and ev["perplexity_before"] > 1
    assert json.loads((out / REPORT_FILE).read_text())["layers"] == report["layers"]
    loaded = tf.AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.num_local_experts == 6
    assert loaded.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 6
    again = invoke("prune", "experts", "--out", str(out), "--keep", "0.75")
    assert_bad_input(again, "--force")


def test_merge_table_output_and_protect(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    result = invoke("prune", "experts", "--model", str(folders["mixtral"]), "--method", "merge", "--keep", "2",
                    "--text", str(folders["text"]), "--protect", "1:3", "--eval-documents", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "merge: 2 of 4 experts kept" in result.stdout and "merged into kept" in result.stdout
    assert f"wrote {out}" in result.stdout
    report = json.loads((out / REPORT_FILE).read_text())
    assert 3 in report["layers"][1]["kept"]
    assert report["calibration"]["source"] == str(folders["text"]) and "evaluation" not in report
    assert tf.AutoModelForCausalLM.from_pretrained(out).config.num_local_experts == 2


def test_keep_says_fraction_or_count() -> None:
    assert parse_keep("0.5") == 0.5 and isinstance(parse_keep("0.5"), float)
    assert parse_keep("50%") == 0.5 and parse_keep("100%") == 1.0
    assert parse_keep("1") == 1 and isinstance(parse_keep("1"), int)  # one expert, not 100%
    assert parse_keep("4") == 4 and isinstance(parse_keep(" 4 "), int)


@pytest.mark.parametrize(("args", "needles"), [
    (["--method", "magnitude"], ["unknown --method 'magnitude'", "reap, ean, frequency, merge"]),
    (["--keep", "2.5"], ["--keep"]),
    (["--keep", "0"], ["--keep"]),
    (["--keep", "1.0"], ["--keep 1.0", "100%", "whole number"]),  # ambiguous: all of them, or one?
    (["--keep", "150%"], ["percentage"]),
    (["--keep", "-2"], ["--keep"]),
    (["--keep", "half"], ["--keep 'half'", "0.5"]),
    (["--protect", "1-3"], ["LAYER:EXPERT"]),
    (["--batch-size", "0"], ["--batch-size"]),
])
def test_bad_input_before_loading(args: list[str], needles: list[str], tmp_path: Path) -> None:
    assert_bad_input(invoke("prune", "experts", "--model", "no/such-model", "--out", str(tmp_path / "o"), *args),
                     *needles)


@pytest.mark.parametrize(("model", "args", "needles"), [
    ("mixtral", ["--keep", "9"], ["keeps 9 experts but each MoE block has only 4"]),
    ("mixtral", ["--keep", "0.25"], ["fewer than the 2 the router picks"]),
    ("mixtral", ["--keep", "1"], ["--keep 1 keeps 1 of 4 experts", "fewer than the 2 the router picks"]),
    ("mixtral", ["--protect", "7:0"], ["block 7 is not an MoE block"]),
    ("llama", [], ["is not a mixture of experts", "builtin:toy-moe"]),
])
def test_bad_input_after_loading(model: str, args: list[str], needles: list[str], folders: dict[str, Path],
                                 tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = invoke("prune", "experts", "--model", str(folders[model]), "--text", str(folders["text"]),
                    "--eval-documents", "0", "--out", str(out), *args)
    assert_bad_input(result, *needles)
    assert not out.exists()


def test_generate_with_experts_off(folders: dict[str, Path]) -> None:
    base = ["generate", "--model", str(folders["mixtral"]), "--prompt", "hello", "-n", "4", "--json"]
    plain = invoke(*base)
    switched = invoke(*base, "--experts-off", "0:1,2:3")
    assert plain.exit_code == 0 and switched.exit_code == 0, switched.output
    row = json.loads(switched.stdout)
    assert row["experts_off"] == "0:1,2:3" and json.loads(plain.stdout)["experts_off"] is None
    assert_bad_input(invoke(*base, "--experts-off", "0:9"), "expert 0:9 does not exist")
    assert_bad_input(invoke(*base, "--experts-off", "x"), "LAYER:EXPERT")
    assert_bad_input(invoke("generate", "--model", str(folders["llama"]), "--prompt", "hi", "--experts-off", "0:0"),
                     "not a mixture of experts")
