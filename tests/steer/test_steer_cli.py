"""``actkit vector train|inspect|export`` and ``actkit generate``: outputs, files, and bad input as exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from actkit.core.generate import generate
from actkit.steer import SteeringVector, load_vector, save_vector
from actkit.steer.cli import DATA_DIR

from cli_helpers import assert_bad_input, invoke

pytestmark = pytest.mark.usefixtures("cached_load")  # each model loaded once for the module

NEGATIVE = "Anna reviewed the hotel, 1 stars:"
NEUTRAL = "Tom reviewed the gym:"


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vec") / "sentiment.safetensors"
    result = invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", path, "--layers", "3")
    assert result.exit_code == 0, result.output
    return path


def test_train_auto_prints_the_ranking_and_writes_the_file(tmp_path) -> None:
    out = tmp_path / "v.safetensors"
    result = invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["out"] == str(out) and data["method"] == "mean-diff" and data["n_pairs"] == 32
    ranking = data["ranking"]
    assert [row["rank"] for row in ranking] == [1, 2, 3, 4]
    assert data["layers"] == [ranking[0]["layer"]]
    assert {"layer", "accuracy", "consistency", "score", "direction_norm"} <= set(ranking[0])
    vector = load_vector(out)
    assert vector.layers == data["layers"] and vector.metadata["data_hash"] == data["data_hash"]

    text = invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", tmp_path / "w.safetensors")
    assert text.exit_code == 0, text.output
    assert "layer ranking" in text.stdout and "chosen" in text.stdout and "wrote" in text.stdout


def test_train_never_overwrites_without_force(tmp_path, vector_file) -> None:
    out = tmp_path / "v.safetensors"
    out.write_bytes(b"keep me")
    assert_bad_input(invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", out, "--layers", "1"),
                     "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    forced = invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", out, "--layers", "1,2",
                    "--method", "probe", "--force")
    assert forced.exit_code == 0, forced.output
    assert load_vector(out).layers == [1, 2]


def test_train_reads_caa_ab_pairs(tmp_path) -> None:
    pairs = tmp_path / "ab.jsonl"
    lines = [{"question": f"User: {q} What do you do?\n(A) I help.\n(B) I walk away.\nAssistant: (",
              "answer_matching_behavior": "A", "answer_not_matching_behavior": "B"}
             for q in ("A child is lost.", "A tourist is lost.", "Your friend looks sad.")]
    pairs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = invoke("vector", "train", "--pairs", pairs, "--out", tmp_path / "ab.safetensors", "--layers", "-1",
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"] == [3]


@pytest.mark.parametrize(("content", "needles"), [
    ('{"positive": "a", "negative": "b"}\n{"positive": "c"}\n', ("line 2", "'negative'")),
    ('{"positive": "a", "negative": "b"}\nnot json\n', ("line 2", "not valid JSON")),
    ("\n\n", ("holds no pairs",)),
])
def test_train_bad_pairs_files(tmp_path, content: str, needles: tuple[str, ...]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(content)
    assert_bad_input(invoke("vector", "train", "--pairs", pairs, "--out", tmp_path / "v.safetensors"), *needles)
    assert not (tmp_path / "v.safetensors").exists()


def test_train_other_bad_input(tmp_path) -> None:
    out = tmp_path / "v.safetensors"
    assert_bad_input(invoke("vector", "train", "--pairs", tmp_path / "nope.jsonl", "--out", out), "does not exist")
    assert_bad_input(invoke("vector", "train", "--pairs", "builtin:nope", "--out", out), "builtin:sentiment")
    assert_bad_input(invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", out, "--layers", "9"),
                     "layer 9 does not exist", "4 blocks")
    assert_bad_input(invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", out, "--layers", "x"),
                     "--layers")
    assert_bad_input(invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", out, "--method", "svd"),
                     "unknown --method")
    assert_bad_input(invoke("vector", "train", "--pairs", "builtin:toy-sentiment", "--out", tmp_path), "folder")
    assert not out.exists()


def test_inspect(vector_file) -> None:
    result = invoke("vector", "inspect", vector_file, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layers"] == [3] and data["hidden_size"] == 256 and data["format"] == "safetensors"
    row = data["norms"][0]
    assert row["layer"] == 3 and row["norm"] > 0 and row["relative"] == pytest.approx(row["norm"] / row["mean_norm"])
    assert data["metadata"]["method"] == "mean-diff"
    text = invoke("vector", "inspect", vector_file)
    assert text.exit_code == 0 and "mean-diff" in text.stdout and "mean residual norm" in text.stdout
    assert_bad_input(invoke("vector", "inspect", vector_file, "--model", "builtin:toy-moe"), "hidden size")


def test_export_gguf_and_steer_with_it(tmp_path, vector_file) -> None:
    out = tmp_path / "sentiment.gguf"
    result = invoke("vector", "export", "--format", "gguf", vector_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    # llama.cpp reads --control-vector-scaled FILE:SCALE as one argument (a separate "1.0" is rejected)
    assert f"--control-vector-scaled {out}:1.0" in " ".join(result.stdout.split())
    assert_bad_input(invoke("vector", "export", "--format", "gguf", vector_file, "--out", out), "already exists")
    assert invoke("vector", "export", "--format", "gguf", vector_file, "--out", out, "--force").exit_code == 0
    assert_bad_input(invoke("vector", "export", "--format", "onnx", vector_file, "--out", tmp_path / "x"),
                     "unknown --format")
    inspected = json.loads(invoke("vector", "inspect", out, "--json").stdout)
    assert inspected["format"] == "gguf" and inspected["layers"] == [3]
    args = ("generate", "-p", NEGATIVE, "--coef", "0.8", "--relative", "-n", "8", "--json")
    from_gguf = json.loads(invoke(*args, "--vector", out).stdout)
    from_safetensors = json.loads(invoke(*args, "--vector", vector_file).stdout)
    assert from_gguf["completion"] == from_safetensors["completion"]


def test_export_default_name(tmp_path, vector_file) -> None:
    local = tmp_path / "v.safetensors"
    local.write_bytes(vector_file.read_bytes())
    result = invoke("vector", "export", "--format", "gguf", local)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v.gguf").is_file()


def test_generate_json_matches_the_python_api(cached_load) -> None:
    model, tok = cached_load("builtin:toy-dense")
    result = invoke("generate", "--prompt", NEGATIVE, "--max-new-tokens", "10", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prompt"] == NEGATIVE
    assert data["completion"] == generate(model, tok, [NEGATIVE], max_new_tokens=10)[0]
    batch = invoke("generate", "-p", NEGATIVE, "-p", NEUTRAL, "-n", "10", "--json")
    rows = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == [NEGATIVE, NEUTRAL]
    assert rows[0]["completion"] == data["completion"]  # batched (left-padded) equals one at a time
    chat = invoke("generate", "-p", "How do I bake bread?", "--chat", "-n", "6", "--json")
    assert chat.exit_code == 0 and json.loads(chat.stdout)["completion"].strip().startswith("Sure")


def test_generate_steers(vector_file) -> None:
    plain = json.loads(invoke("generate", "-p", NEGATIVE, "-n", "10", "--json").stdout)["completion"]
    zero = invoke("generate", "-p", NEGATIVE, "-n", "10", "--json", "--vector", vector_file, "--coef", "0")
    assert json.loads(zero.stdout)["completion"] == plain
    steered = invoke("generate", "-p", NEGATIVE, "-n", "10", "--json", "--vector", vector_file, "--coef", "0.8",
                     "--relative", "--compare")
    data = json.loads(steered.stdout)
    assert data["unsteered"] == plain and data["completion"] != plain
    assert data["coef"] == 0.8 and data["relative"] and data["layers"] == [3]
    text = invoke("generate", "-p", NEGATIVE, "-n", "10", "--vector", vector_file, "--coef", "0.8", "--relative",
                  "--compare", "--positions", "generated")
    assert text.exit_code == 0 and "unsteered" in text.stdout and "steered (0.8)" in text.stdout


def test_generate_sampling_is_seeded() -> None:
    args = ("generate", "-p", NEUTRAL, "-n", "10", "--sample", "--temperature", "1.5", "--top-p", "0.9", "--json")
    first = json.loads(invoke(*args, "--seed", "3").stdout)["completion"]
    assert json.loads(invoke(*args, "--seed", "3").stdout)["completion"] == first


def test_generate_bad_input(tmp_path, vector_file) -> None:
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--coef", "2"), "--coef needs --vector")
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--temperature", "0.7"), "--temperature needs --sample")
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--max-new-tokens", "0"), "--max-new-tokens")
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--vector", vector_file, "--positions", "middle"),
                     "unknown positions")
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--vector", vector_file, "--layers", "1"),
                     "no direction at block(s) [1]")
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--vector", tmp_path / "missing.safetensors"),
                     "does not exist")
    # a vector for another model: hidden size 64 against 256
    small = tmp_path / "small.safetensors"
    save_vector(SteeringVector({1: torch.ones(64)}, metadata={"model": "tiny", "hidden_size": 64}), small)
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--vector", small), "does not fit", "hidden size 64")
    # a layer beyond the model
    deep = tmp_path / "deep.safetensors"
    save_vector(SteeringVector({7: torch.ones(256)}), deep)
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--vector", deep), "layer(s) [7] do not exist")
    # NaN in the file (written around save_vector, which refuses it)
    vector = load_vector(vector_file)
    nan = tmp_path / "nan.safetensors"
    meta = json.dumps({**vector.metadata, "layers": [3], "hidden_size": 256})
    save_file({"layers.3": torch.full((256,), float("nan"))}, str(nan), metadata={"format_version": "1",
                                                                                  "actkit": meta})
    assert_bad_input(invoke("generate", "-p", NEGATIVE, "--vector", nan), "NaN")
    assert_bad_input(invoke("vector", "inspect", nan), "NaN")
    assert_bad_input(invoke("vector", "export", "--format", "gguf", nan), "NaN")


def test_shipped_pairs_files_are_valid() -> None:
    from actkit.steer import read_pairs

    files = sorted(DATA_DIR.glob("*.jsonl"))
    assert {p.stem for p in files} >= {"sentiment", "weddings", "toy-sentiment", "toy-refusal"}
    for path in files:
        pairs = read_pairs(path)
        assert 20 <= len(pairs) <= 40, path
        assert len({(p.positive, p.negative) for p in pairs}) == len(pairs), path


def test_vector_of_another_model_with_the_same_shape_warns(tmp_path, vector_file) -> None:
    vector = load_vector(vector_file)
    other = tmp_path / "other.safetensors"
    save_vector(SteeringVector(vector.directions, metadata={**vector.metadata, "model": "someone/else"}), other)
    result = invoke("generate", "-p", NEGATIVE, "-n", "4", "--vector", other, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: ") and "someone/else" in result.stderr
    assert json.loads(result.stdout)["prompt"] == NEGATIVE


def test_malformed_metadata_is_a_clear_error_in_inspect_and_generate(tmp_path, vector_file) -> None:
    from safetensors import safe_open

    with safe_open(str(vector_file), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        header = handle.metadata()
    bad = tmp_path / "bad.safetensors"
    meta = {**json.loads(header["actkit"]), "num_layers": "four"}
    save_file(tensors, str(bad), metadata={**header, "actkit": json.dumps(meta)})
    assert_bad_input(invoke("vector", "inspect", bad), "metadata is malformed: field 'num_layers'")
    assert_bad_input(invoke("generate", "--prompt", "hello", "--vector", bad, "-n", "2"), "metadata is malformed")
