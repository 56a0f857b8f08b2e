"""The text every compression method calibrates on, and the record of it that goes into each report.

Pruning decisions depend on the calibration text, so the text, its size and its seed are part of the result.
The pillar has no default text of its own: a user's file is read one document per line, a list of documents is
taken as it is, and the command line passes the built-in corpus's training split when no file is given
(`actkit.builtin.calibration`), so that a model is never calibrated silently on text chosen for another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actkit.core.collect import read_texts
from actkit.errors import ActkitError

#: Calibration documents the command line reads by default.
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


def calibration_texts(text_file: str | Path, *, documents: int = DEFAULT_DOCUMENTS, seed: int = 0) -> Calibration:
    """The first `documents` lines of `text_file` (one document per line), recorded with its path."""
    if documents <= 0:
        raise ActkitError(f"calibration needs at least one document, got {documents}")
    return Calibration(read_texts(text_file)[:documents], str(text_file), seed)


def as_calibration(calibration: Calibration | Sequence[str] | None, needed_by: str) -> Calibration:
    """A `Calibration` from what a caller gave (one, or a list of documents); None is an error naming the fix."""
    if calibration is None:
        raise ActkitError(f"{needed_by} needs calibration text: pass calibration=calibration_texts('file.txt') "
                          "(one document per line) or a list of documents, such as text like the model's use "
                          "(the command line uses the built-in corpus: actkit.builtin.calibration.builtin_calibration())")
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, str):
        raise ActkitError("calibration is one string; give a list of documents or calibration_texts('file.txt')")
    texts = [str(t) for t in calibration]
    if not texts:
        raise ActkitError("the calibration text list is empty; give at least one document")
    return Calibration(texts, "texts", 0)


def require_tokens(tokens: int, minimum: int, source: str) -> None:
    """Refuse calibration that saw too few tokens for the statistics a method needs, naming the fix."""
    if tokens < minimum:
        raise ActkitError(f"calibration text {source!r} gave only {tokens} tokens; this method needs at least "
                          f"{minimum}: give a longer --text file (one document per line) or more documents")


__all__ = ["DEFAULT_DOCUMENTS", "Calibration", "as_calibration", "calibration_texts", "require_tokens"]
