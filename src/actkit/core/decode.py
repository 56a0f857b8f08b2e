"""A step-wise decode loop: batched, left-padded, KV-cached, with callbacks that act between steps.

`generate` hands the whole loop to Hugging Face's ``model.generate``, which gives no way to change an
intervention's coefficient between two tokens of one row, to look at the next-token distribution under other
interventions, or to take tokens back. `decode` runs the loop itself, one forward pass per step, inside one `tap`,
and calls each callback with a `Step` after every pass. A callback may

- change the interventions it owns (a per-row coefficient tensor, a per-row start position) and call
  `Step.rerun`, which drops the pass from the KV cache and runs it again: the token is chosen from the logits of
  the latest run (dynamic composition looks at several distributions per step this way);
- call `Step.rollback(row, k)`, which takes the row's last k generated tokens back (steering with backtracking).

Rollback is per row inside one batch. The cache is shared by the rows and only ever grows: a rolled-back row's
discarded tokens stay in it as *holes*, positions whose attention-mask entry is 0, exactly like left padding.
Every pass gives the model explicit ``position_ids`` counted over the row's real tokens (the mask's cumulative
sum), and the hook engine counts positions the same way, so after a rollback the row continues at the right
rotary position and `Positions` rules (``Generated()``, ``From(k)``) select the same tokens as in a row that was
never rolled back. To regenerate from the kept tokens, the last kept token is fed again (its old slot becomes a
hole too), so the first regenerated token comes from a pass that sees the interventions as they are now.

With no callback acting, `decode_ids` returns the same tokens as `actkit.core.generate.generate_ids` (greedy, and
sampling with the same seed: the same temperature, top-k and top-p warpers in Hugging Face's order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.core.generate import eos_ids, prompt_rows
from actkit.core.hooks import tap
from actkit.errors import ActkitError


@dataclass
class Step:
    """What a callback sees after a forward pass of `decode`.

    Attributes:
        index: the number of passes run before this one (0: the prompt's pass).
        logits: (B, V) float32 next-token logits of every row, from the latest run of this pass.
        prompts: the prompt token ids of each row.
        generated: the generated token ids each row keeps so far (all of them fed to the model already).
        finished: (B,) bool, rows that stopped (EOS or length); their logits mean nothing.
        rolled_back: (B,) bool, rows rolled back in this step (no token is chosen for them this step).
    """

    index: int
    logits: torch.Tensor
    prompts: list[list[int]]
    generated: list[list[int]]
    finished: torch.Tensor
    rolled_back: torch.Tensor
    _loop: _Loop = field(repr=False)

    def rerun(self) -> torch.Tensor:
        """Run this step's pass again with the interventions as they are now; returns (and keeps) its logits."""
        self.logits = self._loop.rerun()
        return self.logits

    def rollback(self, row: int, k: int) -> None:
        """Take back the last `k` generated tokens of `row` (all of them if it has fewer) and regenerate from there.

        The last kept token (or the last prompt token) is fed again at the next pass, so its next-token
        distribution is recomputed under the interventions then in place.
        """
        if k < 1:
            raise ActkitError(f"a rollback takes back at least one token, got k={k}")
        if bool(self.finished[row]):
            raise ActkitError(f"row {row} has finished; it cannot be rolled back")
        kept = self.generated[row]
        if not kept:
            raise ActkitError(f"row {row} has generated nothing yet; there is nothing to roll back")
        k = min(k, len(kept))
        self._loop.rollback(row, k)
        del kept[len(kept) - k:]
        self.rolled_back[row] = True


Callback = Callable[[Step], None]


class _Loop:
    """The batch's state: input of the next pass, attention mask over every cache slot, real slots per row."""

    def __init__(self, model: nn.Module, rows: list[list[int]], pad: int, device: torch.device):
        self.model = model
        self.device = device
        width = max(len(r) for r in rows)
        batch = len(rows)
        self.pad = pad
        ids = torch.full((batch, width), pad, dtype=torch.long)
        self.mask = torch.zeros((batch, width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            self.mask[r, width - len(row):] = 1
        self.pending = ids
        self.slots = [list(range(width - len(row), width)) for row in rows]  # cache slot of each real token
        self.cache: Any = None
        names = _parameters(model)
        self.keep_logits = "logits_to_keep" in names
        self.cache_name = "cache" if "cache" in names else "past_key_values"  # transformers renames it in 5.x

    def forward(self) -> torch.Tensor:
        """Run the pending input (appending its slots to the cache) and return the last position's logits."""
        width = int(self.pending.shape[1])
        mask = self.mask
        if self.cache is None:
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        else:
            positions = mask[:, -width:].cumsum(-1) + mask[:, :-width].sum(-1, keepdim=True) - 1
        kwargs: dict[str, Any] = dict(input_ids=self.pending.to(self.device), attention_mask=mask.to(self.device),
                                      position_ids=positions.to(self.device), use_cache=True)
        kwargs[self.cache_name] = self.cache
        if self.keep_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        self.cache = getattr(out, "cache", None) or out.past_key_values
        return out.logits[:, -1].float()

    def rerun(self) -> torch.Tensor:
        width = int(self.pending.shape[1])
        if self.cache is not None and int(self.cache.get_seq_length()) > width:
            self.cache.crop(-width)
        else:
            self.cache = None  # the prompt's pass: start again from an empty cache
        return self.forward()

    def rollback(self, row: int, k: int) -> None:
        """Holes for the row's last k real tokens and for the one before, which is fed again at the next pass."""
        slots = self.slots[row]
        drop = slots[-(k + 1):]  # k <= generated tokens, so this stops at the last prompt token
        self.mask[row, drop] = 0
        del slots[-len(drop):]

    def advance(self, tokens: torch.Tensor, refeed: dict[int, int], finished: torch.Tensor) -> None:
        """Queue one token per row for the next pass: the chosen token, or the token a rolled-back row feeds again.

        A finished row's slot is a hole, so its positions stop where its text ended (other rows may go on longer
        than it could, after their rollbacks).
        """
        column = tokens.clone().cpu()
        for row, token in refeed.items():
            column[row] = token
        slot = int(self.mask.shape[1])
        self.mask = torch.cat([self.mask, (~finished).long().reshape(-1, 1)], dim=1)
        for slots in self.slots:
            slots.append(slot)
        self.pending = column.reshape(-1, 1)


def _parameters(model: nn.Module) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _warpers(model: nn.Module, temperature: float, top_p: float) -> list[Any]:
    """Hugging Face's sampling warpers in its order (temperature, top-k from the generation config, top-p)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
    if top_k:
        out.append(TopKLogitsWarper(int(top_k)))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


def decode_ids(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    writes: Any = None,
    reads: Any = None,
    callbacks: Sequence[Callback] = (),
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
) -> list[list[int]]:
    """Generate in one batch, one forward pass per step, calling `callbacks` after every pass.

    Arguments:
        model: a causal language model of a family in the anatomy.
        tokenizer: its tokenizer (``apply_chat_template`` when `chat`).
        prompts: the prompts (one batch, left-padded).
        writes: site -> intervention(s) for the one `tap` that spans the whole generation; callbacks may change
            the state of the interventions they own between passes.
        reads: site -> reader(s) for that `tap` (a callback's probe reads what each pass feeds).
        callbacks: functions ``fn(step)`` called in order after each pass (see `Step`).
        max_new_tokens: generated tokens each row keeps at most (rolled-back tokens do not count).
        do_sample, temperature, top_p, seed: as in `actkit.core.generate.generate`.
        chat: wrap each prompt as a user turn with the tokenizer's chat template.
        eos_token_id: the token id(s) that end a row (None: the model's generation config's).

    Returns:
        The generated token ids of each prompt, cut before the first EOS.

    Raises:
        ActkitError: for bad arguments and for a prompt that does not fit the model's context.
    """
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ActkitError(f"sampling needs temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}")
    rows = prompt_rows(model, tokenizer, prompts, max_new_tokens, chat)
    if getattr(model, "generation_config", None) is None:
        raise ActkitError(f"{type(model).__name__} cannot generate text (it has no generation config)")
    eos = eos_ids(model, eos_token_id)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = min(eos) if eos else getattr(tokenizer, "eos_token_id", None) or 0
    device = next(model.parameters()).device
    warpers = _warpers(model, temperature, top_p) if do_sample else []
    loop = _Loop(model, rows, int(pad), device)
    batch = len(rows)
    generated: list[list[int]] = [[] for _ in rows]
    finished = torch.zeros(batch, dtype=torch.bool)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode(), tap(model, read=reads or {}, write=writes or {}):
            logits = loop.forward()
            index = 0
            while True:
                step = Step(index, logits, rows, generated, finished, torch.zeros(batch, dtype=torch.bool), loop)
                for callback in callbacks:
                    callback(step)
                tokens = _choose(step.logits, warpers, loop.pending)
                refeed: dict[int, int] = {}
                for r in range(batch):
                    if finished[r]:
                        tokens[r] = int(pad)
                    elif step.rolled_back[r]:
                        kept = rows[r] + generated[r]
                        refeed[r] = kept[len(kept) - 1]
                    else:
                        token = int(tokens[r])
                        if token in eos:
                            finished[r] = True
                        else:
                            generated[r].append(token)
                            finished[r] = len(generated[r]) >= max_new_tokens
                if bool(finished.all()):
                    break
                loop.advance(tokens, refeed, finished)
                logits = loop.forward()
                index += 1
    return [list(g) for g in generated]


def _choose(logits: torch.Tensor, warpers: list[Any], ids: torch.Tensor) -> torch.Tensor:
    if not warpers:
        return logits.argmax(-1).cpu()
    scores = logits
    for warp in warpers:
        scores = warp(ids, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).reshape(-1).cpu()


def decode(model: nn.Module, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> list[str]:
    """`decode_ids`, decoded to text (special tokens skipped); the same arguments."""
    fn = getattr(tokenizer, "decode", None)
    if fn is None:
        raise ActkitError(f"{type(tokenizer).__name__} cannot decode token ids; give the model's tokenizer")
    return [fn(row, skip_special_tokens=True) for row in decode_ids(model, tokenizer, prompts, **kwargs)]


__all__ = ["Callback", "Step", "decode", "decode_ids"]
