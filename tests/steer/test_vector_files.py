"""Vector files: round trip, metadata, checks against the model, refusals; GGUF control vectors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from actkit import ActkitError
from actkit.steer import (
    Pair,
    SteeringVector,
    export_gguf,
    import_gguf,
    load_vector,
    pairs_hash,
    save_vector,
    train_vector,
)
from actkit.steer.vectors import model_metadata

PAIRS = [Pair("good day", "bad day"), Pair("so happy", "so sad"), Pair("love it", "hate it")]


@pytest.fixture
def vector(llama, tok) -> SteeringVector:
    return train_vector(llama, tok, PAIRS, [1, 2], method="pca-diff")


def test_round_trip_and_metadata(tmp_path, llama, vector) -> None:
    path = save_vector(vector, tmp_path / "sub" / "v.safetensors")
    loaded = load_vector(path, llama)
    assert loaded.layers == [1, 2] and loaded.site == "resid_post"
    for layer in vector.layers:
        assert torch.equal(loaded.directions[layer], vector.directions[layer])
    meta = loaded.metadata
    assert meta["method"] == "pca-diff" and meta["normalization"] == "mean-diff-norm"
    assert meta["read_positions"] == "last" and meta["data_hash"] == pairs_hash(PAIRS)
    assert meta["hidden_size"] == 64 and meta["layers"] == [1, 2] and meta["site"] == "resid_post"
    assert meta["config_hash"] == model_metadata(llama)["config_hash"] and meta["model"] == "LlamaForCausalLM"
    assert set(meta["mean_norms"]) == {"1", "2"}
    assert loaded.mean_norm(2) == pytest.approx(vector.mean_norm(2))
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["layers.1", "layers.2"]
        header = handle.metadata()
    assert header["format_version"] == "1" and json.loads(header["actkit"])["method"] == "pca-diff"
    assert not list(tmp_path.joinpath("sub").glob(".*.tmp"))  # no temporary file left behind


def test_overwrite_is_refused_unless_asked(tmp_path, vector) -> None:
    path = save_vector(vector, tmp_path / "v.safetensors")
    with pytest.raises(ActkitError, match="--force"):
        save_vector(vector, path)
    save_vector(vector, path, overwrite=True)


def _with(vector: SteeringVector, directions=None, **meta) -> SteeringVector:
    return SteeringVector(directions or vector.directions, metadata={**vector.metadata, **meta})


def test_mismatches_say_what_differs(tmp_path, llama, vector) -> None:
    cases = {
        "hidden size 48 in the vector, 64 in the model": _with(vector, {1: torch.ones(48)}, hidden_size=48),
        r"layer\(s\) \[5\] do not exist": _with(vector, {1: torch.ones(64), 5: torch.ones(64)}),
        "4 blocks in the model the vector was made for, 3 in this one": _with(vector, num_layers=4),
    }
    for i, (message, bad) in enumerate(cases.items()):
        path = save_vector(bad, tmp_path / f"bad{i}.safetensors")
        load_vector(path)  # fine without a model
        with pytest.raises(ActkitError, match=message):
            load_vector(path, llama)


def test_name_or_config_differences_only_warn(tmp_path, llama, vector) -> None:
    path = save_vector(_with(vector, model="someone/other-model"), tmp_path / "a.safetensors")
    with pytest.warns(UserWarning, match="someone/other-model"):
        load_vector(path, llama)
    config = {**vector.metadata["config"], "vocab_size": 99}
    path = save_vector(_with(vector, config=config, config_hash="0" * 64), tmp_path / "b.safetensors")
    with pytest.warns(UserWarning, match="vocab_size: 99 in the vector, 32 in the model"):
        load_vector(path, llama)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_vector(save_vector(vector, tmp_path / "c.safetensors"), llama)


def _raw(tmp_path, tensors, metadata=None):
    path = tmp_path / f"raw{len(list(tmp_path.iterdir()))}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_malformed_files_are_clear_errors(tmp_path, vector) -> None:
    good = {"format_version": "1", "actkit": json.dumps({"site": "resid_post"})}
    nan = torch.ones(64)
    nan[3] = float("nan")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    cases = [
        (junk, "not a readable safetensors file"),
        (_raw(tmp_path, {"layers.1": torch.ones(64)}), "no actkit metadata"),
        (_raw(tmp_path, {"layers.1": nan}, good), "NaN or inf"),
        (_raw(tmp_path, {"weight": torch.ones(64)}, good), "unexpected tensor 'weight'"),
        (_raw(tmp_path, {"layers.1": torch.ones(2, 64)}, good), r"shape \(2, 64\)"),
        (_raw(tmp_path, {"layers.1": torch.ones(64)}, {**good, "format_version": "9"}), "format version"),
        (_raw(tmp_path, {"layers.1": torch.ones(64)}, {**good, "actkit": "{oops"}), "not valid JSON"),
        (tmp_path / "missing.safetensors", "does not exist"),
    ]
    for path, message in cases:
        with pytest.raises(ActkitError, match=message):
            load_vector(path)
    with pytest.raises(ActkitError, match="NaN or inf"):
        SteeringVector({1: nan})


def test_gguf_round_trip(tmp_path, llama, vector) -> None:
    import gguf

    path = export_gguf(vector, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2"]  # resid_post.n <-> direction.n
    back = import_gguf(path, llama)
    assert back.layers == vector.layers and back.site == "resid_post"
    for layer in vector.layers:
        assert torch.equal(back.directions[layer], vector.directions[layer])
    assert back.metadata["method"] == "pca-diff" and back.metadata["mean_norms"] == vector.metadata["mean_norms"]
    with pytest.raises(ActkitError, match="--force"):
        export_gguf(vector, path)


def test_gguf_refusals(tmp_path, vector) -> None:
    with pytest.raises(ActkitError, match="first block"):
        export_gguf(SteeringVector({0: torch.ones(64), 1: torch.ones(64)}), tmp_path / "a.gguf")
    with pytest.raises(ActkitError, match="resid_post"):
        export_gguf(SteeringVector({1: torch.ones(64)}, site="mlp_out"), tmp_path / "b.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really")
    with pytest.raises(ActkitError, match="not a readable GGUF file"):
        import_gguf(junk)


@pytest.mark.parametrize("spec", ["builtin:random-llama", "builtin:toy-dense"])
def test_a_vector_records_the_model_as_the_user_named_it(spec: str) -> None:
    """Not the cache folder a built-in, packaged or GGUF model is read from: the spec given to `actkit.load`."""
    import actkit

    model, tokenizer = actkit.load(spec)
    vector = train_vector(model, tokenizer, PAIRS, [0], method="mean-diff")
    assert vector.metadata["model"] == spec


def test_model_name_order(tmp_path, monkeypatch) -> None:
    """The spec `load` kept (a path made absolute), else the config's name_or_path, else the class name."""
    from actkit.models.naming import SPEC_ATTRIBUTE, model_name, spec_name

    from tiny import build

    model = build("llama")
    assert model_name(model) == "LlamaForCausalLM"
    model.config._name_or_path = "someone/model"
    assert model_name(model) == "someone/model"
    setattr(model, SPEC_ATTRIBUTE, "smollm2-135m-instruct")
    assert model_name(model) == "smollm2-135m-instruct"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    assert spec_name("folder") == str(tmp_path / "folder") and spec_name("someone/model") == "someone/model"


def _rewrite(path, tmp_path, **fields):
    """A copy of the vector file at `path` whose JSON metadata has `fields` replaced (as a hand edit would)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        header = handle.metadata()
    meta = {**json.loads(header["actkit"]), **fields}
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata={**header, "actkit": json.dumps(meta)})
    return out


@pytest.mark.parametrize(("field", "value", "must"), [
    ("layers", ["1", "2"], "a list of block indices"),
    ("layers", 1, "a list of block indices"),
    ("num_layers", "three", "a positive integer"),
    ("num_layers", True, "a positive integer"),
    ("hidden_size", 64.0, "a positive integer"),
    ("mean_norms", {"1": "big"}, "an object block index -> finite number"),
    ("mean_norms", [1.0], "an object block index -> finite number"),
    ("config", "llama", "an object of config fields"),
    ("model", 7, "a string"),
    ("site", ["resid_post"], "a string"),
    ("n_pairs", -1, "a non-negative integer"),
])
def test_metadata_of_the_wrong_type_is_named(tmp_path, llama, vector, field: str, value, must: str) -> None:
    path = _rewrite(save_vector(vector, tmp_path / "v.safetensors"), tmp_path, **{field: value})
    for model in (None, llama):
        with pytest.raises(ActkitError, match=f"this file's metadata is malformed: field '{field}' must be {must}"):
            load_vector(path, model)
