"""The text every compression method calibrates on, and the record of it that goes into each report.

Pruning decisions depend on the calibration text, so the text, its size and its seed are part of the result:
the default is a deterministic slice of the built-in corpus's training split (never the held-out split that the
evaluation reads), and a user's file is read one document per line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actkit.builtin import corpus
from actkit.core.collect import read_texts
from actkit.errors import ActkitError

#: Documents drawn from the built-in corpus when no text file is given.
DEFAULT_DOCUMENTS = 256


@dataclass(frozen=True)
class Calibration:
    """Calibration documents and where they came from (``source`` is ``builtin:train`` or the file's path)."""

    texts: list[str]
    source: str
    seed: int

    def record(self, tokens: int) -> dict[str, Any]:
        """What a report says about the calibration: source, seed, documents and the tokens actually used."""
        fields = asdict(self)
        del fields["texts"]
        return {**fields, "documents": len(self.texts), "tokens": tokens}


def calibration_texts(text_file: str | Path | None = None, *, documents: int = DEFAULT_DOCUMENTS,
                      seed: int = 0) -> Calibration:
    """`documents` training documents of the built-in corpus drawn with `seed`, or the lines of `text_file`."""
    if documents <= 0:
        raise ActkitError(f"calibration needs at least one document, got {documents}")
    if text_file is not None:
        return Calibration(read_texts(text_file)[:documents], str(text_file), seed)
    return Calibration(corpus.texts(documents, split="train", seed=seed), "builtin:train", seed)


def require_tokens(tokens: int, minimum: int, source: str) -> None:
    """Refuse calibration that saw too few tokens for the statistics a method needs, naming the fix."""
    if tokens < minimum:
        raise ActkitError(f"calibration text {source!r} gave only {tokens} tokens; this method needs at least "
                          f"{minimum}: give a longer --text file (one document per line) or more documents")


__all__ = ["DEFAULT_DOCUMENTS", "Calibration", "calibration_texts", "require_tokens"]
