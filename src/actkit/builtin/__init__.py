"""The built-in toy models: small Hugging Face checkpoints with learned behaviours, shipped inside the package.

``toy-dense`` (Llama) and ``toy-moe`` (Mixtral, 8 experts, top-2) are trained on a synthetic corpus
(`actkit.builtin.corpus`) so that steering, patching and pruning can be shown on real behaviours without any
download: they refuse forbidden requests, continue reviews with the cued sentiment, complete name-mover sentences
and answer A/B questions. Each lives in ``weights/NAME/`` as an ordinary Hugging Face folder that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load. See ``README.md`` for the
recipe, `actkit.builtin.train` to reproduce them and `actkit.builtin.evaluate` for what is measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actkit.errors import ActkitError

#: The shipped toy models, in the order commands list them.
NAMES = ("toy-dense", "toy-moe")
#: Where the shipped weights live.
WEIGHTS = Path(__file__).parent / "weights"


def weights_dir(name: str) -> Path:
    """The folder of a shipped toy model (``"toy-dense"`` or ``"builtin:toy-dense"``); unknown names are an error."""
    short = name.removeprefix("builtin:")
    folder = WEIGHTS / short
    if short not in NAMES or not (folder / "config.json").exists():
        raise ActkitError(f"no built-in model {name!r}; the built-in models are {', '.join(NAMES)}")
    return folder


def load_builtin(name: str, folder: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a toy model in float32, eval mode, from the package or from `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(folder) if folder is not None else weights_dir(name)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model.eval(), tokenizer


__all__ = ["NAMES", "WEIGHTS", "load_builtin", "weights_dir"]
