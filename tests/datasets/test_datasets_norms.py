"""``actkit data convert``: each norm data set's published layout, written row by row here, becomes pairs that
`read_pairs` accepts with the right side positive, and prompts; wrong files fail naming the file, line and
columns, with status 2 and nothing written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from actkit.datasets import FORMATS, convert
from actkit.errors import ActkitError
from actkit.steer.pairs import read_pairs

from cli_helpers import assert_bad_input, invoke


def _delimited(rows: list[dict[str, Any]], delimiter: str) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


SOCIAL_CHEM = _delimited([
    {"area": "amitheasshole", "m": 1, "split": "train", "rot-agree": 4, "rot-categorization": "social-norms",
     "rot-moral-foundations": "care-harm", "rot-char-targeting": "char-0", "rot-bad": 0, "rot-judgment": "it's rude",
     "action": "ignoring a friend's message", "action-agency": "agency", "action-moral-judgment": -1,
     "action-agree": 3, "action-legal": "legal", "action-pressure": -1, "action-char-involved": "char-0",
     "action-hypothetical": "", "situation": "not answering my roommate for a week", "situation-short-id": "a1",
     "rot": "It's rude to ignore a friend's message.", "rot-id": "r1", "rot-worker-id": 1,
     "breakdown-worker-id": 2, "n-characters": 2, "characters": "narrator|my roommate"},
    {"area": "dearabby", "m": 1, "split": "dev", "rot-agree": 4, "rot-categorization": "morality-ethics",
     "rot-moral-foundations": "care-harm", "rot-char-targeting": "char-0", "rot-bad": 0, "rot-judgment": "it's kind",
     "action": "helping a neighbour carry groceries", "action-agency": "agency", "action-moral-judgment": 2,
     "action-agree": 4, "action-legal": "legal", "action-pressure": 1, "action-char-involved": "char-0",
     "action-hypothetical": "", "situation": "my neighbour is old and lives alone", "situation-short-id": "b2",
     "rot": "It's kind to help your neighbours.", "rot-id": "r2", "rot-worker-id": 3,
     "breakdown-worker-id": 4, "n-characters": 2, "characters": "narrator|neighbour"},
    {"area": "rocstories", "m": 1, "split": "train", "rot-agree": 2, "rot-categorization": "advice",
     "rot-moral-foundations": "", "rot-char-targeting": "", "rot-bad": 0, "rot-judgment": "it's okay",
     "action": "eating cereal for dinner", "action-agency": "agency", "action-moral-judgment": 0,
     "action-agree": 2, "action-legal": "legal", "action-pressure": 0, "action-char-involved": "",
     "action-hypothetical": "", "situation": "Tom was too tired to cook", "situation-short-id": "c3",
     "rot": "It's okay to eat cereal for dinner.", "rot-id": "r3", "rot-worker-id": 5,
     "breakdown-worker-id": 6, "n-characters": 1, "characters": "Tom"},
    {"area": "confessions", "m": 1, "split": "test", "rot-agree": 1, "rot-categorization": "", "rot-moral-foundations": "",
     "rot-char-targeting": "", "rot-bad": 1, "rot-judgment": "", "action": "", "action-agency": "",
     "action-moral-judgment": "", "action-agree": "", "action-legal": "", "action-pressure": "",
     "action-char-involved": "", "action-hypothetical": "", "situation": "asdf", "situation-short-id": "d4",
     "rot": "asdf", "rot-id": "r4", "rot-worker-id": 7, "breakdown-worker-id": "", "n-characters": 1,
     "characters": "narrator"},
    {"area": "amitheasshole", "m": 5, "split": "dev-extra", "rot-agree": 4, "rot-categorization": "social-norms",
     "rot-moral-foundations": "care-harm", "rot-char-targeting": "char-0", "rot-bad": 0, "rot-judgment": "it's rude",
     "action": "ignoring a friend's message", "action-agency": "agency", "action-moral-judgment": -2,
     "action-agree": 4, "action-legal": "legal", "action-pressure": -1, "action-char-involved": "char-0",
     "action-hypothetical": "", "situation": "not answering my roommate for a week", "situation-short-id": "a1",
     "rot": "It's rude to ignore a friend's message.", "rot-id": "r1", "rot-worker-id": 1,
     "breakdown-worker-id": 9, "n-characters": 2, "characters": "narrator|my roommate"},
], "\t")

SCRUPLES_ANECDOTES = _jsonl([
    {"id": "a1", "post_id": "p1", "action": {"description": "refusing to lend my car"}, "title": "WIBTA for not "
     "lending my car?", "text": "My cousin crashed two cars this year and asked for mine.", "post_type": "WIBTA",
     "label_scores": {"AUTHOR": 0, "OTHER": 6, "EVERYBODY": 0, "NOBODY": 1, "INFO": 0}, "label": "OTHER",
     "binarized_label_scores": {"RIGHT": 7, "WRONG": 0}, "binarized_label": "RIGHT"},
    {"id": "a2", "post_id": "p2", "action": {"description": "reading my sister's diary"}, "title": "AITA for reading "
     "my sister's diary?", "text": "I was curious, so I read it and told my friends.", "post_type": "AITA",
     "label_scores": {"AUTHOR": 9, "OTHER": 0, "EVERYBODY": 1, "NOBODY": 0, "INFO": 0}, "label": "AUTHOR",
     "binarized_label_scores": {"RIGHT": 0, "WRONG": 10}, "binarized_label": "WRONG"},
])

SCRUPLES_DILEMMAS = _jsonl([
    {"id": "d1", "actions": [{"id": "x1", "description": "taking credit for a coworker's idea"},
                             {"id": "x2", "description": "leaving work five minutes early"}],
     "gold_label": 0, "gold_annotations": [4, 1], "controversial": False},
    {"id": "d2", "actions": [{"id": "x3", "description": "returning a lost wallet"},
                             {"id": "x4", "description": "keeping the cash from a lost wallet"}],
     "gold_label": 1, "gold_annotations": [0, 5], "controversial": False},
])

MORAL_STORIES = _jsonl([
    {"ID": "s1", "norm": "It's good to keep promises.", "situation": "Maya promised to help Leo move on Saturday.",
     "intention": "Maya wants to spend Saturday at the beach.", "moral_action": "Maya helps Leo move and goes to the "
     "beach on Sunday.", "moral_consequence": "Leo is grateful.", "immoral_action": "Maya skips the move without "
     "telling Leo.", "immoral_consequence": "Leo is left alone with the boxes.", "label": "1"},
])

ETHICS = _delimited([
    {"label": 1, "input": "I took the last slice of cake that my sister had saved for herself.", "is_short": True,
     "edited": False},
    {"label": 0, "input": "I held the door for the person behind me.", "is_short": True, "edited": False},
], ",")


def _moca_item(story: str, question: str, answer: str, ambiguous: bool) -> str:
    return json.dumps({"story": story, "question": question, "answer": answer, "answer_dist": [0.7, 0.3],
                       "transcribed_answer": answer, "annotated_sentences": [], "is_ambiguous": ambiguous,
                       "individual_votes": [True, False, True]})


MOCA = "[\n" + ",\n".join("  " + json.dumps(s) for s in [
    _moca_item("A guard could open a gate to let a crowd escape a fire, breaking a rule.",
               "Should the guard open the gate?", "Yes", False),
    _moca_item("Ana could lie to a friend to avoid a dull party.", "Should Ana lie?", "No", False),
    _moca_item("A driver could swerve to spare two people, hitting one.", "Should the driver swerve?", "Yes", True),
]) + "\n]\n"

NORMBANK = _delimited([
    {"setting": "library", "behavior": "talk loudly on the phone", "setting-behavior": "library [BEHAVIOR] talk "
     "loudly on the phone", "constraints": "[PERSON]'s role is 'patron'", "constraints_given": "",
     "constraint_predict": "", "norm": "taboo", "label": 0, "split": "train"},
    {"setting": "library", "behavior": "return borrowed books", "setting-behavior": "library [BEHAVIOR] return "
     "borrowed books", "constraints": "", "constraints_given": "", "constraint_predict": "", "norm": "expected",
     "label": 2, "split": "train"},
    {"setting": "cafe", "behavior": "read a book", "setting-behavior": "cafe [BEHAVIOR] read a book",
     "constraints": "[PERSON]'s role is 'customer'", "constraints_given": "", "constraint_predict": "",
     "norm": "normal", "label": 1, "split": "dev"},
], ",")

MFQ = _delimited([
    {"item": "Whether or not someone suffered emotionally", "foundation": "care", "part": "relevance"},
    {"item": "Whether or not someone was good at math", "foundation": "catch", "part": "relevance"},
    {"item": "Justice is the most important requirement for a society.", "foundation": "fairness",
     "part": "agreement"},
], ",")

#: format -> (file name, contents, pairs expected, rows skipped, prompts expected)
CASES: dict[str, tuple[str, str, int, int, int]] = {
    "social-chem101": ("social-chem-101.v1.0.tsv", SOCIAL_CHEM, 2, 3, 2),
    "scruples-anecdotes": ("train.scruples-anecdotes.jsonl", SCRUPLES_ANECDOTES, 2, 0, 2),
    "scruples-dilemmas": ("dev.scruples-dilemmas.jsonl", SCRUPLES_DILEMMAS, 2, 0, 2),
    "moral-stories": ("moral_stories_full.jsonl", MORAL_STORIES, 1, 0, 1),
    "ethics-commonsense": ("cm_train.csv", ETHICS, 2, 0, 2),
    "moca": ("moral_dataset_v1.json", MOCA, 2, 1, 2),
    "normbank": ("NormBank.csv", NORMBANK, 3, 0, 3),
    "mfq": ("mfq30.csv", MFQ, 2, 1, 2),
}


def test_every_format_is_covered() -> None:
    assert set(CASES) == set(FORMATS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_convert_writes_pairs_the_steering_commands_read(name: str, tmp_path: Path) -> None:
    filename, text, n_pairs, n_skipped, n_prompts = CASES[name]
    source = tmp_path / filename
    source.write_text(text, encoding="utf-8")
    pairs_out, prompts_out = tmp_path / "pairs.jsonl", tmp_path / "prompts.jsonl"
    result = invoke("data", "convert", "--format", name, source, "--out", pairs_out, "--prompts-out", prompts_out,
                    "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["pairs"], sum(summary["skipped"].values()), summary["prompts"]) == (n_pairs, n_skipped,
                                                                                        n_prompts)
    assert len(read_pairs(pairs_out)) == n_pairs
    prompts = [json.loads(line)["prompt"] for line in prompts_out.read_text().splitlines()]
    assert len(prompts) == n_prompts and all(p.strip() for p in prompts)
    for line in pairs_out.read_text().splitlines():
        assert json.loads(line)["source"].startswith(f"{source}:")


def _lines(name: str, tmp_path: Path) -> list[dict[str, Any]]:
    filename, text, *_ = CASES[name]
    source = tmp_path / filename
    source.write_text(text, encoding="utf-8")
    return convert(name, source).pairs


def test_judgments_follow_the_labels(tmp_path: Path) -> None:
    chem = _lines("social-chem101", tmp_path)
    assert [(p["answer_matching_behavior"], p["answer_not_matching_behavior"]) for p in chem] == [
        ("bad", "good"), ("good", "bad")]
    assert "ignoring a friend's message" in chem[0]["question"]
    assert [p["answer_matching_behavior"] for p in _lines("scruples-anecdotes", tmp_path)] == ["No", "Yes"]
    assert [p["answer_matching_behavior"] for p in _lines("ethics-commonsense", tmp_path)] == ["Yes", "No"]
    assert [p["answer_matching_behavior"] for p in _lines("moca", tmp_path)] == ["Yes", "No"]
    assert [p["answer_matching_behavior"] for p in _lines("normbank", tmp_path)] == ["No", "Yes", "Yes"]
    mfq = _lines("mfq", tmp_path)
    assert [p["foundation"] for p in mfq] == ["care", "fairness"]
    assert all(p["answer_matching_behavior"] == "Yes" for p in mfq)


def test_action_contrasts_put_the_better_action_first(tmp_path: Path) -> None:
    dilemmas = _lines("scruples-dilemmas", tmp_path)  # gold_label: the index of the less ethical action
    assert dilemmas[0]["positive"] == "leaving work five minutes early."
    assert dilemmas[0]["negative"] == "taking credit for a coworker's idea."
    assert dilemmas[1]["positive"] == "returning a lost wallet."
    story = _lines("moral-stories", tmp_path)[0]
    assert story["positive"].endswith("Maya helps Leo move and goes to the beach on Sunday.")
    assert story["negative"].endswith("Maya skips the move without telling Leo.")
    assert story["positive"].startswith("Maya promised to help Leo move on Saturday.")


@pytest.mark.parametrize(("name", "text", "needles"), [
    ("ethics-commonsense", "label,scenario\n1,I lied.\n", ["line 1", "'input'", "'label'"]),
    ("social-chem101", SOCIAL_CHEM.replace("\t", ","), ["line 1", "tab-separated", "'action-moral-judgment'"]),
    ("moral-stories", MORAL_STORIES + '{"norm": "x", "situation": "y"}\n', ["line 2", "'intention'"]),
    ("moral-stories", "not json\n", ["line 1", "not valid JSON"]),
    ("normbank", NORMBANK.replace(",0,train", ",7,train"), ["line 2", "'label'", "'0'"]),
    ("scruples-dilemmas", SCRUPLES_DILEMMAS.replace('"gold_label": 1', '"gold_label": 2'), ["line 2", "gold_label"]),
    ("moca", MOCA.replace('\\"answer\\": \\"No\\"', '\\"answer\\": \\"Maybe\\"'), ["line 3", "'answer'"]),
    ("mfq", MFQ.replace("fairness", "kindness"), ["line 4", "'foundation'"]),
])
def test_wrong_files_name_the_file_line_and_columns_and_write_nothing(name: str, text: str, needles: list[str],
                                                                       tmp_path: Path) -> None:
    source = tmp_path / "data.txt"
    source.write_text(text, encoding="utf-8")
    result = invoke("data", "convert", "--format", name, source, "--out", tmp_path / "pairs.jsonl",
                    "--prompts-out", tmp_path / "prompts.jsonl")
    assert_bad_input(result, str(source), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_unknown_format_missing_file_and_existing_output(tmp_path: Path) -> None:
    source = tmp_path / "cm_train.csv"
    source.write_text(ETHICS, encoding="utf-8")
    assert_bad_input(invoke("data", "convert", "--format", "hellaswag", source, "--out", tmp_path / "p.jsonl"),
                     "unknown data format", "social-chem101")
    assert_bad_input(invoke("data", "convert", "--format", "mfq", tmp_path / "nope.csv", "--out",
                            tmp_path / "p.jsonl"), "does not exist")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("keep me\n")
    result = invoke("data", "convert", "--format", "ethics-commonsense", source, "--out", tmp_path / "p.jsonl",
                    "--prompts-out", prompts)
    assert_bad_input(result, "--force")
    assert not (tmp_path / "p.jsonl").exists() and prompts.read_text() == "keep me\n"
    forced = invoke("data", "convert", "--format", "ethics-commonsense", source, "--out", tmp_path / "p.jsonl",
                    "--prompts-out", prompts, "--force")
    assert forced.exit_code == 0, forced.output
    assert len(prompts.read_text().splitlines()) == 2


def test_a_file_with_no_usable_rows_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "mfq.csv"
    source.write_text(_delimited([{"item": "Whether or not someone was good at math", "foundation": "catch",
                                   "part": "relevance"}], ","), encoding="utf-8")
    with pytest.raises(ActkitError, match="gave no pairs.*catch item"):
        convert("mfq", source)
