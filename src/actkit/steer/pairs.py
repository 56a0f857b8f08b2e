"""Contrast pairs: the data every steering direction is trained on.

A pairs file is JSONL, one pair per line, in one of two forms:

- ``{"positive": "...", "negative": "..."}``: two texts that differ in the behaviour to steer;
- CAA's A/B form, ``{"question": "...", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}``:
  the positive text is ``question + " " + answer_matching_behavior``, the negative one likewise.

Blank lines are skipped. Anything else is an error naming the file, the line and what is wrong, because a pair
silently dropped or mis-read changes the vector without a trace. `pairs_hash` fingerprints the normalized pairs
so that a vector file records exactly which data it came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actkit.errors import ActkitError

#: The pairs files shipped with actkit, named ``builtin:NAME`` on the command line.
DATA_DIR = Path(__file__).resolve().parent / "data"

_CAA_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


@dataclass(frozen=True)
class Pair:
    """One contrast pair: a text showing the behaviour (`positive`) and one showing its opposite (`negative`)."""

    positive: str
    negative: str


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL pairs file (plain ``positive``/``negative`` lines or CAA's A/B lines, mixed freely).

    Arguments:
        path: the file; UTF-8, one JSON object per line, blank lines ignored.

    Returns:
        The pairs in file order. A missing or empty file, a line that is not a JSON object, a missing key or a
        value that is not a non-empty string raises `ActkitError` naming the file and the line.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActkitError(f"pairs file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ActkitError(f"cannot read pairs file {str(p)!r}: {error}; give a UTF-8 JSONL file") from None
    pairs: list[Pair] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"pairs file {str(p)!r}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ActkitError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        pairs.append(parse_pair(item, where))
    if not pairs:
        raise ActkitError(
            f"pairs file {str(p)!r} holds no pairs; give one JSON object per line, such as "
            '{"positive": "...", "negative": "..."}'
        )
    return pairs


def parse_pair(item: Any, where: str = "pair") -> Pair:
    """Turn one decoded JSON object into a `Pair`; `where` prefixes the error message (file and line)."""
    if not isinstance(item, dict):
        raise ActkitError(f"{where}: expected a JSON object, got {type(item).__name__}")
    if "positive" in item or "negative" in item:
        missing = [k for k in ("positive", "negative") if k not in item]
        if missing:
            raise ActkitError(f"{where}: missing key {missing[0]!r} (a pair needs both 'positive' and 'negative')")
        return _distinct(Pair(_text(item, "positive", where), _text(item, "negative", where)), where)
    if any(k in item for k in _CAA_KEYS):
        missing = [k for k in _CAA_KEYS if k not in item]
        if missing:
            raise ActkitError(f"{where}: CAA-style pair is missing key {missing[0]!r} (needs {', '.join(_CAA_KEYS)})")
        question = _text(item, "question", where)
        matching = _text(item, "answer_matching_behavior", where)
        other = _text(item, "answer_not_matching_behavior", where)
        return _distinct(Pair(f"{question} {matching}", f"{question} {other}"), where)
    keys = ", ".join(repr(k) for k in item) or "none"
    raise ActkitError(
        f"{where}: expected keys 'positive' and 'negative' (or CAA's 'question', 'answer_matching_behavior', "
        f"'answer_not_matching_behavior'); found {keys}"
    )


def _distinct(pair: Pair, where: str) -> Pair:
    """Refuse a pair whose two sides are the same text: its difference is zero and teaches no direction."""
    if pair.positive == pair.negative:
        shown = pair.positive if len(pair.positive) <= 60 else pair.positive[:57] + "..."
        raise ActkitError(f"{where}: the positive and negative texts are identical ({shown!r}); a contrast pair "
                          "needs two different texts (their difference is the direction)")
    return pair


def _text(item: dict[str, Any], key: str, where: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise ActkitError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ActkitError(f"{where}: {key!r} is empty")
    return value


def as_pairs(pairs: Iterable[Pair | Sequence[str]]) -> list[Pair]:
    """Accept `Pair` objects or ``(positive, negative)`` tuples; an empty list is an error."""
    out: list[Pair] = []
    for i, item in enumerate(pairs):
        if isinstance(item, Pair):
            out.append(_distinct(item, f"pair {i}"))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
            out.append(_distinct(Pair(item[0], item[1]), f"pair {i}"))
        else:
            raise ActkitError(f"pair {i}: expected a Pair or a (positive, negative) tuple of strings")
    if not out:
        raise ActkitError("no pairs given: a steering direction needs at least one contrast pair")
    return out


def pairs_hash(pairs: Iterable[Pair]) -> str:
    """sha256 (hex) of the normalized pairs: the same data gives the same hash, whatever the file's form."""
    normalized = [[p.positive, p.negative] for p in pairs]
    text = json.dumps(normalized, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pairs_path(spec: str) -> Path:
    """A pairs file: ``builtin:NAME`` for a file shipped with actkit (``builtin:sentiment``), else a path."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        path = DATA_DIR / f"{name}.jsonl"
        if not name or "/" in name or not path.is_file():
            shipped = ", ".join(f"builtin:{p.stem}" for p in sorted(DATA_DIR.glob("*.jsonl")))
            raise ActkitError(f"no shipped pairs file {spec!r}; shipped: {shipped}")
        return path
    return Path(spec)


__all__ = ["DATA_DIR", "Pair", "as_pairs", "pairs_hash", "pairs_path", "parse_pair", "read_pairs"]
