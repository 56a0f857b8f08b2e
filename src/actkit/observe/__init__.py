"""Observe a model without changing it: the profile of its activations, block by block.

- `profile(model, tokenizer, texts)`: norms, massive activations, MLP sparsity, signal propagation, attention
  logits, log Z and MoE routing, in one streaming pass (schema in ``README.md`` here).
- `write_profile(result, out_dir)`: ``profile.json``, atomically. The full report (plots and ``report.html``) is
  an application: `actkit.report.profile.write_report`.
- `intervene(...)`: perplexity with massive activations set to zero and to their mean.
- `default_texts()`: the built-in English sample used when no text is given.
"""

from __future__ import annotations

from actkit.observe.default_text import default_texts
from actkit.observe.massive import intervene
from actkit.observe.profile import PROFILE_FILE, profile, write_profile

__all__ = ["PROFILE_FILE", "default_texts", "intervene", "profile", "write_profile"]
