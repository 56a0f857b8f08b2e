"""``actkit eval steering`` and ``actkit vector tune`` on a tiny model: the report, tuned vectors, bad input."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from actkit.models.packaged import byte_tokenizer

from cli_helpers import assert_bad_input, invoke
from tiny import build

pytestmark = pytest.mark.usefixtures("cached_load")

FAST = ["--layers", "1", "--factors", "0.5", "-n", "3", "--concept", "cats", "--instruction", "Talk about cats.",
        "--rule", "words:cat,cats"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = root / "model"
    tokenizer = byte_tokenizer()
    tiny = build("llama")
    tiny.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # every byte its own embedding (a mean-resized table gives the new rows one value)
        tiny.get_input_embeddings().weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    tiny.save_pretrained(model)
    tokenizer.save_pretrained(model)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": f"I love my cat {i}.", "negative": f"I love my car {i}."}) + "\n"
                             for i in range(8)))
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"Prompt number {i}:\n" for i in range(6)))
    return {"root": root, "model": model, "pairs": pairs, "prompts": prompts}


def _args(files, out, *extra):
    return ["eval", "steering", "--model", files["model"], "--pairs", files["pairs"], "--prompts", files["prompts"],
            "--out", out, *FAST, *extra]


def test_eval_steering_writes_the_report_and_prints_the_same_json(files, tmp_path):
    out = tmp_path / "report"
    result = invoke(*_args(files, out, "--methods", "mean-diff,prompt,random", "--json"))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "results.json").read_text())
    assert {p.name for p in out.iterdir()} == {"report.md", "results.json", "evaluation.png"}
    assert {"seed", "dev", "test"} <= set(printed["split"])
    methods = {m["method"]: m for m in printed["methods"]}
    assert set(methods) == {"mean-diff", "prompt", "random"}
    for m in methods.values():
        assert set(m["test"]) >= {"concept", "instruction", "fluency", "harmonic", "kl", "perplexity"}
        assert {"layer", "factor", "win_rate_vs_prompt", "likelihood"} <= set(m)
    assert methods["prompt"]["win_rate_vs_prompt"] is None and methods["prompt"]["layer"] is None
    assert 0.0 <= methods["random"]["win_rate_vs_prompt"] <= 1.0
    assert methods["mean-diff"]["layer"] == 1 and methods["mean-diff"]["factor"] == 0.5
    assert [m["method"] for m in printed["methods"]] == [m["method"] for m in sorted(
        printed["methods"], key=lambda m: -m["test"]["harmonic"])]
    assert "win vs prompt" in (out / "report.md").read_text()


def test_vector_tune_writes_its_choice_and_generate_uses_it(files, tmp_path):
    vector = tmp_path / "tuned.safetensors"
    result = invoke("vector", "tune", "--model", files["model"], "--pairs", files["pairs"], "--prompts",
                    files["prompts"], "--out", vector, "--layers", "1,2", "--factors", "0.25,0.5", "-n", "3",
                    "--concept", "cats", "--rule", "words:cat", "--kl-budget", "100", "--json")
    assert result.exit_code == 0, result.output
    tuned = json.loads(result.stdout)
    assert tuned["layer"] in (1, 2) and tuned["coef"] in (0.25, 0.5) and tuned["relative"] is True
    inspect = json.loads(invoke("vector", "inspect", vector, "--json").stdout)
    assert inspect["layers"] == [tuned["layer"]] and inspect["metadata"]["tuned"]["coef"] == tuned["coef"]
    generated = invoke("generate", "--model", files["model"], "--vector", vector, "--prompt", "Hi", "-n", "2",
                       "--json")
    assert generated.exit_code == 0, generated.output
    row = json.loads(generated.stdout.splitlines()[0])
    assert row["coef"] == tuned["coef"] and row["relative"] is True
    explicit = json.loads(invoke("generate", "--model", files["model"], "--vector", vector, "--prompt", "Hi",
                                 "-n", "2", "--coef", "3", "--json").stdout.splitlines()[0])
    assert explicit["coef"] == 3.0 and explicit["relative"] is False


def test_eval_steering_runs_adaptive_methods_and_a_vector_file(files, tmp_path):
    from actkit.models import load
    from actkit.steer import SteeringVector, save_vector
    from actkit.steer.vectors import model_metadata

    model, _ = load(str(files["model"]))
    own = tmp_path / "own.safetensors"
    g = torch.Generator().manual_seed(0)
    save_vector(SteeringVector({2: torch.randn(64, generator=g)},
                               metadata={**model_metadata(model), "mean_norms": {"2": 2.0}}), own)
    out = tmp_path / "report"
    result = invoke(*_args(files, out, "--methods", "dynamic,backtrack", "--vector", f"mine={own}", "--json"))
    assert result.exit_code == 0, result.output
    methods = {m["method"]: m for m in json.loads(result.stdout)["methods"]}
    assert set(methods) == {"dynamic", "backtrack", "mine"}
    assert methods["mine"]["layer"] == 2 and methods["dynamic"]["test"]["perplexity"] is None
    report = (out / "report.md").read_text()
    assert "no perplexity, no likelihood margin" in report and "| mine |" in report
    cases = [(f"mean-diff={own}", "the name 'mean-diff' is taken"), (str(own), "give NAME=FILE"),
             (f"x={tmp_path / 'none.safetensors'}", "is not a file")]
    for spec, needle in cases:
        assert_bad_input(invoke(*_args(files, tmp_path / "never", "--vector", spec)), needle)
    assert not (tmp_path / "never").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_input_is_named_exits_2_and_writes_nothing(files, tmp_path):
    root = files["root"]
    few = root / "few.txt"
    few.write_text("one\ntwo\nthree\n")
    wrong = root / "wrong.jsonl"
    wrong.write_text('{"prompt": "fine"}\n{"question": "not a prompt"}\n')
    few_pairs = root / "few_pairs.jsonl"
    few_pairs.write_text("".join(json.dumps({"positive": f"a {i}", "negative": f"b {i}"}) + "\n" for i in range(3)))
    bad_pairs = root / "bad_pairs.jsonl"
    bad_pairs.write_text('{"positive": "a"}\n')
    out = tmp_path / "never"
    cases = [
        (["--prompts", few], ["3 prompts are too few to split"]),
        (["--methods", "mean-diff,magic"], ["unknown method 'magic'"]),
        (["--judge", "oracle"], ["unknown judge 'oracle'"]),
        (["--prompts", wrong], ["wrong.jsonl', line 2", "'prompt'"]),
        (["--pairs", few_pairs], ["3 pairs are too few to split"]),
        (["--pairs", bad_pairs], ["bad_pairs.jsonl', line 1", "'negative'"]),
        (["--judge", f"openai:http://127.0.0.1:{_closed_port()}/v1"], ["failed 3 time(s)", "ConnectError"]),
    ]
    for extra, needles in cases:
        args = _args(files, out)
        for i in range(0, len(extra), 2):  # later options win: drop the default ones they replace
            if extra[i] in args:
                at = args.index(extra[i])
                del args[at:at + 2]
        assert_bad_input(invoke(*args, *extra), *needles)
        assert not out.exists()


def test_a_pairs_file_of_ones_own_needs_its_concept(files, tmp_path):
    result = invoke("eval", "steering", "--model", files["model"], "--pairs", files["pairs"], "--prompts",
                    files["prompts"], "--out", tmp_path / "r")
    assert_bad_input(result, "--concept NAME", "--instruction TEXT")
