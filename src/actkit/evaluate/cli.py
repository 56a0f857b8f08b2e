"""``actkit eval``: evaluation commands, thin over `actkit.evaluate` (first: ``perplexity``).

The conventions of ``actkit.cli`` hold: the default model is ``DEFAULT_MODEL``; ``--json`` prints JSON alone on
stdout; bad input ends as ``error: <message>`` on stderr with exit status 2. ``actkit.cli`` imports this module
while it registers its sub-commands, so this module reaches back into it only inside functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from actkit.cli_common import (
    DEFAULT_MODEL,
    DeviceOption,
    DtypeOption,
    JsonOption,
    ModelOption,
    bad_input,
    group,
)
from actkit.errors import ActkitError

#: Context (tokens per document) when --context is not given, capped at the model's own limit.
DEFAULT_CONTEXT = 256
#: Held-out documents of the built-in corpus read when --text is not given.
DEFAULT_DOCUMENTS = 256

eval_app = group("eval", "Evaluate a model: perplexity on held-out text, optionally under activation sparsity.")


@eval_app.command("perplexity")
def perplexity_command(
    model: ModelOption = DEFAULT_MODEL,
    text: Annotated[Path | None, typer.Option("--text", "-t", help="Text file, one document per line (default: "
                                              "the built-in corpus's held-out split).")] = None,
    context: Annotated[int | None, typer.Option("--context", help=f"Tokens per document: longer documents are "
                                                f"cut to this (default {DEFAULT_CONTEXT}, or the model's limit "
                                                "if smaller).")] = None,
    documents: Annotated[int | None, typer.Option("--documents", help=f"Documents to score (default "
                                                  f"{DEFAULT_DOCUMENTS} built-in ones, or every line of "
                                                  "--text).")] = None,
    activation_sparsity: Annotated[str | None, typer.Option(
        "--activation-sparsity", help="Zero small entries of every projection's input: teal:S, wina:S or "
        "wina-code:S with S in [0, 1).")] = None,
    calibration_text: Annotated[Path | None, typer.Option(
        "--calibration-text", help="Text file TEAL calibrates its thresholds on (default: the built-in "
        "corpus's training split; never the evaluated text).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per forward pass.")] = 16,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Perplexity of a model on held-out text at a fixed, stated context, optionally with activation sparsity."""
    from actkit.compress.activation import ActivationSparsity, prepare_activation_sparsity
    from actkit.compress.activation import activation_sparsity as sparsified
    from actkit.compress.calibration import DEFAULT_DOCUMENTS
    from actkit.compress.cli import calibration_from
    from actkit.core.collect import context_length, read_texts
    from actkit.evaluate.perplexity import nll
    from actkit.models import load

    with bad_input():
        if context is not None and context < 2:
            raise ActkitError(f"--context must be at least 2 tokens (one to predict from, one to predict), "
                              f"got {context}")
        if documents is not None and documents <= 0:
            raise ActkitError(f"--documents must be a positive number of documents (got {documents})")
        if batch_size <= 0:
            raise ActkitError(f"--batch-size must be a positive number of documents (got {batch_size})")
        spec = ActivationSparsity.parse(activation_sparsity) if activation_sparsity is not None else None
        if calibration_text is not None and (spec is None or spec.method != "teal"):
            raise ActkitError("--calibration-text is only used by TEAL; give --activation-sparsity teal:S")
        texts = _texts(text, documents, read_texts)
        calibration = calibration_from(calibration_text, DEFAULT_DOCUMENTS, 0) if spec and spec.method == "teal" else None
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        limit = context_length(loaded, tokenizer)
        if context is not None and context > limit:
            raise ActkitError(f"--context {context} is longer than the model's limit of {limit} tokens")
        ctx = context if context is not None else min(DEFAULT_CONTEXT, limit)
        plan = None
        if spec is not None:
            plan = prepare_activation_sparsity(loaded, tokenizer, spec, calibration=calibration, max_length=ctx)
        result: dict[str, Any] = {"model": model, "text": str(text) if text is not None else "builtin:heldout",
                                  "documents": len(texts), "context": ctx}
        if plan is not None:
            with sparsified(loaded, plan) as stats:
                total, count = nll(loaded, tokenizer, texts, batch_size, max_length=ctx)
            result["activation_sparsity"] = str(spec)
            result["achieved_sparsity"] = 0.0 if not plan.rules else stats.overall
            result["calibration"] = plan.calibration
        else:
            total, count = nll(loaded, tokenizer, texts, batch_size, max_length=ctx)
        if count == 0:
            raise ActkitError("no tokens to score: every document is empty or a single token")
    result = {"perplexity": math.exp(total / count), "tokens": count, **result}
    if as_json:
        typer.echo(json.dumps(result))
        return
    line = (f"perplexity {result['perplexity']:.4f} over {count} predicted tokens ({len(texts)} documents of "
            f"{result['text']}, context {ctx}) · model {model}")
    if spec is not None:
        line += f" · activation sparsity {spec} (achieved {result['achieved_sparsity']:.3f})"
    Console(soft_wrap=True).print(Text(line), highlight=False)


def _texts(text: Path | None, documents: int | None, read: Any) -> list[str]:
    """The documents to score: the file's lines, or the built-in held-out split."""
    if text is not None:
        lines: list[str] = read(text)
        return lines[:documents] if documents is not None else lines
    from actkit.builtin import corpus

    return corpus.texts(documents or DEFAULT_DOCUMENTS, split="heldout")


__all__ = ["DEFAULT_CONTEXT", "DEFAULT_DOCUMENTS", "eval_app", "perplexity_command"]
