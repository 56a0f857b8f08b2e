"""``actkit eval perplexity`` and ``actkit generate --activation-sparsity``: JSON shape, numbers, bad input."""

from __future__ import annotations

import json
import math

import pytest

from actkit.builtin import corpus
from actkit.evaluate.perplexity import nll

from cli_helpers import assert_bad_input, invoke

pytestmark = pytest.mark.usefixtures("cached_load")  # each model loaded once for the module


def test_json_is_the_perplexity_of_the_held_out_text(cached_load) -> None:
    result = invoke("eval", "perplexity", "--documents", "24", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"perplexity", "tokens", "context"} <= set(data)
    assert data["context"] == 256 and data["documents"] == 24 and data["text"] == "builtin:heldout"
    model, tokenizer = cached_load("builtin:toy-dense")
    total, count = nll(model, tokenizer, corpus.texts(24, split="heldout"), max_length=256)
    assert data["tokens"] == count
    assert data["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)


def test_context_cuts_every_document(tmp_path) -> None:
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(t.replace("\n", " ") for t in corpus.texts(6, split="heldout")) + "\n")
    result = invoke("eval", "perplexity", "--text", text, "--context", "8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["context"] == 8 and data["documents"] == 6 and data["tokens"] == 6 * 7


def test_activation_sparsity_is_reported_with_its_calibration(tmp_path) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(t.replace("\n", " ") for t in corpus.texts(48, split="train")) + "\n")
    dense = json.loads(invoke("eval", "perplexity", "--documents", "24", "--json").stdout)
    result = invoke("eval", "perplexity", "--documents", "24", "--activation-sparsity", "teal:0.5",
                    "--calibration-text", calib, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["activation_sparsity"] == "teal:0.5"
    assert abs(data["achieved_sparsity"] - 0.5) < 0.06
    assert data["calibration"]["source"] == str(calib) and data["calibration"]["documents"] == 48
    assert data["tokens"] == dense["tokens"] and data["perplexity"] > dense["perplexity"]
    wina = json.loads(invoke("eval", "perplexity", "--documents", "24", "--activation-sparsity", "wina:0.5",
                             "--json").stdout)
    assert wina["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3) and wina["calibration"] is None
    plain = invoke("eval", "perplexity", "--documents", "24", "--activation-sparsity", "wina:0")
    assert plain.exit_code == 0 and f"perplexity {dense['perplexity']:.4f}" in plain.stdout


@pytest.mark.parametrize("args, needles", [
    (["--activation-sparsity", "teal:1.5"], ["[0, 1)"]),
    (["--activation-sparsity", "wina"], ["METHOD:SPARSITY"]),
    (["--activation-sparsity", "topk:0.5"], ["unknown activation-sparsity method"]),
    (["--context", "1"], ["--context must be at least 2"]),
    (["--context", "100000"], ["longer than the model's limit of 256"]),
    (["--documents", "0"], ["--documents"]),
    (["--text", "/nonexistent/docs.txt"], ["does not exist"]),
    (["--activation-sparsity", "wina:0.5", "--calibration-text", "x.txt"], ["only used by TEAL"]),
])
def test_bad_input_exits_2_with_a_message(args, needles) -> None:
    assert_bad_input(invoke("eval", "perplexity", *args), *needles)


def test_generate_takes_activation_sparsity() -> None:
    prompt = "When Anna and Tom went to the shop, Tom gave a book to"
    result = invoke("generate", "-p", prompt, "-n", "4", "--activation-sparsity", "wina:0.5", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["activation_sparsity"] == "wina:0.5" and row["completion"].strip()
    assert_bad_input(invoke("generate", "-p", prompt, "--activation-sparsity", "wina:2"), "[0, 1)")
