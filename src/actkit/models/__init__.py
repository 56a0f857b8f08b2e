"""Getting a model: ``load(spec)`` for any folder, hub id, GGUF file, built-in or packaged model.

`packaged` is the one registry of the models that need no download: ``list_builtin()`` names the built-ins,
``builtin_folder(name)`` gives the shipped folder of a toy model (one of `TOY_MODELS`). `model_name(model)` is
what files record as the model: the spec the user gave `load`, when known.
"""

from __future__ import annotations

from actkit.models.load import load
from actkit.models.naming import model_name
from actkit.models.packaged import TOY_MODELS, builtin_folder, list_builtin

__all__ = ["TOY_MODELS", "builtin_folder", "list_builtin", "load", "model_name"]
