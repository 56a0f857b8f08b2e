"""``actkit vector`` (train, inspect, export) and ``actkit generate``: steering from the command line.

Thin over `actkit.steer`: every option maps to an argument of `train_vector`, `select_layers`,
`SteeringVector.to_intervention`, `generate`, `save_vector` or `export_gguf`. The conventions of ``actkit.cli``
hold: the default model is ``DEFAULT_MODEL``; ``--json`` prints JSON alone on stdout; bad input ends as
``error: <message>`` on stderr with exit status 2; nothing is overwritten without ``--force``.

``actkit.cli`` imports this module while it registers its sub-commands, so this module reaches back into it
only inside functions (never at import time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, cast

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
from actkit.steer.pairs import DATA_DIR, pairs_path

vector_app = group("vector", "Steering vectors: train one from contrast pairs, inspect a file, export it for llama.cpp or lm-eval.")


def parse_layers(text: str) -> list[int] | None:
    """``"3,5"`` -> [3, 5]; ``"all"`` -> None (every block); negative indices count from the end."""
    key = text.strip().lower()
    if key == "all":
        return None
    try:
        layers = [int(part) for part in key.split(",") if part.strip()]
    except ValueError:
        raise ActkitError(f"--layers {text!r}: give 'auto', 'all' or block indices such as 3 or 3,5") from None
    if not layers:
        raise ActkitError("--layers is empty; give 'auto', 'all' or block indices such as 3,5")
    return layers


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


@vector_app.command("train")
def train_command(
    pairs: Annotated[str, typer.Option("--pairs", "-p", help="JSONL file of {\"positive\", \"negative\"} lines "
                                       "(or CAA's A/B lines), or a shipped file: builtin:sentiment, "
                                       "builtin:weddings.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The vector file to write (safetensors).")],
    model: ModelOption = DEFAULT_MODEL,
    layers: Annotated[str, typer.Option("--layers", "-l", help="'auto' (rank blocks by held-out separation and "
                                        "train at the best), 'all', or block indices such as 3 or 3,5 "
                                        "(negative from the end).")] = "auto",
    method: Annotated[str, typer.Option("--method", help="mean-diff, pca-diff, pca-center, probe, actadd, or "
                                        "lineas (affine maps at every --layers block, 'auto' meaning all; see "
                                        "actkit.steer.lineas).")
                      ] = "mean-diff",
    site: Annotated[str, typer.Option("--site", help="The site kind read and later steered.")] = "resid_post",
    read_position: Annotated[str, typer.Option("--read-position", help="Tokens whose mean gives a text's "
                                               "activation: last, all, from:K.")] = "last",
    top: Annotated[int, typer.Option("--top", help="With --layers auto: how many of the best blocks to use.")
                   ] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="With --method lineas: Adam steps.")] = 100,
    lr: Annotated[float, typer.Option("--lr", help="With --method lineas: Adam's learning rate.")] = 0.01,
    l1: Annotated[float, typer.Option("--l1", help="With --method lineas: the per-coordinate sparsity weight.")
                  ] = 1e-3,
    rank: Annotated[int, typer.Option("--rank", help="With --method lineas: rank of a low-rank term (0: none).")
                    ] = 0,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Train a steering vector from contrast pairs and write it as a safetensors file."""
    if method == "lineas":
        _train_lineas(pairs, out, model, layers, site, read_position, batch_size, steps, lr, l1, rank, force,
                      as_json, dtype, device)
        return
    from actkit.models import load
    from actkit.steer import METHODS, read_pairs, save_vector, select_layers, train_vector

    with bad_input():
        if method not in METHODS:
            raise ActkitError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of texts (got {batch_size})")
        if top <= 0:
            raise ActkitError(f"--top must be a positive number of blocks (got {top})")
        auto = layers.strip().lower() == "auto"
        chosen = None if auto else parse_layers(layers)
        check_output_file(out, overwrite=force)
        items = read_pairs(pairs_path(pairs))
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        ranking = None
        if auto:
            ranking, chosen = select_layers(loaded, tokenizer, items, top=top, site=site,
                                            read_position=read_position, batch_size=batch_size)
        vector = train_vector(loaded, tokenizer, items, chosen, method=method, site=site,
                              read_position=read_position, batch_size=batch_size)
        save_vector(vector, out, overwrite=force)
    norms = {str(layer): float(v.norm()) for layer, v in vector.directions.items()}
    mean_norms = {str(k): float(v) for k, v in (vector.metadata.get("mean_norms") or {}).items()}
    if as_json:
        typer.echo(json.dumps({
            "out": str(out), "model": model, "method": method, "site": site, "layers": vector.layers,
            "read_position": read_position, "n_pairs": len(items), "data_hash": vector.metadata["data_hash"],
            "norms": norms, "mean_norms": mean_norms, "ranking": ranking,
        }, indent=2))
        return
    console = stdout()
    if ranking is not None:
        console.print(_ranking_table(ranking, vector.layers))
    for layer in vector.layers:
        ratio = norms[str(layer)] / mean_norms[str(layer)] if mean_norms.get(str(layer)) else None
        console.print(Text(f"{site}.{layer}: |v| = {_num(norms[str(layer)])}, mean residual norm "
                           f"{_num(mean_norms.get(str(layer)))} (|v| is {_num(ratio, 3)} of it)"), highlight=False)
    console.print(Text(f"wrote {out}: {method} from {len(items)} pairs of {pairs}, read at {read_position}, "
                       f"layers {', '.join(map(str, vector.layers))}"), highlight=False)


def _train_lineas(pairs: str, out: Path, model: str, layers: str, site: str, read_position: str, batch_size: int,
                  steps: int, lr: float, l1: float, rank: int, force: bool, as_json: bool, dtype: str,
                  device: str) -> None:
    """``actkit vector train --method lineas``: the pairs' negatives are the source, the positives the target."""
    from actkit.models import load
    from actkit.steer import read_pairs
    from actkit.steer.lineas import save_lineas, train_from_pairs

    with bad_input():
        check_output_file(out, overwrite=force)
        items = read_pairs(pairs_path(pairs))
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        chosen = None if layers.strip().lower() == "auto" else parse_layers(layers)
        lineas = train_from_pairs(loaded, tokenizer, items, chosen, site=site, read_position=read_position,
                                  batch_size=batch_size, steps=steps, lr=lr, l1=l1, group=l1, rank=rank)
        save_lineas(lineas, out, overwrite=force)
    meta = lineas.metadata
    summary = {"out": str(out), "model": model, "method": "lineas", "site": site, "layers": lineas.layers,
               "read_position": read_position, "n_pairs": len(items), "loss_start": meta["loss_start"],
               "loss_end": meta["loss_end"], "active": {str(k): v for k, v in lineas.active().items()}}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    stdout().print(Text(f"wrote {out}: LinEAS maps at {site} blocks {', '.join(map(str, lineas.layers))} from "
                        f"{len(items)} pairs of {pairs}; loss {meta['loss_start']:.4g} -> {meta['loss_end']:.4g}; "
                        f"coordinates changed per block {summary['active']}"), highlight=False)


def _ranking_table(ranking: list[dict[str, Any]], chosen: list[int]) -> Table:
    table = Table(title="layer ranking: a mean-diff direction trained on part of the pairs, tested on the rest "
                  f"({ranking[0]['train_pairs']} / {ranking[0]['held_out_pairs']} pairs)", title_justify="left")
    for name in ("rank", "layer", "accuracy", "consistency", "score", "|v|", ""):
        table.add_column(name, justify="right")
    for row in ranking:
        table.add_row(str(row["rank"]), str(row["layer"]), f"{row['accuracy']:.3f}", f"{row['consistency']:.3f}",
                      f"{row['score']:.3f}", _num(row["direction_norm"]),
                      "chosen" if row["layer"] in chosen else "")
    return table


def _read_vector(path: Path, model: Any = None) -> tuple[Any, str]:
    """A vector from a safetensors file, or from a llama.cpp GGUF control vector (by its suffix)."""
    from actkit.steer import import_gguf, load_vector

    if path.suffix.lower() == ".gguf":
        return import_gguf(path, model), "gguf"
    return load_vector(path, model), "safetensors"


@vector_app.command("inspect")
def inspect_command(
    path: Annotated[Path, typer.Argument(help="A vector file (.safetensors, or a .gguf control vector), or a "
                                         "LinEAS file.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also check that the vector fits this "
                                              "model.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show a vector file: what it was trained on, its layers and their norms (LinEAS files: their maps)."""
    from actkit.sae._files import CFG_FILE, WEIGHTS_FILE
    from actkit.steer.lineas import is_lineas_file, load_lineas

    with bad_input():
        folder = path if path.is_dir() else path.parent if path.name == WEIGHTS_FILE else None
        if folder is not None and ((folder / CFG_FILE).is_file() or (folder / WEIGHTS_FILE).is_file()):
            raise ActkitError(f"{str(path)!r} is a sparse autoencoder (an SAELens folder), not a vector file; "
                              f"describe its features with: actkit sae features {str(folder)!r}")
        loaded = None
        if model is not None:
            from actkit.models import load

            loaded, _ = load(model)
        if is_lineas_file(path):
            return _inspect_lineas(path, load_lineas(path, loaded), as_json)
        vector, kind = _read_vector(path, loaded)
    meta = vector.metadata
    mean_norms = meta.get("mean_norms") or {}
    rows = []
    for layer in vector.layers:
        norm = float(vector.directions[layer].norm())
        mean = mean_norms.get(str(layer)) if isinstance(mean_norms, dict) else None
        rows.append({"layer": layer, "norm": norm, "mean_norm": None if mean is None else float(mean),
                     "relative": None if not mean else norm / float(mean)})
    if as_json:
        typer.echo(json.dumps({"path": str(path), "format": kind, "site": vector.site, "layers": vector.layers,
                               "hidden_size": vector.hidden_size, "norms": rows, "metadata": meta}, indent=2))
        return
    console = stdout()
    facts = [("model", meta.get("model", meta.get("model_hint"))), ("method", meta.get("method")),
             ("normalization", meta.get("normalization")), ("site", vector.site),
             ("read positions", meta.get("read_positions")), ("pairs", meta.get("n_pairs")),
             ("data hash", meta.get("data_hash")), ("hidden size", vector.hidden_size), ("format", kind)]
    for name, value in facts:
        if value is not None:
            console.print(Text.assemble((f"{name:>15}", "bold"), f"  {value}"), highlight=False)
    table = Table(title_justify="left")
    for name in ("layer", "|v|", "mean residual norm", "|v| / mean norm"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(str(row["layer"]), _num(row["norm"]), _num(row["mean_norm"]), _num(row["relative"], 3))
    console.print(table)


def _inspect_lineas(path: Path, lineas: Any, as_json: bool) -> None:
    """``actkit vector inspect`` of a LinEAS file: its training facts, then per block how many coordinates the
    maps change (the rest keep the identity) and the norms of the scale deviation and the shift."""
    meta = lineas.metadata
    blocks = lineas.summary()
    facts = {"model": meta.get("model"), "method": "lineas", "site": lineas.site,
             "sites": [b["site"] for b in blocks], "layers": lineas.layers, "hidden_size": lineas.hidden_size,
             "rank": lineas.rank, "active_fraction": sum(b["active"] for b in blocks) /
             (lineas.hidden_size * len(blocks))}
    if as_json:
        typer.echo(json.dumps({"path": str(path), "format": "safetensors", **facts, "blocks": blocks,
                               "metadata": meta}, indent=2))
        return
    console = stdout()
    shown = [("model", facts["model"]), ("method", "lineas (per-block affine maps)"), ("site", lineas.site),
             ("hidden size", lineas.hidden_size), ("low-rank term", f"rank {lineas.rank}" if lineas.rank else "none"),
             ("non-identity", f"{facts['active_fraction']:.1%} of coordinates over {len(blocks)} block(s)"
              + (" (diagonal part; the low-rank term changes all)" if lineas.rank else "")),
             ("texts", f"{meta.get('n_source')} source, {meta.get('n_target')} target"
              if meta.get("n_source") is not None else None),
             ("loss", f"{_num(meta.get('loss_start'))} -> {_num(meta.get('loss_end'))}"
              if meta.get("loss_start") is not None else None),
             ("penalty", f"l1 {meta.get('l1')}, group {meta.get('group')}" if meta.get("l1") is not None else None),
             ("data hash", meta.get("data_hash")), ("format", "safetensors")]
    for name, value in shown:
        if value is not None:
            console.print(Text.assemble((f"{name:>15}", "bold"), f"  {value}"), highlight=False)
    table = Table(title_justify="left")
    for name in ("site", "non-identity", "fraction", "|scale - 1|", "|shift|", "rank"):
        table.add_column(name, justify="right")
    for b in blocks:
        table.add_row(b["site"], f"{b['active']}/{lineas.hidden_size}", f"{b['active_fraction']:.1%}",
                      _num(b["scale_norm"]), _num(b["shift_norm"]), str(b["rank"]))
    console.print(table)


@vector_app.command("export")
def export_command(
    path: Annotated[Path, typer.Argument(help="The vector file to export (.safetensors).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Target format: gguf (a llama.cpp control "
                                        "vector) or lm-eval (lm-evaluation-harness's steered model).")] = "gguf",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The file to write (default: PATH with the "
                                             "format's suffix).")] = None,
    model_hint: Annotated[str | None, typer.Option("--model-hint", help="controlvector.model_hint (default: the "
                                                   "model type the vector was trained on).")] = None,
    coef: Annotated[float, typer.Option("--coef", "-c", help="lm-eval: the steering coefficient written into the "
                                        "file.")] = 1.0,
    relative: Annotated[bool, typer.Option("--relative", help="lm-eval: --coef is a fraction of the mean residual "
                                           "norm at each layer (baked into the vector).")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="lm-eval: check the vector against this "
                                              "model and find the hookpoints in it (default: from the anatomy "
                                              "table of the vector's model type).")] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export a vector to another tool's format (llama.cpp: --control-vector-scaled FILE:STRENGTH; lm-eval:
    --model steered --model_args pretrained=MODEL,steer_path=FILE)."""
    from actkit.steer import export_gguf, load_vector
    from actkit.steer.lm_eval_export import export_lm_eval

    kind = format.lower()
    with bad_input():
        if kind not in ("gguf", "lm-eval"):
            raise ActkitError(f"unknown --format {format!r}; the supported formats are gguf and lm-eval")
        target = out if out is not None else path.with_suffix(".gguf" if kind == "gguf" else ".pt")
        if target.resolve() == path.resolve():
            raise ActkitError(f"the output {str(target)!r} is the input file; give another --out")
        check_output_file(target, overwrite=force)
        vector = load_vector(path)
        if kind == "lm-eval":
            loaded = None
            if model is not None:
                from actkit.models import load

                loaded, _ = load(model)
            export_lm_eval(vector, target, coef, relative=relative, model=loaded, overwrite=force)
        else:
            export_gguf(vector, target, overwrite=force, model_hint=model_hint)
    if as_json:
        typer.echo(json.dumps({"path": str(path), "out": str(target), "format": kind, "layers": vector.layers},
                              indent=2))
        return
    if kind == "lm-eval":
        stdout().print(Text(f"wrote {target}: {len(vector.layers)} direction(s) at blocks "
                            f"{', '.join(map(str, vector.layers))}; use it with lm-eval --model steered "
                            f"--model_args pretrained=MODEL,steer_path={target}"), highlight=False)
        return
    stdout().print(Text(f"wrote {target}: {len(vector.layers)} direction(s) at blocks "
                         f"{', '.join(map(str, vector.layers))}; use it with llama.cpp's "
                         f"--control-vector-scaled {target}:1.0"), highlight=False)


def generate_command(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeat for a batch).")],
    model: ModelOption = DEFAULT_MODEL,
    vector: Annotated[Path | None, typer.Option("--vector", "-v", help="A steering vector file (.safetensors "
                                                "or a .gguf control vector), or a LinEAS file (--coef is then "
                                                "its strength).")] = None,
    coef: Annotated[float | None, typer.Option("--coef", "-c", help="Steering coefficient (default: the one "
                                               "`actkit vector tune` stored in the vector, else 1); 0 is the "
                                               "plain model.")] = None,
    relative: Annotated[bool, typer.Option("--relative", help="--coef is a fraction of the mean residual norm "
                                           "at each layer, not a multiple of the vector.")] = False,
    layers: Annotated[str | None, typer.Option("--layers", "-l", help="Steer only these of the vector's "
                                               "layers, such as 3 or 3,5.")] = None,
    positions: Annotated[str, typer.Option("--positions", help="Tokens to steer: all, prompt, generated, "
                                           "from:K.")] = "all",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate at most.")
                              ] = 32,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature (with "
                                                      "--sample; default 1).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass (with --sample; "
                                                "default 1).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed (with --sample).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap each prompt as a user turn with the model's chat "
                                       "template.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Also generate without the vector, side by side.")
                       ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per prompt, one per line.")
                       ] = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
    sae: Annotated[Path | None, typer.Option("--sae", help="Steer with features of this SAE folder instead of "
                                             "a vector (with --feature).")] = None,
    feature: Annotated[str | None, typer.Option("--feature", help="With --sae: feature index (or 3,7) whose "
                                                "unit decoder row is added times --coef.")] = None,
    clamp: Annotated[bool, typer.Option("--clamp", help="With --sae: set the features' activations to --coef "
                                        "through the SAE instead (reconstruction error kept).")] = False,
    experts_off: Annotated[str | None, typer.Option(
        "--experts-off", help="Switch these MoE experts off while generating, LAYER:EXPERT,... (their router logit "
        "is -inf before the top-k; --compare keeps them off too).")] = None,
    activation_sparsity: Annotated[str | None, typer.Option(
        "--activation-sparsity", help="Zero small entries of every projection's input while generating: teal:S "
        "(thresholds calibrated on built-in training text), wina:S or wina-code:S, S in [0, 1). One prompt on "
        "CPU takes the sparse decode path.")] = None,
    dynamic: Annotated[list[Path] | None, typer.Option(
        "--dynamic", help="Compose these vector files (and --vector) with Dynamic Activation Composition: each "
        "coefficient set per token from a KL, up to --coef (default 2). Repeatable.")] = None,
    backtrack: Annotated[str | None, typer.Option(
        "--backtrack", help="Steer with --vector only after a probe crosses its threshold, K tokens back: a probe "
        "file, or LAYER:above|below:THRESHOLD[:K] to read --vector's direction at LAYER (K default 4).")] = None,
    monitor: Annotated[list[Path] | None, typer.Option("--monitor", help="A probe file: print each generated "
                                                       "token's score on it (repeat for several).")] = None,
) -> None:
    """Generate a continuation of each prompt, optionally steered by a vector (greedy unless --sample)."""
    from actkit.compress.experts.scores import parse_experts
    from actkit.core.generate import generate
    from actkit.core.positions import parse_positions
    from actkit.evaluate.protocol import tuned_settings
    from actkit.models import load
    from actkit.monitor.cli import monitored_generation
    from actkit.sae.cli import check_generate_options, generate_writes
    from actkit.steer import restrict_layers, steering_writes
    from actkit.steer.lineas import is_lineas_file, load_lineas

    with bad_input():
        check_generate_options(vector, sae, feature, clamp, layers)
        if vector is None and not dynamic and sae is None:
            for name, given in (("--coef", coef is not None), ("--relative", relative), ("--layers", layers),
                                ("--compare", compare)):
                if given:
                    raise ActkitError(f"{name} needs --vector")
        if not sample:
            for name, value in (("--temperature", temperature), ("--top-p", top_p), ("--seed", seed)):
                if value is not None:
                    raise ActkitError(f"{name} needs --sample (decoding is greedy otherwise)")
        if max_new_tokens < 1:
            raise ActkitError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
        if temperature is not None and not 0 < temperature < math.inf:
            raise ActkitError(f"--temperature must be a positive number (got {temperature})")
        if top_p is not None and not 0 < top_p <= 1:
            raise ActkitError(f"--top-p must lie in (0, 1] (got {top_p})")
        strength = 1.0 if coef is None else coef
        if not math.isfinite(strength):
            raise ActkitError(f"--coef must be a finite number (got {coef})")
        parse_positions(positions)
        off = parse_experts(experts_off) if experts_off is not None else None
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        writes = None
        steer: Any = None
        if vector is not None and is_lineas_file(vector):  # a LinEAS file: --coef is its strength
            if relative:
                raise ActkitError("--relative applies to steering vectors; a LinEAS file's --coef is its strength")
            steer = load_lineas(vector, loaded)
            writes = steer.to_intervention(strength, positions=positions,
                                           layers=None if layers is None else parse_layers(layers))
        elif vector is not None:
            steer, _ = _read_vector(vector, loaded)
            if coef is None and (tuned := tuned_settings(steer.metadata)) is not None:
                strength, relative = tuned[0], relative or tuned[1]  # `actkit vector tune` chose them
            try:
                steer = restrict_layers(steer, None if layers is None else parse_layers(layers))
            except ActkitError as error:
                raise ActkitError(f"--layers {layers}: {error}") from None
            writes = steering_writes(steer, strength, relative=relative, positions=positions)
        if sae is not None and feature is not None:
            writes = generate_writes(loaded, sae, feature, strength, clamp=clamp, relative=relative,
                                     positions=positions)
        options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample, chat=chat,
                                       temperature=1.0 if temperature is None else temperature,
                                       top_p=1.0 if top_p is None else top_p, seed=seed)
        extra: dict[str, Any] = {}
        with _experts_off(loaded, off), _activation_sparsity(loaded, tokenizer, activation_sparsity, len(prompt)):
            if monitor and (dynamic or backtrack is not None):
                raise ActkitError("--monitor reads plain or --vector/--sae steered generation; it does not combine "
                                  "with --dynamic or --backtrack yet")
            if monitor:  # per-token probe scores: actkit.monitor
                return monitored_generation(loaded, tokenizer, prompt, monitor, writes, options, as_json,
                                            {"model": model, "vector": vector and str(vector), "compare": compare})
            if dynamic or backtrack is not None:
                completions, extra = _adaptive(loaded, tokenizer, prompt, steer, dynamic, backtrack, coef,
                                               relative, options)
            else:
                completions = generate(loaded, tokenizer, prompt, writes=writes, **options)
            plain = generate(loaded, tokenizer, prompt, **options) if compare else None
    settings = {"model": model, "experts_off": experts_off, "activation_sparsity": activation_sparsity,
                "vector": None if vector is None else str(vector),
                "sae": None if sae is None else str(sae), "feature": feature, "clamp": clamp,
                "coef": None if vector is None and sae is None else strength, "relative": relative,
                "layers": None if steer is None else steer.layers, "positions": positions,
                "max_new_tokens": max_new_tokens, "sample": sample, "chat": chat}
    if as_json:
        for i, (p, c) in enumerate(zip(prompt, completions, strict=True)):
            row: dict[str, Any] = {"prompt": p, "completion": c, **{k: v[i] for k, v in extra.items()}}
            if plain is not None:
                row["unsteered"] = plain[i]
            typer.echo(json.dumps({**row, **settings}))
        return
    console = stdout()
    for i, (p, c) in enumerate(zip(prompt, completions, strict=True)):
        if plain is None:
            console.print(Text.assemble((p, "bold"), c))
        else:
            console.print(Text(p, style="bold"))
            console.print(Text.assemble(("  unsteered: ", "dim"), plain[i].strip()))
            console.print(Text.assemble((f"  steered ({strength:g}): ", "dim"), c.strip()))


def _adaptive(model: Any, tokenizer: Any, prompts: list[str], steer: Any, dynamic: list[Path] | None,
              backtrack: str | None, coef: float | None, relative: bool,
              options: dict[str, Any]) -> tuple[list[str], dict[str, list[Any]]]:
    """``--dynamic`` and ``--backtrack`` of ``actkit generate``: texts, and per prompt what the method reports."""
    from actkit.steer.backtrack import ProbeLike, backtrack_generate, vector_probe
    from actkit.steer.dynamic import dynamic_generate

    run = {k: options[k] for k in ("max_new_tokens", "chat", "do_sample", "temperature", "seed")}
    if dynamic and backtrack is not None:
        raise ActkitError("--dynamic and --backtrack are separate methods; give one of them")
    if options.get("top_p", 1.0) != 1.0:
        raise ActkitError("--top-p is not supported with --dynamic or --backtrack")
    if dynamic:
        vectors = ([steer] if steer is not None else []) + [_read_vector(p, model)[0] for p in dynamic]
        composed = dynamic_generate(model, tokenizer, prompts, vectors, alpha_max=2.0 if coef is None else coef,
                                    relative=relative, **run)
        return composed.texts, {"alphas": composed.alphas}
    assert backtrack is not None
    if steer is None:
        raise ActkitError("--backtrack needs --vector: the steering applied after a backtrack")
    parts = backtrack.split(":")
    k = 4
    probe: ProbeLike
    if Path(backtrack).is_file():
        from actkit.monitor import load_probe

        probe, when = load_probe(backtrack, model), cast(Literal["above", "below"], "above")
    elif len(parts) in (3, 4) and parts[1] in ("above", "below"):
        try:
            layer, threshold = int(parts[0]), float(parts[2])
            k = int(parts[3]) if len(parts) == 4 else k
        except ValueError:
            raise ActkitError(f"--backtrack {backtrack!r}: LAYER and K must be integers, THRESHOLD a number") from None
        probe, when = vector_probe(steer, layer, threshold), cast(Literal["above", "below"], parts[1])
    else:
        raise ActkitError(f"--backtrack {backtrack!r}: give a probe file or LAYER:above|below:THRESHOLD[:K]")
    result = backtrack_generate(model, tokenizer, prompts, probe, steer, coef=1.0 if coef is None else coef,
                                relative=relative, k=k, when=when, **run)
    return result.texts, {"backtracks": result.backtracks}


def _activation_sparsity(model: Any, tokenizer: Any, spec: str | None, rows: int) -> Any:
    """``--activation-sparsity`` of ``actkit generate``: a context that sparsifies the model (or does nothing)."""
    from contextlib import nullcontext

    if spec is None:
        return nullcontext()
    from actkit.compress.activation import ActivationSparsity, prepare_activation_sparsity
    from actkit.compress.calibration import DEFAULT_DOCUMENTS
    from actkit.compress.cli import calibration_from
    from actkit.compress.sparse_decode import sparsity_for

    teal = ActivationSparsity.parse(spec).method == "teal"
    calibration = calibration_from(None, DEFAULT_DOCUMENTS, 0) if teal else None
    return sparsity_for(model, prepare_activation_sparsity(model, tokenizer, spec, calibration=calibration), rows)



def _experts_off(model: Any, off: list[tuple[int, int]] | None) -> Any:
    """``--experts-off`` of ``actkit generate``: a context that switches MoE experts off (or does nothing)."""
    from contextlib import nullcontext

    if off is None:
        return nullcontext()
    from actkit.compress.experts.switch import switch_experts

    return switch_experts(model, off=off)

__all__ = ["DATA_DIR", "generate_command", "pairs_path", "parse_layers", "vector_app"]
