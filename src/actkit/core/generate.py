"""Generate text under interventions: one batched, left-padded `model.generate` inside a fresh `tap`.

Prompts run in batches of `batch_size` rows (all at once by default). Left padding keeps every row's last prompt token in the last column, which is where a KV-cache decode continues
from; the hook engine turns the attention mask into absolute positions, so ``Generated()`` and ``From(k)`` steer
the same tokens in every row whatever its padding. Greedy decoding is the default, so steered and unsteered runs
are comparable token by token; sampling is seeded on a private generator state when `seed` is given.

Two kinds of nonsense are caught rather than returned: a prompt that does not fit the model's context together
with the tokens to generate is an error, and a generation whose next-token scores turn NaN, infinite or flat
(what an intervention too strong for the model's arithmetic produces: the text comes back empty or as one
repeated token) gives a warning that names the rows and the likely cause.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.hooks import tap
from actkit.errors import ActkitError


def prompt_token_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """The token ids `generate` feeds for `prompt` (with the chat template's user turn when `chat`)."""
    if not chat:
        return list(tokenizer(prompt)["input_ids"])
    template = getattr(tokenizer, "apply_chat_template", None)
    if template is None or not getattr(tokenizer, "chat_template", None):
        raise ActkitError("chat=True needs a tokenizer with a chat template; this tokenizer has none")
    text = template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template holds the special tokens


def eos_ids(model: nn.Module, eos_token_id: int | Sequence[int] | None) -> set[int]:
    """The ids generation stops at (given, or the model's generation config's), so the cut matches the stop."""
    eos: Any = eos_token_id if eos_token_id is not None else getattr(
        getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def position_limit(model: nn.Module) -> int | None:
    """The most positions the model takes (its config's ``max_position_embeddings`` or ``n_positions``)."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _Degeneration:
    """A logits processor that leaves the scores alone and marks the rows whose scores are NaN, +inf or flat.

    The marks stay on the device (no synchronization per step); `rows` reads them once after generation.
    """

    def __init__(self) -> None:
        self.marked: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        bad = (torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1)
               | (scores.amax(-1) == scores.amin(-1)))
        self.marked = bad if self.marked is None else self.marked | bad
        return scores

    def rows(self) -> list[int]:
        return [] if self.marked is None else torch.nonzero(self.marked).reshape(-1).tolist()


def _warn_degenerate(rows: list[int], steered: bool, dtype: torch.dtype) -> None:
    cause = ("the interventions push the activations beyond what the model's arithmetic can hold: lower the "
             "coefficient (or use a relative one) or check the vector's norm" if steered else
             f"the model's {dtype} arithmetic overflows even without interventions: load it in float32")
    warnings.warn(f"generation degenerated in prompt(s) {rows}: the next-token scores became NaN, infinite or all "
                  f"equal, so that text is meaningless (often empty or one repeated token); {cause}",
                  UserWarning, stacklevel=3)


def prompt_rows(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                chat: bool) -> list[list[int]]:
    """Each prompt's token ids, checked: a list of prompts, each non-empty, each fitting the model's context
    together with `max_new_tokens` (what every generation loop must refuse before it starts)."""
    if isinstance(prompts, str):
        raise ActkitError("prompts must be a list of strings, not one string")
    if not prompts:
        raise ActkitError("no prompts given")
    if max_new_tokens < 1:
        raise ActkitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    rows = [prompt_token_ids(tokenizer, p, chat) for p in prompts]
    limit = position_limit(model)
    for i, ids in enumerate(rows):
        if not ids:
            raise ActkitError(f"prompt {i} is empty after tokenization")
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise ActkitError(
                f"prompt {i} is {len(ids)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(ids) + max_new_tokens} positions, but the model's context is {limit} tokens: shorten the "
                f"prompt to at most {limit - max_new_tokens} tokens or generate fewer tokens"
                if max_new_tokens < limit else
                f"max_new_tokens={max_new_tokens} does not fit the model's context of {limit} tokens with any prompt")
    return rows


def generate_ids(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    writes: Mapping[str, Any] | None = None,
    reads: Mapping[str, Any] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
    batch_size: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> list[list[int]]:
    """Like `generate`, but returns the generated token ids of each prompt, cut before the first EOS.

    `reads` (site -> sink, as ``tap(read=...)`` takes) see every pass of the generation: the prefill and each
    KV-cache decode step; their context's ``documents`` is each row's index in `prompts` (across batches), and its
    ``positions`` count real tokens, so a sink can place each value at (prompt, position) whatever the padding.
    """
    if batch_size is not None and batch_size < 1:
        raise ActkitError(f"batch_size must be at least 1, got {batch_size}")
    rows = prompt_rows(model, tokenizer, prompts, max_new_tokens, chat)
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = eos_ids(model, eos_token_id)
    if pad is None:
        pad = min(eos) if eos else getattr(tokenizer, "eos_token_id", None) or 0
    device = next(model.parameters()).device
    config: Any = copy.deepcopy(getattr(model, "generation_config", None))
    if config is None:
        raise ActkitError(f"{type(model).__name__} cannot generate text (it has no generation config)")
    runner: Any = model
    config.max_new_tokens = max_new_tokens
    config.do_sample = do_sample
    config.pad_token_id = int(pad)
    if eos_token_id is not None:
        config.eos_token_id = sorted(eos)
    config.temperature = temperature if do_sample else None
    config.top_p = top_p if do_sample else None
    if not do_sample:
        config.top_k = None
    step = batch_size or len(rows)
    result: list[list[int]] = []
    degenerate: list[int] = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for first in range(0, len(rows), step):
            chunk = rows[first:first + step]
            width = max(len(r) for r in chunk)
            input_ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, ids in enumerate(chunk):
                input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[r, width - len(ids):] = 1
            watch = _Degeneration()
            with torch.inference_mode(), tap(model, read=reads or {}, write=writes or {}) as state:
                state.documents = torch.arange(first, first + len(chunk), device=device)
                out = runner.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     generation_config=config, logits_processor=[watch])
            degenerate += [first + r for r in watch.rows()]
            for row in out[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos), len(row))
                result.append(row[:cut])
    if degenerate:
        _warn_degenerate(degenerate, bool(writes), next(model.parameters()).dtype)
    return result


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    writes: Mapping[str, Any] | None = None,
    reads: Mapping[str, Any] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
    batch_size: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> list[str]:
    """Generate a continuation of each prompt, steered by `writes`, in one batch.

    Arguments:
        model: a causal language model.
        tokenizer: its tokenizer (needs ``decode``; ``apply_chat_template`` when `chat`).
        prompts: the prompts.
        writes: site -> intervention(s), e.g. ``vector.to_intervention(coef=4)`` or `combine` of several; None
            for the plain model. A fresh `tap` is opened for this call only.
        reads: site -> sink(s) that see the prefill and every decode step, at no extra forward pass (see
            `generate_ids`; `actkit.monitor` scores each token on probes this way).
        max_new_tokens: tokens to generate at most per prompt.
        do_sample: sample instead of greedy decoding.
        temperature, top_p: sampling parameters (ignored when greedy).
        seed: seed for sampling; the global random state is left as it was.
        chat: wrap each prompt as a user turn with the tokenizer's chat template.
        batch_size: prompts per `model.generate` call (None: all at once); each batch is padded to its own
            longest prompt.
        eos_token_id: the token id(s) that end a row (None: the model's generation config's).

    Returns:
        The generated text of each prompt (without the prompt), cut at the first end-of-sequence token.

    Raises:
        ActkitError: for bad arguments, and for a prompt that does not fit the model's context
            (``max_position_embeddings``) together with `max_new_tokens`. A row whose next-token scores turn NaN,
            infinite or flat (an intervention too strong) gives a `UserWarning` naming the rows.
    """
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        raise ActkitError(f"{type(tokenizer).__name__} cannot decode token ids; give the model's tokenizer")
    ids = generate_ids(model, tokenizer, prompts, writes=writes, reads=reads, max_new_tokens=max_new_tokens,
                       do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed, chat=chat,
                       batch_size=batch_size, eos_token_id=eos_token_id)
    return [decode(row, skip_special_tokens=True) for row in ids]


__all__ = ["eos_ids", "generate", "generate_ids", "position_limit", "prompt_token_ids"]
