"""The built-in corpus as calibration text: what the command line calibrates on when no --text file is given.

A deterministic slice of the training split (never the held-out split that `actkit builtin eval` reads). It lives
here, above the compress pillar, because it is data: the pillar takes calibration text as an argument.
"""

from __future__ import annotations

from actkit.builtin import corpus
from actkit.compress.calibration import DEFAULT_DOCUMENTS, Calibration
from actkit.errors import ActkitError


def builtin_calibration(documents: int = DEFAULT_DOCUMENTS, seed: int = 0) -> Calibration:
    """`documents` training documents of the built-in corpus drawn with `seed` (source ``builtin:train``)."""
    if documents <= 0:
        raise ActkitError(f"calibration needs at least one document, got {documents}")
    return Calibration(corpus.texts(documents, split="train", seed=seed), "builtin:train", seed)


__all__ = ["builtin_calibration"]
