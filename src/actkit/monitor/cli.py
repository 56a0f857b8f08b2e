"""``actkit probe`` (train, score) and ``actkit generate --monitor``: monitoring from the command line.

Thin over `actkit.monitor`: `train_probe`, `Probe.score`, `monitor_generate`. The conventions of ``actkit.cli``
hold: the default model is ``DEFAULT_MODEL``; ``--json`` prints JSON alone on stdout; bad input ends as
``error: <message>`` on stderr with exit status 2; nothing is overwritten without ``--force``, and the output is
checked before the model is loaded, so a refused run writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from actkit.cli_common import (
    DEFAULT_MODEL,
    DeviceOption,
    DtypeOption,
    ForceOption,
    JsonOption,
    ModelOption,
    bad_input,
    group,
    stdout,
)
from actkit.errors import ActkitError
from actkit.io import check_output_file

probe_app = group("probe", "Probes: train a linear read-out of a behaviour on labelled texts, score texts with it.")

#: Shipped data files of the monitor pillar (``builtin:NAME``); steering pair files are found there too.
DATA_DIR = Path(__file__).parent / "data"


def data_path(spec: str) -> Path:
    """``builtin:NAME``: a file shipped with the monitor pillar, else a steering pairs file; otherwise a path."""
    from actkit.steer.pairs import pairs_path

    if spec.startswith("builtin:"):
        own = DATA_DIR / f"{spec.removeprefix('builtin:')}.jsonl"
        return own if own.is_file() and "/" not in spec else pairs_path(spec)
    return Path(spec)


def parse_probe_layers(text: str) -> list[int] | None:
    """``auto`` or ``all``: every block (the best on a validation split is chosen); else block indices."""
    from actkit.steer.cli import parse_layers

    return None if text.strip().lower() == "auto" else parse_layers(text)


@probe_app.command("train")
def train_command(
    data: Annotated[str, typer.Option("--data", "-d", help="JSONL of {\"text\", \"label\": 0|1} lines (or contrast "
                                      "pairs {\"positive\", \"negative\"}), or a shipped file: builtin:NAME.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The probe file to write (safetensors).")],
    model: ModelOption = DEFAULT_MODEL,
    layers: Annotated[str, typer.Option("--layers", "-l", help="'auto' (every block; the best on a validation "
                                        "split is used) or candidate blocks such as 3 or 2,3,4.")] = "auto",
    method: Annotated[str, typer.Option("--method", help="mean-diff, logistic or pca.")] = "mean-diff",
    site: Annotated[str, typer.Option("--site", help="The site kind read (resid_post, mlp_hidden, ...).")
                    ] = "resid_post",
    reduce: Annotated[str, typer.Option("--reduce", help="A text's score: its last token's (last) or the mean "
                                        "over its tokens (mean).")] = "last",
    fpr: Annotated[float, typer.Option("--fpr", help="False-positive rate the threshold is set at (on the "
                                       "training negatives).")] = 0.01,
    held_out: Annotated[float, typer.Option("--held-out", help="Fraction of each class held out for AUROC and "
                                            "accuracy.")] = 0.25,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out split.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = 16,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Train a probe on labelled texts, report its held-out AUROC and accuracy, and write it."""
    from actkit.models import load
    from actkit.monitor import METHODS, save_probe, train_probe
    from actkit.monitor.data import read_labelled
    from actkit.monitor.probe import check_labels

    with bad_input():
        if method not in METHODS:
            raise ActkitError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of texts (got {batch_size})")
        chosen = parse_probe_layers(layers)
        check_output_file(out, overwrite=force)
        texts, labels = read_labelled(data_path(data))
        if labels is None:
            raise ActkitError(f"{data}: no line has a label; training needs {{\"text\", \"label\": 0 or 1}} lines")
        check_labels(labels)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        probe = train_probe(loaded, tokenizer, texts, labels, layers=chosen, kind=site, method=method,
                            reduce=reduce, fpr=fpr, held_out=held_out, seed=seed, batch_size=batch_size)
        probe.metadata["data"] = data
        save_probe(probe, out, overwrite=force)
    meta = probe.metadata
    result = {"out": str(out), "model": model, "site": probe.site, "method": method, "reduce": reduce,
              "threshold": probe.threshold, "fpr": fpr, "auroc": meta["auroc"], "accuracy": meta["accuracy"],
              "tpr": meta["tpr"], "held_out_fpr": meta["held_out_fpr"], "n_train": meta["n_train"],
              "n_held_out": meta["n_held_out"], "layer_auroc": meta.get("layer_auroc")}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = stdout()
    if meta.get("layer_auroc"):
        table = Table("block", "validation AUROC")
        for layer, value in meta["layer_auroc"].items():
            table.add_row(layer + (" *" if f"{site}.{layer}" == probe.site else ""), f"{value:.3f}")
        console.print(table)
    console.print(Text(f"wrote {out}: {method} probe at {probe.site} ({reduce} token{'s' if reduce == 'mean' else ''}"
                       f"), held out {meta['n_held_out']} of {meta['n_train'] + meta['n_held_out']} texts: AUROC "
                       f"{meta['auroc']:.3f}, accuracy {meta['accuracy']:.3f}, TPR {meta['tpr']:.3f} at threshold "
                       f"{probe.threshold:.4g} (set at FPR {fpr:g} on the training negatives)"), highlight=False)


@probe_app.command("score")
def score_command(
    path: Annotated[Path, typer.Argument(help="The probe file (safetensors).")],
    data: Annotated[str, typer.Option("--data", "-d", help="JSONL of {\"text\"} or {\"text\", \"label\"} lines, "
                                      "or a shipped file: builtin:NAME.")],
    model: ModelOption = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = 16,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Score texts with a probe; with labels, also AUROC and accuracy at the probe's threshold."""
    from actkit.models import load
    from actkit.monitor import auroc, load_probe
    from actkit.monitor.data import read_labelled
    from actkit.monitor.probe import check_labels

    with bad_input():
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of texts (got {batch_size})")
        texts, labels = read_labelled(data_path(data))
        if labels is not None:
            check_labels(labels)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        probe = load_probe(path, loaded)
        scores = probe.score(loaded, tokenizer, texts, batch_size=batch_size)
    flagged = probe.predict(scores).tolist()
    result: dict[str, Any] = {"probe": str(path), "model": model, "site": probe.site, "threshold": probe.threshold,
                              "scores": [float(s) for s in scores], "flagged": flagged}
    if labels is not None:
        y = labels
        result["auroc"] = auroc(scores, y)
        result["accuracy"] = sum(int(f) == t for f, t in zip(flagged, y, strict=True)) / len(y)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = stdout()
    for i, (text, score) in enumerate(zip(texts, result["scores"], strict=True)):
        mark = ("above", "bold red") if flagged[i] else ("below", "green")
        shown = text if len(text) <= 70 else text[:67] + "..."
        label = "" if labels is None else f" (label {labels[i]})"
        console.print(Text.assemble(f"{score:+.4f} ", mark, f"{label}  ", repr(shown)), highlight=False)
    if labels is not None:
        console.print(Text(f"{len(texts)} texts: AUROC {result['auroc']:.3f}, accuracy {result['accuracy']:.3f} at "
                           f"threshold {probe.threshold:.4g}"), highlight=False)


def monitored_generation(model: Any, tokenizer: Any, prompts: list[str], paths: list[Path], writes: Any,
                         options: dict[str, Any], as_json: bool, settings: dict[str, Any]) -> None:
    """``actkit generate --monitor P``: generate and print each token with its score on each probe.

    Coloured on a terminal (red above the probe's threshold, green below); JSON lines with ``--json`` or when
    stdout is not a terminal.
    """
    from actkit.monitor import load_probe
    from actkit.monitor.tokens import monitor_generate

    if settings.pop("compare", False):
        raise ActkitError("--monitor and --compare cannot be combined; run the two generations separately")
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        raise ActkitError("the same --monitor file is given twice")
    probes = {str(p): load_probe(p, model) for p in paths}
    found = monitor_generate(model, tokenizer, prompts, probes, writes=writes, **options)
    decode = tokenizer.decode
    if as_json or not sys.stdout.isatty():
        for prompt, item in zip(prompts, found, strict=True):
            row = {"prompt": prompt, "completion": decode(item.ids, skip_special_tokens=True),
                   "tokens": [decode([t]) for t in item.ids], "scores": item.scores,
                   "prompt_tokens": [decode([t]) for t in item.prompt_ids], "prompt_scores": item.prompt_scores,
                   "thresholds": {n: p.threshold for n, p in probes.items()},
                   "flagged": {n: any(s > probes[n].threshold for s in item.scores[n]) for n in probes}}
            typer.echo(json.dumps({**row, **settings, "monitor": names}))
        return
    console = stdout()
    for prompt, item in zip(prompts, found, strict=True):
        console.print(Text(prompt, style="bold"))
        for name, probe in probes.items():
            line = Text(f"  {Path(name).name}: ", style="dim")
            for token, score in zip(item.ids, item.scores[name], strict=True):
                line.append(decode([token]), style="on red" if score > probe.threshold else "on dark_green")
            peak = max(item.scores[name], default=float("nan"))
            line.append(f"  (max {peak:+.3g}, threshold {probe.threshold:+.3g})", style="dim")
            console.print(line)


__all__ = ["data_path", "monitored_generation", "probe_app"]
