"""Labelled texts for probes: JSONL lines ``{"text": ..., "label": 0 or 1}``, or contrast pairs.

A line ``{"positive": ..., "negative": ...}`` (a steering pairs file) gives two texts, labelled 1 and 0, so the
pairs a vector is trained on train a probe too. Lines without a label are allowed only when no line has one
(texts to score).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actkit.errors import ActkitError
from actkit.steer.pairs import parse_pair


def read_labelled(path: str | Path) -> tuple[list[str], list[int] | None]:
    """Read labelled (or unlabelled) texts from a JSONL file.

    Arguments:
        path: UTF-8, one JSON object per line, blank lines ignored.

    Returns:
        (texts, labels), labels None when no line carries one. A missing or empty file, a line that is not a JSON
        object, a text that is not a non-empty string, a label that is not 0 or 1, or a file mixing labelled and
        unlabelled lines raises `ActkitError` naming the file and line.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActkitError(f"data file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ActkitError(f"cannot read data file {str(p)!r}: {error}; give a UTF-8 JSONL file") from None
    texts: list[str] = []
    labels: list[int | None] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"data file {str(p)!r}, line {number}"
        try:
            item: Any = json.loads(line)
        except json.JSONDecodeError as error:
            raise ActkitError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if isinstance(item, dict) and "text" not in item and ("positive" in item or "negative" in item):
            pair = parse_pair(item, where)
            texts += [pair.positive, pair.negative]
            labels += [1, 0]
            continue
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"]:
            raise ActkitError(f'{where}: expected an object {{"text": "...", "label": 0 or 1}} with a non-empty '
                              "text")
        label = item.get("label")
        if label is not None and (isinstance(label, bool) or label not in (0, 1)):
            raise ActkitError(f"{where}: label {json.dumps(label)} is not 0 or 1; a probe separates two classes: 1 "
                              "for texts that show the behaviour, 0 for texts that do not")
        texts.append(item["text"])
        labels.append(None if label is None else int(label))
    if not texts:
        raise ActkitError(f'data file {str(p)!r} holds no texts; give one JSON object per line, such as '
                          '{"text": "...", "label": 1}')
    given = [x for x in labels if x is not None]
    if not given:
        return texts, None
    if len(given) != len(labels):
        first = labels.index(None)
        raise ActkitError(f"data file {str(p)!r}: text {first + 1} has no label but others do; label every line, "
                          "or none to only score")
    return texts, given


__all__ = ["read_labelled"]
