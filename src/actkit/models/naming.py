"""`model_name(model)`: the one name every file and report records for a model.

The name is what the user gave `actkit.load` (``smollm2-135m-instruct``, ``builtin:toy-dense``, a hub id; a local
path resolved to an absolute one), which `load` keeps on the model as `SPEC_ATTRIBUTE`. A model built some other
way is named by its config's ``_name_or_path`` (what ``from_pretrained`` was given), else by its class name. For a
packaged or GGUF model the ``_name_or_path`` is a cache folder, which is why the spec comes first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

#: The attribute `actkit.load` sets on a model it returns: the spec as the user typed it (paths made absolute).
SPEC_ATTRIBUTE = "actkit_spec"


def spec_name(spec: str) -> str:
    """The name recorded for a spec: the spec itself, or the absolute path when it names an existing file or folder."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if not spec.startswith(("builtin:", "pypi:")) and path.exists() else spec


def model_name(model: nn.Module) -> str:
    """The name of `model` for files and reports (see the module docstring for the order).

    Arguments:
        model: any model; a Hugging Face model or one returned by `actkit.load`.

    Returns:
        The spec given to `actkit.load`, else the config's ``_name_or_path``, else the class name.
    """
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if isinstance(spec, str) and spec:
        return spec
    config: Any = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return str(name) if name else type(model).__name__


__all__ = ["SPEC_ATTRIBUTE", "model_name", "spec_name"]
