"""actkit: read and write the activations of transformer language models, through one small core.

The public API:

- `load(spec)` -> (model, tokenizer): a local folder, a hub id, a ``.gguf`` file, ``builtin:NAME`` or a packaged
  real model.
- `Anatomy.of(model)`: the architecture-neutral sites of a model (``resid_post.12``, ``mlp_hidden.3``, ...).
- `tap(model, read=..., write=...)`: read and write activations at sites inside a ``with`` block.
- Positions (`All`, `Last`, `Prompt`, `Generated`, `From`, `At`) and interventions (`Add`, `Set`, `Apply`).
- Streaming reducers (`Mean`, `Moments`, `NormHistogram`, `TopK`, `ActiveFraction`, `Covariance`).
- `collect(model, texts, sites, reducers, tokenizer=...)`: run a model over texts and reduce activations;
  `next_token_nll` is the one next-token loss.
- `linears(model)`: every block's linear layers with their role; `resolve_layers(model, layers)`: the one rule for
  block indices (negative from the end).
- `generate(model, tokenizer, prompts, writes=...)`: batched, left-padded generation under interventions (the one
  generation function every pillar, the demo and the server use).
- `profile(model, tokenizer, texts)`: the per-block activation profile behind ``actkit profile`` (norms, massive
  activations, sparsity, signal propagation, attention logits, log Z, router load).
"""

from actkit.core import families as _families  # noqa: F401  (registers the anatomy tables)
from actkit.core.anatomy import Anatomy, Experts, Family, Hook, register_family
from actkit.core.collect import Collection, collect, next_token_nll, read_texts
from actkit.core.generate import generate, generate_ids
from actkit.core.hooks import Capture, Read, Tap, tap
from actkit.core.interventions import Add, Apply, Intervention, Set
from actkit.core.layers import resolve_layers
from actkit.core.linears import Linear, linears
from actkit.core.positions import (
    All,
    At,
    From,
    Generated,
    Last,
    Positions,
    Prompt,
    StepContext,
    parse_positions,
)
from actkit.core.sites import Site
from actkit.core.stats import ActiveFraction, Covariance, Mean, Moments, NormHistogram, TopK
from actkit.errors import ActkitError
from actkit.models import load
from actkit.observe import profile
from actkit.version import __version__ as __version__

__all__ = [
    "ActiveFraction", "ActkitError", "Add", "All", "Anatomy", "Apply", "At", "Capture", "Collection",
    "Covariance", "Experts", "Family", "From", "Generated", "Hook", "Intervention", "Last", "Linear", "Mean", "Moments",
    "NormHistogram", "Positions", "Prompt", "Read", "Set", "Site", "StepContext", "Tap", "TopK", "collect",
    "generate", "generate_ids", "linears", "load", "next_token_nll", "parse_positions", "profile", "read_texts",
    "register_family", "resolve_layers", "tap",
]
