"""``actkit patch``: where in the model does a behaviour live? Exact patching, AtP or AtP* on one prompt pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from actkit.cli_common import (
    DEFAULT_MODEL,
    DeviceOption,
    DtypeOption,
    ForceOption,
    JsonOption,
    ModelOption,
    bad_input,
    stderr,
    stdout,
)
from actkit.errors import ActkitError

OUT_FILES = ["patch.json", "patch.png"]


def patch_command(
    clean: Annotated[str, typer.Option("--clean", help="The prompt that shows the behaviour.")],
    corrupt: Annotated[str, typer.Option("--corrupt", help="The same prompt with the cue changed (same length "
                                         "in tokens).")],
    answer: Annotated[str, typer.Option("--answer", help="The token the clean prompt should be continued with.")],
    foil: Annotated[str | None, typer.Option("--foil", help="The competing token (the logit-diff metric needs "
                                             "it).")] = None,
    model: ModelOption = DEFAULT_MODEL,
    site: Annotated[str, typer.Option("--site", help="resid_post, resid_pre, attn_out, mlp_out (per block and "
                                      "position) or heads (per block and head).")] = "resid_post",
    method: Annotated[str, typer.Option("--method", help="exact, atp or atp-star.")] = "exact",
    metric: Annotated[str, typer.Option("--metric", help="logit-diff, prob or kl.")] = "logit-diff",
    direction: Annotated[str, typer.Option("--direction", help="denoise (clean into corrupt) or noise.")]
    = "denoise",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per forward pass (exact).")] = 32,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for patch.json and the heatmap "
                                             "patch.png.")] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Patch every block and position (or head) of one site kind and print each patch's effect on the metric.

    An effect is the metric after the patch minus the metric of the run that was patched (the corrupt run when
    denoising). atp and atp-star estimate the same effects from gradients, at a fraction of the cost.
    """
    with bad_input():
        from actkit.io import check_writable
        from actkit.localize.attribution import METHODS, attribution_patching
        from actkit.localize.pairs import prompt_pair
        from actkit.localize.patching import activation_patching, check_direction, check_site
        from actkit.models import load

        check_site(site)
        check_direction(direction)
        if method not in METHODS:
            raise ActkitError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if out is not None:
            check_writable(out, OUT_FILES, overwrite=force)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        pair = prompt_pair(tokenizer, clean, corrupt, answer, foil)
        if method == "exact":
            result = activation_patching(loaded, pair, site, metric=metric, direction=direction,
                                         batch_size=batch_size)
        else:
            result = attribution_patching(loaded, pair, site, metric=metric, direction=direction, method=method)
        data = result.to_dict()
        written = _write(data, out) if out is not None else []
    if as_json:
        from actkit.io import to_json

        print(to_json(data))
        return
    _show(data)
    for path in written:
        stderr().print(f"wrote {path}")


def _write(data: dict[str, Any], out: Path) -> list[Path]:
    from actkit.io import make_folder, publish, staging, to_json, undone_on_failure
    from actkit.report.patching import plot_effects
    from actkit.report.plots import MissingMatplotlib

    with undone_on_failure(out), staging(make_folder(out)) as stage:
        (stage / "patch.json").write_text(to_json(data) + "\n")
        names = ["patch.json"]
        try:
            plot_effects(data, stage / "patch.png")
            names.append("patch.png")
        except MissingMatplotlib as missing:
            stderr().print(str(missing))
        return publish(stage, out, names)


def _show(data: dict[str, Any], top: int = 10) -> None:
    console = stdout()
    console.print(f"{data['method']} patching of {data['site']} ({data['direction']}, {data['metric']}): clean "
                  f"{data['clean_metric']:.4g}, corrupt {data['corrupt_metric']:.4g}, {data['seconds']:.2f} s")
    cells = [(abs(v), v, layer, j) for layer, row in zip(data["layers"], data["effects"], strict=True)
             for j, v in enumerate(row)]
    table = Table(box=box.SIMPLE, title=f"strongest {min(top, len(cells))} effects")
    for column in ("block", data["columns"], "effect"):
        table.add_column(column, justify="right" if column != "position" else "left")
    for _, value, layer, j in sorted(cells, reverse=True)[:top]:
        where = f"{j} {data['tokens'][j]!r}" if data["columns"] == "position" else str(j)
        table.add_row(str(layer), where, f"{value:+.4f}")
    console.print(table)


def fv_command(
    task: Annotated[str, typer.Option("--task", "-t", help="antonyms, capitals, or a JSONL file of "
                                      "{\"input\", \"output\"} lines.")] = "antonyms",
    model: ModelOption = DEFAULT_MODEL,
    shots: Annotated[int, typer.Option("--shots", help="Demonstrations per in-context prompt.")] = 5,
    prompts: Annotated[int, typer.Option("--prompts", help="In-context prompts for the mean head outputs (and as "
                                         "many shuffled ones for the effects).")] = 12,
    top: Annotated[int, typer.Option("--top", help="Heads summed into the vector.")] = 10,
    layer: Annotated[int | None, typer.Option("--layer", help="Block after which the vector is added (default: "
                                              "a third of the depth).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the vector as a steering-vector file "
                                             "(use it with actkit generate --vector F --positions last).")] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Find a task's function vector (Todd et al.): the heads that carry it in context, summed; then measure
    zero-shot accuracy on the held-out half of the examples with and without it."""
    with bad_input():
        from actkit.io import check_output_file
        from actkit.localize.function_vectors import (
            function_vector,
            icl_accuracy,
            read_task,
            zero_shot_accuracy,
        )
        from actkit.models import load
        from actkit.steer import SteeringVector, save_vector
        from actkit.steer.vectors import model_metadata

        if out is not None:
            check_output_file(out, overwrite=force)
        pairs = read_task(task)
        train, test = pairs[::2], pairs[1::2]
        if len(test) < 1:
            raise ActkitError(f"--task {task!r} has {len(pairs)} examples; give at least {2 * (shots + 2)}")
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        fv = function_vector(loaded, tokenizer, train, shots=shots, prompts=prompts, top=top, layer=layer)
        report = {"task": task, "model": model, "layer": fv.layer, "heads": [list(h) for h in fv.heads],
                  "effects": [float(fv.effects[i, j]) for i, j in fv.heads], "train": len(train), "test": len(test),
                  "icl": icl_accuracy(loaded, tokenizer, test, shots=shots, prompts=len(test))
                  if len(test) >= shots + 2 else None,
                  "zero_shot": zero_shot_accuracy(loaded, tokenizer, test),
                  "zero_shot_fv": zero_shot_accuracy(loaded, tokenizer, test, fv)}
        if out is not None:
            vector = SteeringVector({fv.layer: fv.vector}, metadata={
                **model_metadata(loaded), **fv.metadata, "site": "resid_post", "layers": [fv.layer],
                "read_positions": "last", "heads": report["heads"], "task": task})
            save_vector(vector, out, overwrite=force)
            report["out"] = str(out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = stdout()
    console.print(f"function vector of {task}: heads {', '.join(f'{i}.{j}' for i, j in fv.heads)} (layer.head), "
                  f"added after block {fv.layer}", highlight=False)
    console.print(f"held-out accuracy of the first answer token ({len(test)} examples): in context "
                  f"{report['icl']}, zero-shot {report['zero_shot']:.2f}, zero-shot + vector "
                  f"{report['zero_shot_fv']:.2f}", highlight=False)
    if out is not None:
        console.print(f"wrote {out}", highlight=False)
