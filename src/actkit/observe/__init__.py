"""Observe a model without changing it: profiles of the residual stream and (later) sparsity and growth.

- `profile(model, tokenizer, texts)`: per-block residual-norm profile (mean, p50, p99, max).
- `write_profile(result, out_dir)`: write it to ``out_dir/profile.json``.
- `default_texts()`: the built-in English sample used when no text is given.
"""

from __future__ import annotations

from actkit.observe.default_text import default_texts
from actkit.observe.profile import profile, write_profile

__all__ = ["default_texts", "profile", "write_profile"]
