"""Getting a model: ``load(spec)`` for any folder, hub id, GGUF file, built-in or packaged model."""

from __future__ import annotations

from actkit.models.load import list_builtin, load

__all__ = ["list_builtin", "load"]
