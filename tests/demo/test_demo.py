"""``actkit demo``: train, steer, compare and report on the built-in model, end to end through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from actkit import cli
from actkit.steer import load_vector

runner = CliRunner()


def test_demo_on_the_toy_model_writes_a_report_whose_vectors_work(tmp_path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(cli.app, ["demo", "--out", str(out), "--prompts", "6", "-n", "10", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "results.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"report.md", "results.json", "vectors"}
    by_name = {e["name"]: e for e in report["experiments"]}
    assert set(by_name) == {"sentiment", "refusal"}

    refusal = by_name["refusal"]
    base, steered = refusal["rows"]
    assert (base["coef"], base["behaviour"], base["kl"]) == (0.0, 0.0, 0.0)
    assert steered["behaviour"] == 1.0  # every benign request refused with the vector added
    assert refusal["random"][1]["behaviour"] == 0.0  # and none with a random direction of the same norm
    sentiment = by_name["sentiment"]
    assert sentiment["rows"][-1]["behaviour"] == 1.0 > sentiment["rows"][0]["behaviour"]
    assert sentiment["random"][-1]["behaviour"] < 1.0
    assert sentiment["site"] == "resid_post.1"  # the block at 30% of the depth

    vector = load_vector(out / refusal["vector_file"])
    assert vector.layers == [3] and vector.metadata["n_pairs"] == refusal["pair_count"]  # select_layers' pick
    page = (out / "report.md").read_text()
    assert "| 1 | 1.00 |" in page and refusal["examples"][0]["steered"].strip() in page

    again = runner.invoke(cli.app, ["demo", "--out", str(out), "--prompts", "1", "-n", "1"])
    assert again.exit_code == 2 and "--force" in again.stderr  # an earlier run is not replaced silently
