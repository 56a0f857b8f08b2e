"""Generate text under interventions: one batched, left-padded `model.generate` inside a fresh `tap`.

Left padding keeps every row's last prompt token in the last column, which is where a KV-cache decode continues
from; the hook engine turns the attention mask into absolute positions, so ``Generated()`` and ``From(k)`` steer
the same tokens in every row whatever its padding. Greedy decoding is the default, so steered and unsteered runs
are comparable token by token; sampling is seeded on a private generator state when `seed` is given.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.hooks import tap
from actkit.errors import ActkitError


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if not chat:
        return list(tokenizer(prompt)["input_ids"])
    template = getattr(tokenizer, "apply_chat_template", None)
    if template is None or not getattr(tokenizer, "chat_template", None):
        raise ActkitError("chat=True needs a tokenizer with a chat template; this tokenizer has none")
    text = template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template holds the special tokens


def _eos_ids(model: nn.Module) -> set[int]:
    """The ids `model.generate` stops at (its generation config's), so the cut matches the stop."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def generate_ids(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    writes: Mapping[str, Any] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
) -> list[list[int]]:
    """Like `generate`, but returns the generated token ids of each prompt, cut before the first EOS."""
    if isinstance(prompts, str):
        raise ActkitError("prompts must be a list of strings, not one string")
    if not prompts:
        raise ActkitError("no prompts given")
    if max_new_tokens < 1:
        raise ActkitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    rows = [_prompt_ids(tokenizer, p, chat) for p in prompts]
    for i, ids in enumerate(rows):
        if not ids:
            raise ActkitError(f"prompt {i} is empty after tokenization")
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = _eos_ids(model)
    if pad is None:
        pad = min(eos) if eos else getattr(tokenizer, "eos_token_id", None) or 0
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[r, width - len(ids):] = 1
    config: Any = copy.deepcopy(getattr(model, "generation_config", None))
    if config is None:
        raise ActkitError(f"{type(model).__name__} cannot generate text (it has no generation config)")
    runner: Any = model
    config.max_new_tokens = max_new_tokens
    config.do_sample = do_sample
    config.pad_token_id = int(pad)
    config.temperature = temperature if do_sample else None
    config.top_p = top_p if do_sample else None
    if not do_sample:
        config.top_k = None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode(), tap(model, write=writes or {}):
            out = runner.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 generation_config=config)
    result: list[list[int]] = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    writes: Mapping[str, Any] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
) -> list[str]:
    """Generate a continuation of each prompt, steered by `writes`, in one batch.

    Arguments:
        model: a causal language model.
        tokenizer: its tokenizer (needs ``decode``; ``apply_chat_template`` when `chat`).
        prompts: the prompts.
        writes: site -> intervention(s), e.g. ``vector.to_intervention(coef=4)`` or `combine` of several; None
            for the plain model. A fresh `tap` is opened for this call only.
        max_new_tokens: tokens to generate at most per prompt.
        do_sample: sample instead of greedy decoding.
        temperature, top_p: sampling parameters (ignored when greedy).
        seed: seed for sampling; the global random state is left as it was.
        chat: wrap each prompt as a user turn with the tokenizer's chat template.

    Returns:
        The generated text of each prompt (without the prompt), cut at the first end-of-sequence token.
    """
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        raise ActkitError(f"{type(tokenizer).__name__} cannot decode token ids; give the model's tokenizer")
    ids = generate_ids(model, tokenizer, prompts, writes=writes, max_new_tokens=max_new_tokens,
                       do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed, chat=chat)
    return [decode(row, skip_special_tokens=True) for row in ids]


__all__ = ["generate", "generate_ids"]
