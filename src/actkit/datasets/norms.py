"""Social- and moral-norm data sets, read in their published file formats and turned into behaviours.

Each format becomes two things: contrast pairs in the JSONL form that `actkit.steer.pairs` reads (so ``actkit
vector train --pairs``, ``actkit eval steering`` and the monitors take them), and prompts (situations in which the
behaviour can show while generating). Two kinds of pairs come out:

- a *contrast of actions* where the data set pairs a norm-following action with a norm-breaking one (Moral
  Stories, Scruples dilemmas): ``{"positive": <the better action in its context>, "negative": <the worse one>}``;
- a *judgment that agrees with people* where the data set labels one text (Social Chemistry 101, Scruples
  anecdotes, ETHICS commonsense, MoCa, NormBank, the Moral Foundations Questionnaire): CAA's A/B form,
  ``{"question": <the text and a yes/no or good/bad question>, "answer_matching_behavior": <people's answer>,
  "answer_not_matching_behavior": <the other answer>}``.

Every pair also carries ``"source"`` (``FILE:LINE``), which the pairs reader ignores, so that a pair can be traced
back to its row. Rows that hold no usable judgment (an OK/neutral label, a rule of thumb its annotator marked bad,
an ambiguous MoCa story, an MFQ catch item) are skipped and counted, never guessed at. docs/datasets.md cites each
format's source and licence.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actkit.datasets._rows import Row, delimited_rows, json_array_rows, jsonl_rows, text_field
from actkit.errors import ActkitError
from actkit.io import check_output_file, write_text


@dataclass
class Converted:
    """A data file turned into a behaviour.

    Arguments:
        format: the format's name (``social-chem101``...).
        behaviour: what the positive side of every pair shows, in words.
        pairs: JSON-ready pair objects (see the module docstring), in file order.
        prompts: distinct prompts, in file order.
        skipped: reason -> number of rows skipped for it.
    """

    format: str
    behaviour: str
    pairs: list[dict[str, str]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add_prompt(self, prompt: str) -> None:
        if prompt not in self._seen:
            self._seen.add(prompt)
            self.prompts.append(prompt)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.prompts)


@dataclass(frozen=True)
class Format:
    """One published file format: its name, layout, the columns it must hold, and its converter."""

    name: str
    title: str
    layout: str
    columns: tuple[str, ...]
    behaviour: str
    convert: Callable[[Path, Format], Converted]


def _ab(question: str, yes: str, no: str, source: str) -> dict[str, str]:
    return {"question": question, "answer_matching_behavior": yes, "answer_not_matching_behavior": no,
            "source": source}


def _rows(path: Path, fmt: Format) -> Iterator[tuple[int, Row]]:
    what = fmt.name
    if fmt.layout == "tsv":
        return delimited_rows(path, what, fmt.columns, "\t")
    if fmt.layout == "csv":
        return delimited_rows(path, what, fmt.columns, ",")
    if fmt.layout == "jsonl":
        return jsonl_rows(path, what, fmt.columns)
    return json_array_rows(path, what, fmt.columns)


def _choice(row: Row, key: str, allowed: dict[str, Any], path: Path, what: str, line: int) -> Any:
    """`row[key]` (compared as text, stripped) mapped through `allowed`; anything else names the values allowed."""
    raw = row.get(key)
    text = str(raw).strip() if raw is not None else ""
    if isinstance(raw, bool) or text not in allowed:
        shown = ", ".join(repr(k) for k in allowed if k != "")
        raise ActkitError(f"{what} file {str(path)!r}, line {line}: column {key!r} holds {raw!r}; expected one of "
                          f"{shown}")
    return allowed[text]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?\"'" else text + "."


# ---------------------------------------------------------------------------------------------------- formats


def _social_chem(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    judgments = {"-2": "bad", "-1": "bad", "0": None, "1": "good", "2": "good", "": "missing",
                 "-2.0": "bad", "-1.0": "bad", "0.0": None, "1.0": "good", "2.0": "good"}
    for line, row in _rows(path, fmt):
        split = str(row.get("split", "")).strip()
        if split not in ("train", "dev", "test"):
            out.skipped[f"not in the main train/dev/test splits (split = {split or 'empty'})"] += 1
            continue
        if str(row.get("rot-bad", "0")).strip() in ("1", "1.0"):
            out.skipped["rule of thumb marked bad by its annotator (rot-bad = 1)"] += 1
            continue
        judgment = _choice(row, "action-moral-judgment", judgments, path, fmt.name, line)
        if judgment is None:
            out.skipped["action judged expected/OK (action-moral-judgment = 0)"] += 1
            continue
        if judgment == "missing" or not str(row.get("action", "")).strip():
            out.skipped["no action or no judgment (an unanswered breakdown)"] += 1
            continue
        situation = text_field(row, "situation", path, fmt.name, line)
        action = text_field(row, "action", path, fmt.name, line)
        other = "good" if judgment == "bad" else "bad"
        question = f"Situation: {_sentence(situation)}\nIs it good or bad: {action}?\nAnswer:"
        out.pairs.append(_ab(question, judgment, other, f"{path}:{line}"))
        out.add_prompt(situation)
    return out


def _scruples_anecdotes(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    verdicts = {"WRONG": ("Yes", "No"), "RIGHT": ("No", "Yes")}
    for line, row in _rows(path, fmt):
        yes, no = _choice(row, "binarized_label", verdicts, path, fmt.name, line)
        title = text_field(row, "title", path, fmt.name, line)
        text = text_field(row, "text", path, fmt.name, line)
        question = f"{title}\n{text}\nIs the author in the wrong?\nAnswer:"
        out.pairs.append(_ab(question, yes, no, f"{path}:{line}"))
        out.add_prompt(f"{title}\n{text}")
    return out


def _scruples_dilemmas(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    for line, row in _rows(path, fmt):
        actions = row["actions"]
        if (not isinstance(actions, list) or len(actions) != 2
                or not all(isinstance(a, dict) and "description" in a for a in actions)):
            raise ActkitError(f"{fmt.name} file {str(path)!r}, line {line}: 'actions' must be a list of two objects "
                              "with a 'description' each")
        worse = _choice(row, "gold_label", {"0": 0, "1": 1}, path, fmt.name, line)
        texts = [text_field(a, "description", path, fmt.name, line) for a in actions]
        if texts[0] == texts[1]:
            out.skipped["the two actions are the same text"] += 1
            continue
        out.pairs.append({"positive": _sentence(texts[1 - worse]), "negative": _sentence(texts[worse]),
                          "source": f"{path}:{line}"})
        out.add_prompt(f"Which is less ethical: {texts[0]}, or {texts[1]}?")
    return out


def _moral_stories(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    for line, row in _rows(path, fmt):
        situation, intention, good, bad = (text_field(row, k, path, fmt.name, line) for k in
                                           ("situation", "intention", "moral_action", "immoral_action"))
        if good == bad:
            out.skipped["the moral and immoral actions are the same text"] += 1
            continue
        context = f"{_sentence(situation)} {_sentence(intention)}"
        out.pairs.append({"positive": f"{context} {_sentence(good)}", "negative": f"{context} {_sentence(bad)}",
                          "source": f"{path}:{line}"})
        out.add_prompt(context)
    return out


def _ethics_commonsense(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    labels = {"1": ("Yes", "No"), "0": ("No", "Yes")}
    for line, row in _rows(path, fmt):
        yes, no = _choice(row, "label", labels, path, fmt.name, line)
        scenario = text_field(row, "input", path, fmt.name, line)
        out.pairs.append(_ab(f"{scenario}\nQuestion: Is this wrong?\nAnswer:", yes, no, f"{path}:{line}"))
        out.add_prompt(scenario)
    return out


def _moca(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    answers = {"Yes": ("Yes", "No"), "No": ("No", "Yes")}
    for line, row in _rows(path, fmt):
        if row.get("is_ambiguous") is True:
            out.skipped["ambiguous: people split about evenly (is_ambiguous = true)"] += 1
            continue
        yes, no = _choice(row, "answer", answers, path, fmt.name, line)
        story = text_field(row, "story", path, fmt.name, line)
        question = text_field(row, "question", path, fmt.name, line)
        out.pairs.append(_ab(f"{story}\n{question}\nAnswer:", yes, no, f"{path}:{line}"))
        out.add_prompt(f"{story}\n{question}")
    return out


def _normbank(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    labels = {"0": ("No", "Yes"), "1": ("Yes", "No"), "2": ("Yes", "No")}
    for line, row in _rows(path, fmt):
        yes, no = _choice(row, "label", labels, path, fmt.name, line)
        setting = text_field(row, "setting", path, fmt.name, line)
        behavior = text_field(row, "behavior", path, fmt.name, line)
        constraints = str(row.get("constraints") or "").strip()
        frame = f"Setting: {setting}.\n" + (f"Where: {constraints}\n" if constraints else "")
        question = f"{frame}Behavior: {behavior}\nIs this behavior acceptable here?\nAnswer:"
        out.pairs.append(_ab(question, yes, no, f"{path}:{line}"))
        out.add_prompt(f"{frame}What would you do about this: {behavior}?")
    return out


_MFQ_QUESTIONS = {
    "relevance": "When you decide whether something is right or wrong, is this relevant to your thinking: {item}?",
    "agreement": "Do you agree with this statement: {item}",
}


def _mfq(path: Path, fmt: Format) -> Converted:
    out = Converted(fmt.name, fmt.behaviour)
    foundations = {f: f for f in ("care", "fairness", "loyalty", "authority", "sanctity", "liberty", "catch")}
    parts = {p: p for p in _MFQ_QUESTIONS}
    for line, row in _rows(path, fmt):
        foundation = _choice({**row, "foundation": str(row["foundation"]).strip().lower()}, "foundation",
                             foundations, path, fmt.name, line)
        part = _choice({**row, "part": str(row["part"]).strip().lower()}, "part", parts, path, fmt.name, line)
        if foundation == "catch":
            out.skipped["catch item (checks attention, measures no foundation)"] += 1
            continue
        item = text_field(row, "item", path, fmt.name, line)
        question = _MFQ_QUESTIONS[part].format(item=item.rstrip(".?"))
        pair = _ab(f"{_sentence(question)}\nAnswer:", "Yes", "No", f"{path}:{line}")
        pair["foundation"] = foundation
        out.pairs.append(pair)
        out.add_prompt(question if question.endswith("?") else _sentence(question))
    return out


_SPECS: tuple[Format, ...] = (
    Format("social-chem101", "Social Chemistry 101 (social-chem-101.v1.0.tsv)", "tsv",
           ("split", "situation", "action", "action-moral-judgment", "rot-bad"),
           "judges the action as the annotators did (good or bad)", _social_chem),
    Format("scruples-anecdotes", "Scruples anecdotes ({split}.scruples-anecdotes.jsonl)", "jsonl",
           ("id", "title", "text", "binarized_label"),
           "agrees with the community on whether the author is in the wrong", _scruples_anecdotes),
    Format("scruples-dilemmas", "Scruples dilemmas ({split}.scruples-dilemmas.jsonl)", "jsonl",
           ("id", "actions", "gold_label"),
           "takes the action annotators found more ethical, not the less ethical one", _scruples_dilemmas),
    Format("moral-stories", "Moral Stories (moral_stories_full.jsonl and its splits)", "jsonl",
           ("situation", "intention", "moral_action", "immoral_action"),
           "follows the norm: the moral action, not the immoral one", _moral_stories),
    Format("ethics-commonsense", "ETHICS commonsense morality (cm_train.csv, cm_test.csv, cm_test_hard.csv)", "csv",
           ("label", "input"),
           "agrees with people on whether the first-person scenario is clearly wrong", _ethics_commonsense),
    Format("moca", "MoCa (moral_dataset_v1.json, causal_dataset_v1.json)", "json",
           ("story", "question", "answer"),
           "gives the majority human answer to the story's yes/no question", _moca),
    Format("normbank", "NormBank (NormBank.csv)", "csv",
           ("setting", "behavior", "constraints", "label"),
           "judges the behavior acceptable (expected or okay) or not (taboo) as the annotators did", _normbank),
    Format("mfq", "Moral Foundations Questionnaire items (a CSV transcription of MFQ-30)", "csv",
           ("item", "foundation", "part"),
           "endorses the moral foundation the item measures (a high MFQ score)", _mfq),
)

#: The formats `convert` reads, by name.
FORMATS: dict[str, Format] = {f.name: f for f in _SPECS}


def convert(format: str, path: str | Path) -> Converted:
    """Read a data file in its published format and turn it into contrast pairs and prompts.

    Arguments:
        format: one of `FORMATS` (``social-chem101``, ``scruples-anecdotes``, ``scruples-dilemmas``,
            ``moral-stories``, ``ethics-commonsense``, ``moca``, ``normbank``, ``mfq``).
        path: the file.

    Returns:
        A `Converted`. A file of the wrong format, a row missing a column or holding a value outside the format's
        range raises `ActkitError` naming the file, the line and the expected columns or values; a file that
        yields no pair at all is an error too.
    """
    fmt = FORMATS.get(format.strip().lower())
    if fmt is None:
        raise ActkitError(f"unknown data format {format!r}; known: {', '.join(FORMATS)}")
    p = Path(path)
    out = fmt.convert(p, fmt)
    if not out.pairs:
        skipped = "; ".join(f"{n} skipped: {why}" for why, n in out.skipped.items()) or "the file holds no rows"
        raise ActkitError(f"{fmt.name} file {str(p)!r} gave no pairs ({skipped})")
    return out


def save(converted: Converted, pairs_out: str | Path, prompts_out: str | Path | None = None, *,
         overwrite: bool = False) -> list[Path]:
    """Write the pairs (JSONL, one pair per line) and optionally the prompts (JSONL, ``{"prompt": ...}`` lines).

    Both outputs are checked before either is written, and each is written atomically, so a refused or failed
    write leaves no half-written file.

    Arguments:
        converted: what `convert` returned.
        pairs_out: the pairs file.
        prompts_out: the prompts file, or None for none.
        overwrite: replace existing files (the CLI's ``--force``).

    Returns:
        The paths written.
    """
    targets = [Path(pairs_out)] + ([Path(prompts_out)] if prompts_out is not None else [])
    if len(targets) == 2 and targets[0].resolve() == targets[1].resolve():
        raise ActkitError(f"the pairs and the prompts would both go to {str(targets[0])!r}; give two files")
    for target in targets:
        check_output_file(target, overwrite=overwrite)
    texts = ["".join(json.dumps(p, ensure_ascii=False) + "\n" for p in converted.pairs)]
    if prompts_out is not None:
        texts.append("".join(json.dumps({"prompt": q}, ensure_ascii=False) + "\n" for q in converted.prompts))
    for target, text in zip(targets, texts, strict=True):
        write_text(target, text, overwrite=overwrite)
    return targets


__all__ = ["FORMATS", "Converted", "Format", "convert", "save"]
