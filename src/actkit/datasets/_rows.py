"""Reading the rows of a published data file, with errors that name the file, the line and the expected columns.

Every reader yields ``(line, row)``: the 1-based line of the file where the row starts and the row as a dict of
strings (CSV/TSV) or JSON values (JSONL, JSON arrays). A missing column is reported once, at the first row that
lacks it, with the full list of columns the format expects, because a file of the wrong format usually fails
there.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from actkit.errors import ActkitError

Row = dict[str, Any]


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path` (a leading byte-order mark dropped); a clear error if it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ActkitError(f"{what} file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ActkitError(f"{what} file {str(path)!r} is a folder; give the data file itself") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ActkitError(f"cannot read {what} file {str(path)!r}: {error}; give a UTF-8 text file") from None


def delimited_rows(path: Path, what: str, columns: Sequence[str], delimiter: str) -> Iterator[tuple[int, Row]]:
    """Rows of a CSV (`delimiter` ``,``) or TSV (``\\t``) file with a header line holding at least `columns`."""
    text = read_text(path, what)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        kind = "tab-separated" if delimiter == "\t" else "comma-separated"
        found = ", ".join(repr(h) for h in header[:12]) or "nothing"
        raise ActkitError(
            f"{what} file {str(path)!r}, line 1: the header lacks column(s) {', '.join(map(repr, missing))}; {what} "
            f"files are {kind} with a header holding {', '.join(map(repr, columns))} (found {found})")
    for row in reader:
        line = reader.line_num
        if None in row:  # more fields than the header names
            raise ActkitError(f"{what} file {str(path)!r}, line {line}: more fields than the header's "
                              f"{len(header)} columns; is the delimiter right?")
        short = [c for c in columns if row.get(c) is None]
        if short:
            raise ActkitError(f"{what} file {str(path)!r}, line {line}: the row has no value for column(s) "
                              f"{', '.join(map(repr, short))} (fewer fields than the header)")
        yield line, row


def jsonl_rows(path: Path, what: str, columns: Sequence[str]) -> Iterator[tuple[int, Row]]:
    """Rows of a JSONL file (one JSON object per line, blank lines skipped) holding at least `columns`."""
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ActkitError(f"{what} file {str(path)!r}, line {number}: not valid JSON ({error.msg} at column "
                              f"{error.colno}); a {what} file holds one JSON object per line") from None
        yield number, _object(item, path, what, number, columns)


def json_array_rows(path: Path, what: str, columns: Sequence[str]) -> Iterator[tuple[int, Row]]:
    """Rows of a JSON array whose items are objects or JSON-encoded objects (strings), as MoCa publishes them.

    Line numbers are exact when each item sits on its own line (the published layout); otherwise the line given
    is that of the item's first character in the file.
    """
    text = read_text(path, what)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ActkitError(f"{what} file {str(path)!r}, line {error.lineno}: not valid JSON ({error.msg}); a "
                          f"{what} file is one JSON array of objects") from None
    if not isinstance(items, list):
        raise ActkitError(f"{what} file {str(path)!r}, line 1: expected a JSON array of objects, got "
                          f"{type(items).__name__}")
    starts = _item_lines(text, len(items))
    for index, item in enumerate(items):
        line = starts[index]
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except json.JSONDecodeError as error:
                raise ActkitError(f"{what} file {str(path)!r}, line {line}: item {index} is a string that does "
                                  f"not hold a JSON object ({error.msg})") from None
        yield line, _object(item, path, what, line, columns)


def _item_lines(text: str, n: int) -> list[int]:
    """The line on which each of the `n` top-level items of a JSON array starts."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    position = text.index("[") + 1
    for _ in range(n):
        while text[position] in " \t\r\n,":
            position += 1
        lines.append(text.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(text, position)
    return lines


def _object(item: Any, path: Path, what: str, line: int, columns: Sequence[str]) -> Row:
    if not isinstance(item, dict):
        raise ActkitError(f"{what} file {str(path)!r}, line {line}: expected a JSON object with "
                          f"{', '.join(map(repr, columns))}, got {type(item).__name__}")
    missing = [c for c in columns if c not in item]
    if missing:
        found = ", ".join(repr(k) for k in list(item)[:12]) or "none"
        raise ActkitError(f"{what} file {str(path)!r}, line {line}: missing key(s) {', '.join(map(repr, missing))}; "
                          f"a {what} row holds {', '.join(map(repr, columns))} (found {found})")
    return item


def text_field(row: Row, key: str, path: Path, what: str, line: int) -> str:
    """`row[key]` as a stripped non-empty string, else an error naming the file, line and column."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        shown = "empty" if isinstance(value, str) else f"a {type(value).__name__}"
        raise ActkitError(f"{what} file {str(path)!r}, line {line}: column {key!r} must be non-empty text, "
                          f"found {shown}")
    return value.strip()


__all__ = ["Row", "delimited_rows", "json_array_rows", "jsonl_rows", "read_text", "text_field"]
