"""Pairs files: both line forms, errors that name the file and line, the data hash."""

from __future__ import annotations

import json

import pytest

from actkit import ActkitError
from actkit.steer import Pair, pairs_hash, read_pairs


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_plain_and_caa_lines_blank_lines_skipped(tmp_path) -> None:
    caa = {"question": "Do you agree?", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
    path = _write(tmp_path, [json.dumps({"positive": "I love it", "negative": "I hate it"}), "", "  ",
                             json.dumps(caa)])
    assert read_pairs(path) == [Pair("I love it", "I hate it"), Pair("Do you agree? (A)", "Do you agree? (B)")]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"positive": "a"}', "missing key 'negative'"),
        ('{"positive": "a", "negative": 3}', "'negative' must be a string"),
        ('{"positive": "a", "negative": "  "}', "'negative' is empty"),
        ('{"question": "q", "answer_matching_behavior": "(A)"}', "missing key 'answer_not_matching_behavior'"),
        ('{"text": "a"}', "expected keys 'positive' and 'negative'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line: str, message: str) -> None:
    path = _write(tmp_path, ['{"positive": "a", "negative": "b"}', "", line])
    with pytest.raises(ActkitError) as error:
        read_pairs(path)
    assert "line 3" in str(error.value) and "pairs.jsonl" in str(error.value) and message in str(error.value)


def test_empty_and_missing_files_are_errors(tmp_path) -> None:
    with pytest.raises(ActkitError, match="holds no pairs"):
        read_pairs(_write(tmp_path, ["", "   "]))
    with pytest.raises(ActkitError, match="does not exist"):
        read_pairs(tmp_path / "nope.jsonl")


def test_hash_depends_on_the_normalized_pairs_only(tmp_path) -> None:
    caa = {"question": "Q?", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
    a = read_pairs(_write(tmp_path, [json.dumps(caa)]))
    b = [Pair("Q? (A)", "Q? (B)")]
    assert pairs_hash(a) == pairs_hash(b)
    assert pairs_hash(b) != pairs_hash([Pair("Q? (B)", "Q? (A)")])
    assert len(pairs_hash(b)) == 64


def test_a_pair_whose_two_sides_are_identical_is_refused(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"positive": "a", "negative": "b"}\n{"positive": "same", "negative": "same"}\n')
    with pytest.raises(ActkitError, match=r"line 2: the positive and negative texts are identical \('same'\)"):
        read_pairs(path)
    caa = {"question": "Q?", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(A)"}
    path.write_text(json.dumps(caa) + "\n")
    with pytest.raises(ActkitError, match="line 1: the positive and negative texts are identical"):
        read_pairs(path)
    from actkit.steer import train_vector

    from tiny import DecodingTokenizer, build

    with pytest.raises(ActkitError, match="pair 1: the positive and negative texts are identical"):
        train_vector(build("llama"), DecodingTokenizer(), [("a", "b"), ("x", "x")], [1])
