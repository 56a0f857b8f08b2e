"""Function vectors (Todd et al., 2024): the task a few in-context examples show, as one vector that triggers it
zero-shot.

Given input-output examples of a task (antonyms, country -> capital ...), written ``"{x}: {y}\\n"`` one after the
other and ending with a query ``"{x}:"``:

1. **mean head outputs**: every attention head's output (its slice of the core's ``attn_hidden`` site, the output
   projection's input) at the query's last token, averaged over in-context prompts;
2. **causal effect** (the paper's average indirect effect): on prompts whose demonstrations have their outputs
   shuffled (so the task is no longer shown), each head's slice at the last token is patched with its mean from
   step 1, one head per row of a batch (the batching of `actkit.localize.patching`), and the effect is the rise
   in the probability of the query's correct first answer token, averaged over prompts;
3. **the vector**: the heads with the largest effects; each one's mean slice is sent through the output projection
   alone (its contribution to the residual stream) and the contributions are summed;
4. **use**: added to the residual stream (``resid_post.{layer}``) at the last token of a zero-shot prompt
   ``"{x}:"``, with the core's `Add` intervention.

`zero_shot_accuracy` measures the top-1 accuracy of the first answer token with and without the vector.
"""

from __future__ import annotations

import copy
import inspect
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.collect import collect
from actkit.core.hooks import Capture, tap
from actkit.core.interventions import Add, Intervention
from actkit.core.positions import All, Last, StepContext
from actkit.core.sites import Site
from actkit.core.stats import Mean
from actkit.errors import ActkitError
from actkit.localize.patching import core_site, head_count

#: How one demonstration and the query are written.
TEMPLATE = "{x}: {y}\n"
QUERY = "{x}:"
#: The shipped tasks (``data/fv-NAME.jsonl``, 40 examples each).
TASKS = ("antonyms", "capitals")


@dataclass
class FunctionVector:
    """A task's function vector and how it was found.

    Attributes:
        vector: (d,) float32, the sum of the chosen heads' mean contributions to the residual stream.
        layer: the block after which it is added (``resid_post.{layer}``) at the last prompt token.
        heads: the chosen (layer, head) pairs, largest effect first.
        effects: (layers, heads) float64, each head's average indirect effect (probability of the answer).
        metadata: JSON-ready facts (shots, prompts, task size...).
    """

    vector: torch.Tensor
    layer: int
    heads: list[tuple[int, int]]
    effects: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def writes(self, coef: float = 1.0) -> dict[str, Intervention]:
        """The write that adds the vector at the last prompt token of each row, for `tap` or `generate`."""
        return {f"resid_post.{self.layer}": Add(self.vector, coef, positions=Last())}


def icl_prompt(demos: Sequence[tuple[str, str]], query: str) -> str:
    """Demonstrations written with `TEMPLATE`, then the query with `QUERY`."""
    return "".join(TEMPLATE.format(x=x, y=y) for x, y in demos) + QUERY.format(x=query)


def read_task(task: str) -> list[tuple[str, str]]:
    """The (input, output) examples of a shipped task (`TASKS`) or of a JSONL file of {"input", "output"} lines."""
    path = Path(__file__).parent / "data" / f"fv-{task}.jsonl" if task in TASKS else Path(task)
    if not path.is_file():
        raise ActkitError(f"task {task!r} is neither a shipped task ({', '.join(TASKS)}) nor a file; give one of "
                          "those names or a JSONL file of {\"input\", \"output\"} lines")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append((str(item["input"]), str(item["output"])))
        except (ValueError, KeyError, TypeError):
            raise ActkitError(f"{path}:{number}: expected a JSON object with \"input\" and \"output\"") from None
    return pairs


def _check_pairs(pairs: Sequence[tuple[str, str]], shots: int) -> None:
    if shots < 1:
        raise ActkitError(f"shots must be at least 1, got {shots}")
    if len(pairs) < shots + 2:
        raise ActkitError(f"a task needs at least shots + 2 = {shots + 2} examples (got {len(pairs)}): the "
                          "demonstrations, a query, and another output to shuffle in")
    for x, y in pairs:
        if not str(x).strip() or not str(y).strip():
            raise ActkitError(f"an example has an empty input or output: {(x, y)!r}")


def _prompts(pairs: Sequence[tuple[str, str]], shots: int, n: int, seed: int,
             shuffled: bool) -> list[tuple[str, str]]:
    """n (prompt, answer) in-context prompts; `shuffled`: the demonstrations' outputs permuted (a derangement)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chosen = rng.sample(list(pairs), shots + 1)
        demos, (qx, qy) = chosen[:shots], chosen[shots]
        if shuffled:
            ys = [y for _, y in demos]
            order = list(range(shots))
            while shots > 1 and any(i == j for i, j in enumerate(order)):
                rng.shuffle(order)
            demos = [(x, ys[j]) for (x, _), j in zip(demos, order, strict=True)]
        out.append((icl_prompt(demos, qx), qy))
    return out


def first_token(tokenizer: Any, output: str) -> int:
    """The first token id of an output as it follows ``"x:"`` (a space, then the output)."""
    ids = list(tokenizer(" " + output.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ActkitError(f"the output {output!r} tokenizes to nothing")
    return int(ids[0])


def _ids(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor([list(tokenizer(text)["input_ids"])])


def _last_probs(model: nn.Module, ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
    """Next-token probabilities after `ids`; with `cache` (of every token but the last) only the last is run."""
    device = next(model.parameters()).device
    if cache is None:
        return torch.softmax(model(input_ids=ids.to(device)).logits[:, -1].float(), dim=-1)
    copied = copy.deepcopy(cache) if ids.shape[0] == 1 else cache
    logits = model(input_ids=ids[:, -1:].to(device), use_cache=True, **{_cache_name(model): copied}).logits
    return torch.softmax(logits[:, -1].float(), dim=-1)


def _cache_name(model: nn.Module) -> str:
    """The forward's keyword for a KV cache (transformers 5 renames ``past_key_values`` to ``cache``)."""
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


class _PatchHead(Intervention):
    """Row r gets head ``heads[r]``'s slice replaced by its mean (rows with -1 are left alone); the pass it is
    used in holds the last token alone."""

    def __init__(self, heads: torch.Tensor, mean: torch.Tensor, width: int):
        super().__init__(All())
        self.heads = heads
        self.mean = mean
        self.width = width

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        out = x.clone()
        for row, head in enumerate(self.heads.tolist()):
            if head >= 0:
                cols = slice(head * self.width, (head + 1) * self.width)
                out[row, :, cols] = self.mean[cols].to(x.dtype)
        return out


def function_vector(model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, shots: int = 5,
                    prompts: int = 16, top: int = 10, layer: int | None = None, seed: int = 0,
                    batch_size: int = 64) -> FunctionVector:
    """Find a task's function vector from input-output examples (see the module docstring).

    Arguments:
        model: a causal language model of a family in the anatomy.
        tokenizer: its tokenizer.
        pairs: (input, output) examples of the task; the answer token is the first token of ``" " + output``.
        shots: demonstrations per in-context prompt.
        prompts: in-context prompts for the means, and as many shuffled ones for the effects.
        top: heads summed into the vector (at most all of them).
        layer: the block after which the vector is added (default: a third of the way in, as in the paper).
        seed: the draw of demonstrations and of the shuffles.
        batch_size: patched rows per forward pass.

    Returns:
        `FunctionVector`.

    Raises:
        ActkitError: too few examples, a bad `top`, `layer` or `prompts`.
    """
    _check_pairs(pairs, shots)
    if prompts < 1:
        raise ActkitError(f"prompts must be at least 1, got {prompts}")
    anatomy = Anatomy.of(model)
    n_layers, n_heads = anatomy.n_layers, head_count(model)
    if not 1 <= top <= n_layers * n_heads:
        raise ActkitError(f"top must lie in 1..{n_layers * n_heads} (the model's heads), got {top}")
    layer = n_layers // 3 if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ActkitError(f"layer must lie in 0..{n_layers - 1}, got {layer}")
    sites = [core_site("heads", i) for i in range(n_layers)]
    clean = _prompts(pairs, shots, prompts, seed, shuffled=False)
    corrupt = _prompts(pairs, shots, prompts, seed + 1, shuffled=True)
    sums: list[torch.Tensor] = []
    with torch.no_grad():
        for text, _ in clean:
            caps = {s: Capture() for s in sites}
            with tap(model, read=caps):
                model(input_ids=_ids(tokenizer, text).to(next(model.parameters()).device))
            values = [caps[s].last[0, -1].double().cpu() for s in sites]
            sums = values if not sums else [a + b for a, b in zip(sums, values, strict=True)]
    means = [s / len(clean) for s in sums]
    width = int(means[0].shape[0]) // n_heads
    effects = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    patches = [(i, j) for i in range(n_layers) for j in range(n_heads)]
    with torch.no_grad():
        for text, answer in corrupt:
            effects += _effects(model, _ids(tokenizer, text), first_token(tokenizer, answer), sites, means, width,
                                patches, batch_size)
    effects /= len(corrupt)
    order = torch.argsort(effects.reshape(-1), descending=True)[:top].tolist()
    chosen = [(k // n_heads, k % n_heads) for k in order]
    vector = _contribution(model, anatomy, chosen, means, width)
    return FunctionVector(vector, layer, chosen, effects,
                          {"method": "function-vector", "shots": shots, "prompts": prompts, "top": top,
                           "seed": seed, "examples": len(pairs), "template": TEMPLATE})


def _effects(model: nn.Module, ids: torch.Tensor, target: int, sites: list[str], means: list[torch.Tensor],
             width: int, patches: list[tuple[int, int]], batch_size: int) -> torch.Tensor:
    """Each head's rise in the target's probability when its last-token slice is set to its mean, on one prompt.

    The tokens before the last are run once; every patched row continues from a copy of that cache with the last
    token alone, so a sweep over all heads costs one token per head, not one prompt.
    """
    device = next(model.parameters()).device
    ids = ids.to(device)
    prefix = model(input_ids=ids[:, :-1], use_cache=True)
    cache = getattr(prefix, "cache", None) or prefix.past_key_values
    base = float(_last_probs(model, ids, cache)[0, target])
    out = torch.zeros(len(sites), len(means[0]) // width, dtype=torch.float64)
    for first in range(0, len(patches), batch_size):
        chunk = patches[first:first + batch_size]
        writes = {}
        for i in sorted({i for i, _ in chunk}):
            heads = torch.tensor([j if li == i else -1 for li, j in chunk])
            writes[sites[i]] = _PatchHead(heads, means[i].float(), width)
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(chunk))
        with tap(model, write=writes):
            probs = _last_probs(model, ids.expand(len(chunk), -1), rows)[:, target]
        for row, (i, j) in enumerate(chunk):
            out[i, j] = float(probs[row]) - base
    return out


def _contribution(model: nn.Module, anatomy: Anatomy, heads: list[tuple[int, int]], means: list[torch.Tensor],
                  width: int) -> torch.Tensor:
    """Sum over `heads` of what the output projection makes of the head's mean slice alone (bias removed)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    total = None
    with torch.no_grad():
        for i, j in heads:
            proj = anatomy.point(Site.parse(core_site("heads", i))).module
            alone = torch.zeros_like(means[i])
            alone[j * width:(j + 1) * width] = means[i][j * width:(j + 1) * width]
            zero = torch.zeros_like(alone)
            part = (proj(alone[None].to(device, dtype)) - proj(zero[None].to(device, dtype)))[0].double().cpu()
            total = part if total is None else total + part
    assert total is not None
    return total.float()


def zero_shot_accuracy(model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                       fv: FunctionVector | None = None, *, coef: float = 1.0) -> float:
    """Top-1 accuracy of the first answer token on zero-shot prompts ``"{x}:"``, with `fv` added or without."""
    if not pairs:
        raise ActkitError("no examples to measure")
    hits = 0
    with torch.no_grad(), tap(model, write=fv.writes(coef) if fv is not None else {}):
        for x, y in pairs:
            text = QUERY.format(x=x)
            probs = _last_probs(model, _ids(tokenizer, text))
            hits += int(int(probs[0].argmax()) == first_token(tokenizer, y))
    return hits / len(pairs)


def icl_accuracy(model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, shots: int = 5,
                 prompts: int = 32, seed: int = 0) -> float:
    """Top-1 accuracy of the first answer token on in-context prompts (the ceiling a function vector aims at)."""
    _check_pairs(pairs, shots)
    hits = 0
    with torch.no_grad():
        for text, y in _prompts(pairs, shots, prompts, seed, shuffled=False):
            hits += int(int(_last_probs(model, _ids(tokenizer, text))[0].argmax()) == first_token(tokenizer, y))
    return hits / prompts


def mean_last(model: nn.Module, tokenizer: Any, texts: Sequence[str], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The mean last-token residual stream (``resid_post.{layer}``) over `texts`, at each of `layers` (the core's
    `collect` with a `Mean` at the last token)."""
    if not texts:
        raise ActkitError("no texts to average")
    sites = {layer: str(Site.parse(f"resid_post.{layer}")) for layer in layers}
    found = collect(model, list(texts), list(sites.values()), {"mean": Mean}, tokenizer=tokenizer, positions=Last())
    return {layer: found[site]["mean"].result()["mean"].float() for layer, site in sites.items()}


def task_vector(model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], layers: Sequence[int], *,
                shots: int = 5, prompts: int = 16, seed: int = 0) -> dict[int, torch.Tensor]:
    """The mean-difference task vector (Hendel et al.'s sense) at each of `layers`: the mean last-token activation
    of in-context prompts (drawn as `function_vector` draws them, same seed) minus that of the zero-shot prompts
    ``"{x}:"`` of every example. The mean-difference baseline a function vector is compared with."""
    _check_pairs(pairs, shots)
    if prompts < 1:
        raise ActkitError(f"prompts must be at least 1, got {prompts}")
    icl = mean_last(model, tokenizer, [text for text, _ in _prompts(pairs, shots, prompts, seed, shuffled=False)],
                    layers)
    zero = mean_last(model, tokenizer, [QUERY.format(x=x) for x, _ in pairs], layers)
    return {layer: icl[layer] - zero[layer] for layer in layers}


__all__ = ["QUERY", "TASKS", "TEMPLATE", "FunctionVector", "function_vector", "icl_accuracy", "icl_prompt",
           "mean_last", "read_task", "task_vector", "zero_shot_accuracy"]
