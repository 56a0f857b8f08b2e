"""``actkit sae`` (train, features, vector) and the ``--sae`` options of ``actkit generate``.

Thin over `actkit.sae`. The conventions of ``actkit.cli`` hold: the default model is ``DEFAULT_MODEL``; ``--json``
prints JSON alone on stdout; bad input ends as ``error: <message>`` on stderr with exit status 2; nothing is
overwritten without ``--force``. Without ``--text``, the built-in models read their corpus (training split to
train, held-out split to score), streamed; other models read the built-in English sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
    bad_input,
    group,
    stdout,
)
from actkit.errors import ActkitError
from actkit.io import check_output_folder

sae_app = group("sae", "Sparse autoencoders: train a top-k SAE on a site, score its features (SAELens folders).")

TextOption = Annotated[Path | None, typer.Option("--text", "-t", help="Text, one document per line (default: the "
                                                 "built-in corpus for builtin: models, else a built-in English "
                                                 "sample).")]


def _texts(text: Path | None, model: str, split: str) -> Iterable[str]:
    """The documents a command reads: ``--text``'s lines, the built-in corpus (streamed), or the English sample."""
    from actkit.core.collect import read_texts

    if text is not None:
        return read_texts(text)
    if model.startswith("builtin:"):
        from actkit.builtin.corpus import iter_documents

        return (d.text for d in iter_documents(split))  # type: ignore[arg-type]
    from actkit.observe.default_text import default_texts

    return default_texts()


def parse_features(text: str) -> list[int]:
    """``"3"`` or ``"3,7"`` -> feature indices."""
    try:
        features = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ActkitError(f"--feature {text!r}: give feature indices such as 3 or 3,7") from None
    if not features:
        raise ActkitError("--feature is empty; give feature indices such as 3 or 3,7")
    return features


@sae_app.command("train")
def train_command(
    site: Annotated[str, typer.Option("--site", "-s", help="The site to read, such as resid_post.2.")],
    features: Annotated[int, typer.Option("--features", "-f", help="Dictionary size (number of features).")],
    k: Annotated[int, typer.Option("--k", "-k", help="Features kept per token (top-k).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The SAE folder to write (SAELens format).")],
    model: Annotated[str, typer.Option("--model", "-m", help="The model (default the built-in toy model).")
                     ] = DEFAULT_MODEL,
    tokens: Annotated[int, typer.Option("--tokens", help="Training tokens per epoch.")] = 100_000,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the text (with --text).")] = 1,
    text: TextOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per forward pass (one step each).")
                          ] = 32,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate (default 2e-4 / sqrt(N / 2^14)).")
                  ] = None,
    eval_tokens: Annotated[int, typer.Option("--eval-tokens", help="Held-out tokens the reconstruction is measured "
                                             "on afterwards (0: skip).")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Initialization seed.")] = 0,
    skip_first: Annotated[bool, typer.Option("--skip-first", help="Leave out each row's first token (a massive "
                                             "activation in models such as SmolLM2 would dominate training).")
                          ] = False,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Train a top-k sparse autoencoder on one site, streaming activations, and write it as a SAELens folder."""
    from actkit.models import load
    from actkit.sae import evaluate_sae, save_sae, train_sae
    from actkit.sae._model import check_k

    with bad_input():
        if features < 1:
            raise ActkitError(f"--features must be a positive number of features (got {features})")
        check_k(k, features)
        for name, value in (("--tokens", tokens), ("--batch-size", batch_size), ("--epochs", epochs)):
            if value < 1:
                raise ActkitError(f"{name} must be positive (got {value})")
        if eval_tokens < 0:
            raise ActkitError(f"--eval-tokens must be 0 (skip) or positive (got {eval_tokens})")
        if epochs > 1 and text is None and model.startswith("builtin:"):
            raise ActkitError("--epochs needs --text: the built-in corpus is endless, raise --tokens instead")
        check_output_folder(out, force)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        texts = _texts(text, model, "train")
        if epochs > 1 and not isinstance(texts, list):
            texts = list(texts)
        sae, report = train_sae(loaded, tokenizer, texts, site, n_features=features, k=k, max_tokens=tokens,  # type: ignore[arg-type]
                                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, skip_first=skip_first)
        quality = (evaluate_sae(loaded, tokenizer, sae, _texts(text, model, "heldout"), max_tokens=eval_tokens)
                   if eval_tokens else None)
        if quality is not None:
            sae.metadata["actkit"]["heldout"] = quality
        sae.metadata["actkit"]["training"] = report
        save_sae(sae, out, overwrite=force)
    if as_json:
        typer.echo(json.dumps({"out": str(out), "model": model, "site": sae.site, "features": features, "k": k,
                               "training": report, "heldout": quality}, indent=2))
        return
    line = (f"wrote {out}: {features} features, k={k} at {sae.site} of {model}, {report['tokens']} tokens in "
            f"{report['seconds']:.0f} s; normalized MSE {report['first_loss']:.3f} -> {report['last_loss']:.3f}")
    if quality is not None:
        line += (f"; held out: {quality['fve']:.3f} of the variance explained, L0 {quality['l0']:.1f}, "
                 f"{quality['dead_fraction']:.1%} dead")
    stdout().print(Text(line), highlight=False)


@sae_app.command("features")
def features_command(
    folder: Annotated[Path, typer.Argument(help="An SAE folder (cfg.json + sae_weights.safetensors).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model (default the one the SAE was "
                                              "trained for, when recorded; else the built-in toy model).")] = None,
    text: TextOption = None,
    tokens: Annotated[int, typer.Option("--tokens", help="Tokens read for the input score and frequencies.")
                      ] = 20_000,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Neutral prompt of the output score (default "
                                               "the paper's \"From my experience,\").")] = None,
    top: Annotated[int, typer.Option("--top", help="Logit-lens top tokens per feature (the paper: 20).")] = 20,
    amplify: Annotated[float, typer.Option("--amplify", help="Output score: the feature gains this many times "
                                           "the token's largest feature activation (the paper: 10).")] = 10.0,
    sort: Annotated[str, typer.Option("--sort", help="Order of the table: output, input, frequency or feature.")
                    ] = "output",
    limit: Annotated[int, typer.Option("--limit", help="Rows shown in the table (--json lists all).")] = 20,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Score every feature of an SAE (input and output scores, Arad et al. 2025) and show its top tokens."""
    from actkit.models import load
    from actkit.sae import NEUTRAL_PROMPT, feature_scores, load_sae

    keys = {"output": "output_score", "input": "input_score", "frequency": "frequency", "feature": "feature"}
    with bad_input():
        if sort not in keys:
            raise ActkitError(f"unknown --sort {sort!r}; use one of {', '.join(keys)}")
        for name, value in (("--tokens", tokens), ("--top", top), ("--limit", limit)):
            if value < 1:
                raise ActkitError(f"{name} must be positive (got {value})")
        sae = load_sae(folder)
        spec = model or (sae.metadata.get("actkit") or {}).get("model") or DEFAULT_MODEL
        loaded, tokenizer = load(spec, dtype=dtype, device=device)
        sae = load_sae(folder, loaded)
        rows = feature_scores(loaded, tokenizer, sae, _texts(text, spec, "heldout"), top=top,
                              prompt=prompt or NEUTRAL_PROMPT, amplify=amplify, max_tokens=tokens)
    key = keys[sort]
    rows.sort(key=lambda r: (r[key] is None, -(r[key] or 0) if key != "feature" else r[key]))
    if as_json:
        typer.echo(json.dumps({"sae": str(folder), "model": spec, "site": sae.site, "d_sae": sae.d_sae,
                               "k": sae.k, "prompt": prompt or NEUTRAL_PROMPT, "features": rows}, indent=2))
        return
    table = Table(title=f"{folder}: {sae.d_sae} features at {sae.site} of {spec}, by {sort} score"
                  if sort != "feature" else f"{folder}: {sae.d_sae} features at {sae.site} of {spec}")
    for column in ("feature", "output", "input", "frequency", "top tokens"):
        table.add_column(column, justify="right" if column != "top tokens" else "left")
    for r in rows[:limit]:
        table.add_row(str(r["feature"]), f"{r['output_score']:.3f}",
                      "-" if r["input_score"] is None else f"{r['input_score']:.2f}", f"{r['frequency']:.4f}",
                      " ".join(repr(t) for t in r["top_tokens"]))
    stdout().print(table)


@sae_app.command("vector")
def vector_command(
    folder: Annotated[Path, typer.Argument(help="An SAE folder (cfg.json + sae_weights.safetensors).")],
    feature: Annotated[str, typer.Option("--feature", "-f", help="Feature index, or indices (3,7: their unit "
                                         "decoder rows summed, then normalized).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The vector file to write (.safetensors).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also check that the SAE fits this model.")
                     ] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write features' decoder rows as a steering-vector file: what ``generate --sae DIR --feature I`` adds, for
    ``generate --vector``, ``vector sweep`` and ``actkit serve --vectors`` (clamping needs the SAE itself)."""
    from actkit.io import check_output_file
    from actkit.sae import feature_vector, load_sae
    from actkit.steer import save_vector

    with bad_input():
        check_output_file(out, overwrite=force)
        loaded = None
        if model is not None:
            from actkit.models import load

            loaded, _ = load(model)
        sae = load_sae(folder, loaded)
        vector = feature_vector(sae, parse_features(feature))
        save_vector(vector, out, overwrite=force)
    layer = vector.layers[0]
    summary = {"out": str(out), "sae": str(folder), "features": vector.metadata["features"], "site": sae.site,
               "layers": vector.layers, "relative": "mean_norms" in vector.metadata}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    stdout().print(Text(f"wrote {out}: feature(s) {', '.join(map(str, summary['features']))} of {folder} at "
                        f"{vector.site}.{layer}" + ("" if summary["relative"] else " (no mean norm recorded: "
                                                     "absolute coefficients only)")), highlight=False)


def check_generate_options(vector: Path | None, sae: Path | None, feature: str | None, clamp: bool,
                           layers: str | None) -> None:
    """The ``--sae`` options of ``actkit generate`` that cannot go together (before any model is loaded)."""
    if sae is not None and vector is not None:
        raise ActkitError("give --vector or --sae, not both")
    if sae is None:
        for name, given in (("--feature", feature is not None), ("--clamp", clamp)):
            if given:
                raise ActkitError(f"{name} needs --sae")
        return
    if feature is None:
        raise ActkitError("--sae needs --feature: the feature index (or indices, 3,7) to steer with")
    if layers is not None:
        raise ActkitError("--layers is for --vector; an SAE steers at its own site")
    parse_features(feature)


def generate_writes(model: Any, sae: Path, feature: str, coef: float, *, clamp: bool, relative: bool,
                    positions: str) -> dict[str, Any]:
    """The writes of ``actkit generate --sae DIR --feature I --coef C [--clamp] [--relative]``.

    Without ``--clamp`` the features' unit decoder rows are added at the SAE's site, times C (``--relative``: C is a
    fraction of the mean activation norm the SAE was trained on); with it the features' activations are set to C
    through the SAE, the reconstruction error kept.
    """
    from actkit.sae import load_sae, sae_writes

    loaded = load_sae(sae, model)
    if clamp and relative:
        raise ActkitError("--relative is for adding decoder rows; --clamp sets feature activations to --coef")
    return sae_writes(loaded, parse_features(feature), coef, mode="clamp" if clamp else "add", relative=relative,
                      positions=positions)


__all__ = ["check_generate_options", "generate_writes", "parse_features", "sae_app"]
