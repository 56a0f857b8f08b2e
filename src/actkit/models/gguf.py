"""Turn a GGUF file into a cached Hugging Face folder, once.

Dequantizing a GGUF through transformers takes seconds to minutes and needs `gguf` and `accelerate`; loading
the same weights from a safetensors folder takes under a second. So the first load converts the file into
``<cache>/gguf/<key>/`` (an ordinary Hugging Face folder, float32 weights) and every later load reads that
folder. The key hashes the file's absolute path, size and modification time, so editing or replacing the file
makes a new cache entry. The folder is written into a temporary folder beside it and renamed into place, so an
interrupted run never leaves a half-written cache that a later run would trust.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from actkit.errors import ActkitError

CACHE_ENV = "ACTKIT_CACHE"
SOURCE_NOTE = "actkit-gguf-source.json"


def cache_root() -> Path:
    """Where actkit keeps what it derives from the user's files: ``$ACTKIT_CACHE`` or ``~/.cache/actkit``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "actkit"


def cache_key(path: Path) -> str:
    """A short stable name for one version of one file (absolute path, size, modification time)."""
    stat = path.stat()
    text = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir_for(path: Path) -> Path:
    """The folder where the converted copy of ``path`` lives (whether or not it exists yet)."""
    return cache_root() / "gguf" / cache_key(path)


def cached_folder(path: Path) -> Path:
    """Return a Hugging Face folder holding the dequantized weights and tokenizer of the GGUF ``path``.

    Converts on the first call and reuses the folder afterwards. A folder that exists is always complete,
    because it only ever appears through one atomic rename.
    """
    target = cache_dir_for(path)
    if (target / "config.json").is_file():
        return target
    _require("gguf", "reading .gguf files needs the `gguf` package: run `pip install gguf`.")
    _require(
        "accelerate",
        "transformers needs the `accelerate` package to read a .gguf file: run `pip install accelerate`.",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache entry should read like any folder
    try:
        convert(path, staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same conversion first; its folder is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_readable(path: Path) -> None:
    """Refuse a file that is not a GGUF, or one cut short (an interrupted download or copy), naming the file.

    transformers' own reader fails on such files with a struct or reshape error that names neither the file nor
    the problem. The `gguf` package's reader parses the header and maps every tensor, so a file it reads holds
    every byte its header promises. `convert` calls this only once transformers has failed: the reader parses
    every metadata entry in Python (5 s for SmolLM2's vocabulary), too slow to run before every conversion.
    """
    from gguf import GGUFReader

    with path.open("rb") as f:
        magic = f.read(4)
    if len(magic) == 4 and magic != b"GGUF":
        raise ActkitError(
            f"could not read the GGUF file {path}: it does not start with the GGUF magic bytes, so it is not a GGUF "
            "file (a .gguf model from llama.cpp or the Hugging Face hub starts with 'GGUF')."
        )
    try:
        GGUFReader(path)
    except (ValueError, IndexError, struct.error, OSError) as error:
        raise ActkitError(
            f"could not read the GGUF file {path}: it is cut short or damaged ({path.stat().st_size} bytes; the "
            f"reader stopped with: {error}). Download or copy it again and check its size or checksum."
        ) from error


def convert(path: Path, out: Path) -> None:
    """Dequantize the GGUF ``path`` and save model and tokenizer as a plain Hugging Face folder in ``out``.

    transformers refuses to save a model it loaded from GGUF (it counts as quantized), so the weights are
    copied into a fresh model built from the same config without its quantization settings, and that is saved.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, **_dequantized()
        )
    except (OSError, ValueError, KeyError, NotImplementedError, IndexError, EOFError, struct.error) as error:
        check_readable(path)  # a file cut short, or no GGUF at all, is told as such
        raise ActkitError(
            f"transformers could not read the GGUF file {path}: {error}. "
            "Check that it is a complete GGUF of an architecture transformers supports "
            "(llama, mistral, qwen2, gemma3, phi3, ...), or convert it to a Hugging Face folder and pass that."
        ) from error
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(path)
    with _skip_init():  # every weight is overwritten next; random init would cost seconds
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.tie_weights()  # skipping init skips tying too; untied, a shared embedding would be saved twice
    plain.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stat = path.stat()
    note = {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (out / SOURCE_NOTE).write_text(json.dumps(note, indent=2) + "\n")


def _dequantized() -> dict[str, Any]:
    """Ask for plain dense weights, so that no packed GGUF layer reaches the copy (newer transformers)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _skip_init() -> AbstractContextManager[Any]:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ActkitError(message)
