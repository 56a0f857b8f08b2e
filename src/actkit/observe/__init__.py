"""Observe a model without changing it: the profile of its activations, block by block.

- `profile(model, tokenizer, texts)`: norms, massive activations, MLP sparsity, signal propagation, attention
  logits, log Z and MoE routing, in one streaming pass (schema in ``README.md`` here).
- `write_report(result, out_dir)`: ``profile.json``, PNG plots and ``report.html``; `write_profile` writes the
  JSON alone.
- `intervene(...)`: perplexity with massive activations set to zero and to their mean.
- `default_texts()`: the built-in English sample used when no text is given.
"""

from __future__ import annotations

from actkit.observe.default_text import default_texts
from actkit.observe.massive import intervene
from actkit.observe.profile import Report, profile, to_json, write_profile, write_report

__all__ = ["Report", "default_texts", "intervene", "profile", "to_json", "write_profile", "write_report"]
