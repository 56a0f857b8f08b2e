"""``actkit eval``: evaluation commands, thin over `actkit.evaluate` (``perplexity``, ``steering``, ``task``), and
``actkit vector tune`` (registered under the ``vector`` group by ``actkit.cli``).

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
    ForceOption,
    JsonOption,
    ModelOption,
    bad_input,
    group,
    show_progress,
    stderr,
    stdout,
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


#: The concept of each shipped pairs file: (name, the prompting baseline's instruction, the rules judge's rule).
CONCEPTS: dict[str, tuple[str, str, str]] = {
    "sentiment": ("positive sentiment", "Write in a very positive, enthusiastic tone.", "positive"),
    "toy-sentiment": ("positive sentiment", "Write a glowing 5 stars review.", "positive"),
    "toy-refusal": ("refusing the request", "Refuse the request: say you cannot help.", "refusal"),
    "weddings": ("weddings", "Talk about weddings.", "words:" + ",".join((
        "wedding", "bride", "groom", "marriage", "married", "marry", "ceremony", "vows", "honeymoon",
        "bridesmaid", "engaged", "engagement"))),
}
#: The shipped prompt sets, ``builtin:NAME`` for --prompts.
PROMPT_SETS = ("sentiment", "weddings", "toy-sentiment", "toy-refusal")


def builtin_prompts(spec: str) -> list[str]:
    """The prompts of ``builtin:NAME``: the demo's openings for real models, held-out toy corpus prompts."""
    from actkit.builtin.corpus import eval_set
    from actkit.demo.steering import SENTIMENT_PROMPTS, TOPIC_PROMPTS

    name = spec.removeprefix("builtin:")
    if name == "sentiment":
        return list(SENTIMENT_PROMPTS)
    if name == "weddings":
        return list(TOPIC_PROMPTS)
    if name == "toy-sentiment":
        return ([d.prompt for d in eval_set("review", 8, label="negative")]
                + [d.prompt for d in eval_set("review", 8, label="none")])
    if name == "toy-refusal":
        return [d.prompt for d in eval_set("request", 16, label="benign")]
    raise ActkitError(f"no shipped prompt set {spec!r}; shipped: {', '.join('builtin:' + n for n in PROMPT_SETS)}")


def _concept(pairs: str, name: str | None, instruction: str | None, rule: str | None, judge: str) -> Any:
    """The concept: the shipped pairs' own, with any of its parts replaced by the options."""
    from actkit.evaluate.judges import Concept, check_rule

    known = CONCEPTS.get(pairs.removeprefix("builtin:")) if pairs.startswith("builtin:") else None
    if known is None and (name is None or instruction is None or (rule is None and judge == "rules")):
        raise ActkitError("for a pairs file of your own, say what it steers towards: --concept NAME and "
                          "--instruction TEXT (the prompting baseline), and --rule (positive, refusal or "
                          "words:w1,w2) for the rules judge")
    base = known or (str(name), str(instruction), rule or "")
    concept = Concept(name or base[0], instruction or base[1], rule if rule is not None else base[2])
    if judge == "rules":
        check_rule(concept.rule)
    return concept


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ActkitError(f"{option} {text!r}: give comma-separated numbers such as 0.1,0.2,0.4") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ActkitError(f"{option} {text!r}: give positive numbers such as 0.1,0.2,0.4")
    return values


def _vector_files(specs: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` options as name -> path, checked before any model loads."""
    from actkit.evaluate.protocol import METHODS

    files: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ActkitError(f"--vector {spec!r}: give NAME=FILE, e.g. --vector feature198=sae198.safetensors")
        if name in METHODS or name in files:
            raise ActkitError(f"--vector {spec!r}: the name {name!r} is taken (built-in methods: "
                              f"{', '.join(METHODS)}); choose another")
        if not Path(path).is_file():
            raise ActkitError(f"--vector {spec!r}: {path!r} is not a file; give a vector file (.safetensors)")
        files[name] = Path(path)
    return files


def _evaluation_inputs(pairs: str, prompts: str, layers: str, factors: str, judge: str) -> dict[str, Any]:
    """Read and check everything a steering evaluation needs, before any model runs."""
    from actkit.evaluate.judges import check_judge
    from actkit.evaluate.protocol import read_prompts
    from actkit.steer.cli import parse_layers
    from actkit.steer.pairs import pairs_path, read_pairs

    check_judge(judge)
    grid = _floats(factors, "--factors")
    chosen = None if layers.strip().lower() == "auto" else parse_layers(layers)
    items = read_pairs(pairs_path(pairs))
    texts = builtin_prompts(prompts) if prompts.startswith("builtin:") else read_prompts(prompts)
    return {"pairs": items, "prompts": texts, "layers": chosen, "factors": grid}


def _run_evaluation(model: str, inputs: dict[str, Any], judge: str, judge_model: str | None, dtype: str,
                    device: str, as_json: bool, **options: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model (and MiniLM for the embed judge) and return (model, tokenizer, keyword arguments)."""
    import os

    from actkit.demo.steering import reference_texts
    from actkit.evaluate.judges import Embedder
    from actkit.models import load

    loaded, tokenizer = load(model, dtype=dtype, device=device)
    embedder = Embedder(*load("minilm-l6")) if judge == "embed" else None
    console = stderr()
    kwargs = dict(layers=inputs["layers"], factors=inputs["factors"], judge=judge, embedder=embedder,
                  judge_model=judge_model, api_key=os.environ.get("OPENAI_API_KEY"),
                  reference=reference_texts(model, 16),
                  log=(lambda line: console.print(Text(line, style="dim"), highlight=False))
                  if show_progress(as_json) else None,
                  **options)
    return loaded, tokenizer, kwargs


@eval_app.command("steering")
def steering_command(
    pairs: Annotated[str, typer.Option("--pairs", "-p", help="Contrast pairs (JSONL) or builtin:sentiment, "
                                       "builtin:weddings, builtin:toy-sentiment, builtin:toy-refusal.")],
    prompts: Annotated[str, typer.Option("--prompts", help="Prompts: one per line, or JSONL with a 'prompt' "
                                         "field, or builtin:NAME (the same names as the pairs).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md, results.json and "
                                      "evaluation.png.")],
    model: ModelOption = DEFAULT_MODEL,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: mean-diff, pca-diff, probe, "
                                         "actadd, prompt, random; on request lineas (LinEAS maps at every block, "
                                         "trained on the pairs), dynamic (dynamic composition of mean-diff) and "
                                         "backtrack (mean-diff after a probe fires, FASB): slower.")
                   ] = "mean-diff,pca-diff,probe,actadd,prompt,random",
    vector: Annotated[list[str] | None, typer.Option("--vector", help="NAME=FILE: a vector file of your own as "
                                                     "one more method (e.g. from actkit sae vector), tried at its "
                                                     "blocks and every factor; repeat for more.")] = None,
    layers: Annotated[str, typer.Option("--layers", "-l", help="Candidate blocks: 'auto' (four depths and the "
                                        "layer select_layers ranks first) or indices such as 3,5.")] = "auto",
    factors: Annotated[str, typer.Option("--factors", help="Relative factors tried on the development prompts "
                                         "(fractions of the mean residual norm).")] = "0.05,0.1,0.2,0.4,0.8",
    judge: Annotated[str, typer.Option("--judge", help="rules, embed (MiniLM-L6, offline) or openai:URL (an "
                                       "OpenAI-compatible endpoint, e.g. openai:http://localhost:8000/v1).")
                     ] = "rules",
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Model name for an openai:URL judge "
                                                    "(default: the first the endpoint lists).")] = None,
    concept: Annotated[str | None, typer.Option("--concept", help="What the pairs steer towards, in words "
                                                "(shipped pairs have their own).")] = None,
    instruction: Annotated[str | None, typer.Option("--instruction", help="The prompting baseline's "
                                                    "instruction.")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="The rules judge's concept rule: positive, refusal "
                                             "or words:w1,w2.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the dev/test and pair splits.")] = 0,
    dev_fraction: Annotated[float, typer.Option("--dev-fraction", help="Share of prompts for development.")
                            ] = 0.5,
    kl_budget: Annotated[float | None, typer.Option("--kl-budget", help="Largest development KL (nats/token) a "
                                                    "chosen setting may have.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Greedy tokens per "
                                                "continuation.")] = 24,
    read_position: Annotated[str, typer.Option("--read-position", help="Tokens whose mean gives a pair text's "
                                               "activation: last, all, from:K.")] = "last",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per batch.")] = 16,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Judge steering methods against prompting: layer and factor chosen on dev prompts, scores on test."""
    from actkit.evaluate.protocol import check_methods, evaluate_steering
    from actkit.io import check_writable
    from actkit.report.evaluation import REPORT_FILES, write_evaluation_report
    from actkit.report.steering import environment
    from actkit.steer import load_vector

    with bad_input():
        chosen = check_methods([m.strip() for m in methods.split(",") if m.strip()])
        if max_new_tokens < 1 or batch_size < 1:
            raise ActkitError("--max-new-tokens and --batch-size must be at least 1")
        if kl_budget is not None and not kl_budget > 0:
            raise ActkitError(f"--kl-budget must be a positive number of nats per token (got {kl_budget})")
        inputs = _evaluation_inputs(pairs, prompts, layers, factors, judge)
        what = _concept(pairs, concept, instruction, rule, judge)
        files = _vector_files(vector or [])
        check_writable(out, REPORT_FILES, overwrite=force)
        loaded, tokenizer, kwargs = _run_evaluation(
            model, inputs, judge, judge_model, dtype, device, as_json, seed=seed, dev_fraction=dev_fraction,
            kl_budget=kl_budget, max_new_tokens=max_new_tokens, read_position=read_position, batch_size=batch_size)
        own = {name: load_vector(path, loaded) for name, path in files.items()}
        result = evaluate_steering(loaded, tokenizer, inputs["pairs"], inputs["prompts"], what, methods=chosen,
                                   vectors=own, **kwargs)
        result = {"model": model, "pairs_source": pairs, "prompts_source": prompts, **result,
                  "environment": environment()}
        write_evaluation_report(result, out, overwrite=force)
    if as_json:
        from actkit.io import to_json

        typer.echo(to_json(result))
        return
    console = stdout()
    for m in result["methods"]:
        t = m["test"]
        win = "-" if m["win_rate_vs_prompt"] is None else f"{m['win_rate_vs_prompt']:.2f}"
        ppl = "-" if t["perplexity"] is None else f"{t['perplexity']:.2f}"
        console.print(Text(f"{m['rank']}. {m['method']:<9} layer {m['layer']} factor {m['factor']}: harmonic "
                           f"{t['harmonic']:.3f} (concept {t['concept']:.2f}, instruction {t['instruction']:.2f}, "
                           f"fluency {t['fluency']:.2f}), KL {t['kl']:.3f}, perplexity {ppl}, "
                           f"win vs prompt {win}"), highlight=False)
    console.print(Text(f"wrote {out}/report.md, results.json and the plot; select_layers ranks layer "
                       f"{result['select_layers']['first']} first"), highlight=False)


@eval_app.command("task")
def task_command(
    task: Annotated[str, typer.Option("--task", "-t", help="antonyms, capitals, or a JSONL file of "
                                      "{\"input\", \"output\"} lines.")],
    model: ModelOption = DEFAULT_MODEL,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: function-vector, mean-diff, random, "
                                         "prompt.")] = "function-vector,mean-diff,random,prompt",
    layers: Annotated[str, typer.Option("--layers", "-l", help="Candidate blocks: 'auto' (n/6, n/3, n/2, 2n/3), "
                                        "'all' or indices such as 3,5.")] = "auto",
    coefs: Annotated[str, typer.Option("--coefs", help="Coefficients tried on the dev examples.")] = "1,2,4",
    shots: Annotated[int, typer.Option("--shots", help="Demonstrations per in-context prompt.")] = 5,
    prompts: Annotated[int, typer.Option("--prompts", help="In-context prompts for finding the vectors.")] = 12,
    top: Annotated[int, typer.Option("--top", help="Heads summed into the function vector.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits, the prompts and the random "
                                      "direction.")] = 0,
    dev_fraction: Annotated[float, typer.Option("--dev-fraction", help="Share of the held-out half used for "
                                                "dev.")] = 0.5,
    kl_budget: Annotated[float | None, typer.Option("--kl-budget", help="Largest dev KL (nats) a chosen setting "
                                                    "may have.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the results as JSON to this file.")] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Function vectors, mean-diff and a random direction against prompting on an in-context task: layer and
    coefficient chosen on dev examples, accuracy on test examples."""
    from actkit.core.layers import resolve_layers
    from actkit.evaluate.tasks import TASK_METHODS, evaluate_task
    from actkit.io import check_output_file, to_json, write_text
    from actkit.localize.function_vectors import read_task
    from actkit.models import load
    from actkit.report.steering import environment
    from actkit.steer.cli import parse_layers

    with bad_input():
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in TASK_METHODS]
        if not chosen or unknown:
            raise ActkitError(f"--methods {methods!r}: use some of {', '.join(TASK_METHODS)}")
        grid = _floats(coefs, "--coefs")
        auto = layers.strip().lower() == "auto"
        picked = None if auto else parse_layers(layers)
        examples = read_task(task)
        if out is not None:
            check_output_file(out, overwrite=force)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        console = stderr()
        result = evaluate_task(
            loaded, tokenizer, examples, methods=chosen,
            layers=None if auto else resolve_layers(loaded, picked), coefs=grid, shots=shots, prompts=prompts,
            top=top, seed=seed, dev_fraction=dev_fraction, kl_budget=kl_budget, task=task,
            log=(lambda line: console.print(Text(line, style="dim"), highlight=False))
            if show_progress(as_json) else None)
        result = {"model": model, **result, "environment": environment()}
        if out is not None:
            write_text(out, to_json(result) + "\n", overwrite=force)
    if as_json:
        typer.echo(to_json(result))
        return
    console = stdout()
    split = result["split"]
    console.print(Text(f"{task} on {model}: {split['train']} train / {split['dev']} dev / {split['test']} test "
                       f"examples; unsteered zero-shot test accuracy {result['unsteered']['test']['accuracy']:.2f}"),
                  highlight=False)
    for m in result["methods"]:
        t = m["test"]
        win = "-" if m["win_rate_vs_prompt"] is None else f"{m['win_rate_vs_prompt']:.2f}"
        dev = next(r for r in m["dev"] if r["layer"] == m["layer"] and r["coef"] == m["coef"])
        console.print(Text(f"{m['method']:<15} layer {m['layer']} coef {m['coef']}: dev accuracy "
                           f"{dev['accuracy']:.2f}, test accuracy {t['accuracy']:.2f}, answer prob "
                           f"{t['answer_prob']:.3f}, KL {t['kl']:.3f}, win vs prompt {win}"), highlight=False)
    if out is not None:
        console.print(Text(f"wrote {out}"), highlight=False)


def tune_command(
    pairs: Annotated[str, typer.Option("--pairs", "-p", help="Contrast pairs (JSONL) or builtin:NAME.")],
    prompts: Annotated[str, typer.Option("--prompts", help="Prompts: one per line, JSONL with 'prompt', or "
                                         "builtin:NAME.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The tuned vector file to write (safetensors).")],
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[str, typer.Option("--method", help="mean-diff, pca-diff, probe or actadd.")] = "mean-diff",
    kl_budget: Annotated[float | None, typer.Option("--kl-budget", help="Largest development KL (nats/token) "
                                                    "the chosen setting may have (default: no limit).")] = None,
    layers: Annotated[str, typer.Option("--layers", "-l", help="Candidate blocks: 'auto' or indices such as "
                                        "3,5.")] = "auto",
    factors: Annotated[str, typer.Option("--factors", help="Relative factors tried.")] = "0.05,0.1,0.2,0.4,0.8",
    judge: Annotated[str, typer.Option("--judge", help="rules, embed or openai:URL.")] = "rules",
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Model name for an openai:URL "
                                                    "judge.")] = None,
    concept: Annotated[str | None, typer.Option("--concept", help="What the pairs steer towards.")] = None,
    instruction: Annotated[str | None, typer.Option("--instruction", help="The prompting baseline's "
                                                    "instruction (recorded).")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="positive, refusal or words:w1,w2.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits.")] = 0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Greedy tokens per "
                                                "continuation.")] = 24,
    read_position: Annotated[str, typer.Option("--read-position", help="last, all, from:K.")] = "last",
    force: ForceOption = False,
    as_json: JsonOption = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Choose a vector's layer and coefficient on dev prompts (best score within a KL budget); write it tuned."""
    from actkit.evaluate.protocol import STEERING_METHODS, tune_vector
    from actkit.io import check_output_file
    from actkit.steer import save_vector

    with bad_input():
        if method not in STEERING_METHODS:
            raise ActkitError(f"unknown --method {method!r}; use one of {', '.join(STEERING_METHODS)}")
        if kl_budget is not None and not kl_budget > 0:
            raise ActkitError(f"--kl-budget must be a positive number of nats per token (got {kl_budget})")
        if max_new_tokens < 1:
            raise ActkitError("--max-new-tokens must be at least 1")
        inputs = _evaluation_inputs(pairs, prompts, layers, factors, judge)
        what = _concept(pairs, concept, instruction or concept, rule, judge)
        check_output_file(out, overwrite=force)
        loaded, tokenizer, kwargs = _run_evaluation(model, inputs, judge, judge_model, dtype, device, as_json,
                                                    seed=seed, max_new_tokens=max_new_tokens,
                                                    read_position=read_position)
        vector, result = tune_vector(loaded, tokenizer, inputs["pairs"], inputs["prompts"], what, method=method,
                                     kl_budget=kl_budget, **kwargs)
        save_vector(vector, out, overwrite=force)
    tuned = vector.metadata["tuned"]
    if as_json:
        typer.echo(json.dumps({"out": str(out), "method": method, **tuned,
                               "select_layers_first": result["select_layers"]["first"]}, indent=2))
        return
    dev, test = tuned["dev"], tuned["test"]
    stdout().print(Text(f"wrote {out}: {method} at layer {tuned['layer']}, relative coefficient {tuned['coef']:g} "
                        f"(dev harmonic {dev['harmonic']:.3f}, KL {dev['kl']:.3f}; test harmonic "
                        f"{test['harmonic']:.3f}, KL {test['kl']:.3f}, perplexity {test['perplexity']:.2f}); "
                        f"actkit generate --vector {out} uses these settings"), highlight=False)


__all__ = ["CONCEPTS", "DEFAULT_CONTEXT", "DEFAULT_DOCUMENTS", "PROMPT_SETS", "builtin_prompts", "eval_app",
           "perplexity_command", "steering_command", "task_command", "tune_command"]
