"""``actkit builtin``: retrain the toy models from their seed, and measure their behaviours.

The conventions of ``actkit.cli_common`` hold: bad input (an unknown name, an ``--out`` that cannot be written, a
count that is not positive, a ``--path`` that holds no model) ends as ``error: <message>`` with exit status 2,
before any training or evaluation starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from actkit.cli_common import bad_input, stderr
from actkit.errors import ActkitError
from actkit.models import TOY_MODELS as NAMES

app = typer.Typer(name="builtin", help="The built-in toy models: train them from the seed, evaluate them.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

NameArg = Annotated[str | None, typer.Argument(help=f"One of {', '.join(NAMES)} (default: all).")]


def _names(name: str | None) -> list[str]:
    if name is None:
        return list(NAMES)
    short = name.removeprefix("builtin:")
    if short not in NAMES:
        raise ActkitError(f"no built-in model {name!r}; the built-in models are {', '.join(NAMES)}")
    return [short]


@app.command("train")
def train_command(
    name: NameArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder; each model goes to OUT/NAME.")] = Path(
        "builtin-models"),
    minutes: Annotated[float, typer.Option("--minutes", help="Wall-clock cap per model; stops early if hit (the "
                                           "recipes take 12-20 min on 2 idle cores).")] = 60.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the corpus, tokenizer, data order and weights.")] = 0,
    resume: Annotated[Path | None, typer.Option("--resume", help="A folder that stages 1-2 of the recipe wrote: "
                                                "run only the name-mover stage from it (one NAME).")] = None,
) -> None:
    """Train toy models from their recipe (the shipped weights came from the default seed)."""
    from dataclasses import replace

    from actkit.builtin.train import RECIPES, train
    from actkit.io import check_output_folder

    with bad_input():
        names = _names(name)
        if resume is not None and len(names) != 1:
            raise ActkitError("--resume continues one model; give its NAME too")
        if not minutes > 0:  # also NaN
            raise ActkitError(f"--minutes must be positive (got {minutes:g}): with no time to train, the model "
                              f"written to {out}/NAME would be its random initialisation")
        for short in names:  # every target, before the first model trains
            check_output_folder(out / short, overwrite=True)  # the recipe replaces its own files
    for short in names:
        recipe = replace(RECIPES[short], seed=seed)
        with bad_input():
            record = train(recipe, out / short, minutes=minutes, log=lambda line: typer.echo(line, err=True),
                           resume=resume)
        planned = recipe.steps + recipe.focus_steps + recipe.answer_steps
        if record["stopped_early"]:
            stderr().print(Text.assemble(("warning:", "bold yellow"), f" {short} stopped at the {minutes:g}-minute "
                                         f"cap after {record['steps_done']} of {planned} steps; it is undertrained "
                                         "(give more --minutes)"))
        typer.echo(f"{short}: {record['steps_done']} steps, train loss {record['final_train_loss']}, held-out loss "
                   f"{record['final_heldout_loss']}, {record['minutes']} min -> {out / short}")


@app.command("eval")
def eval_command(
    name: NameArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only, on stdout.")] = False,
    n: Annotated[int, typer.Option("--n", help="Held-out prompts per behaviour.")] = 200,
    path: Annotated[Path | None, typer.Option("--path", help="Evaluate this folder instead of the shipped "
                                              "weights (one NAME).")] = None,
) -> None:
    """Refusal, sentiment, name-mover, perplexity (and expert specialisation) on held-out prompts."""
    import torch

    from actkit.builtin.evaluate import evaluate, failures
    from actkit.models import load

    with bad_input():
        names = _names(name)
        if n < 1:
            raise ActkitError(f"--n must be a positive number of prompts per behaviour (got {n})")
        if path is not None:
            if len(names) != 1:
                raise ActkitError("--path evaluates one model; give its NAME too")
            _check_model_folder(path)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = {}
    for short in names:
        if not as_json:
            typer.echo(f"evaluating {short} on {n} held-out prompts per behaviour ...", err=True)
        with bad_input():
            model, tokenizer = load(f"builtin:{short}" if path is None else path)
        results[short] = evaluate(model, tokenizer, n=n, moe=short == "toy-moe")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for short, metrics in results.items():
        typer.echo(short)
        for key, value in metrics.items():
            typer.echo(f"  {key:30s} {value}")
        missed = failures(metrics)
        typer.echo("  targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    sys.stdout.flush()


def _check_model_folder(path: Path) -> None:
    """``--path`` must be a folder that ``actkit builtin train`` (or ``save_pretrained``) wrote."""
    if not path.exists():
        raise ActkitError(f"--path {str(path)!r} does not exist; give a folder that 'actkit builtin train' wrote")
    if not path.is_dir():
        raise ActkitError(f"--path {str(path)!r} is a file; give the model's folder")
    if not (path / "config.json").is_file():
        raise ActkitError(f"--path {str(path)!r} holds no config.json, so it is not a model folder; give a folder "
                          "that 'actkit builtin train' wrote (such as builtin-models/toy-dense)")
