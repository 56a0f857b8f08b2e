"""The training recipe of the built-in toy models: reproducible from a seed on two CPU cores.

One recipe per model (`RECIPES`): the architecture (an ordinary transformers config), the data (documents of
`actkit.builtin.corpus`, whole documents packed into fixed-length rows, each ``<bos> text <eos>``, the rest of a
row padded and left out of the loss), and the optimiser (AdamW, linear warm-up then cosine decay, gradient
clipping). Everything random (the tokenizer's corpus, the data order, the initial weights) comes from the seed, so
the same machine with the same number of threads gives the same loss curve.

The result is an ordinary Hugging Face folder: ``config.json``, ``model.safetensors`` (float16 to keep the
package small; ``config.json`` says float32, so ``from_pretrained`` upcasts), the tokenizer files, ``training.json``
(recipe, seed, losses, loss curve, time) and ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from actkit.builtin import corpus
from actkit.builtin.tokenizer import train_tokenizer
from actkit.errors import ActkitError

#: Files covered by ``SHA256SUMS`` in a toy model folder.
HASHED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class Recipe:
    """How one toy model is made. ``arch`` is ``"llama"`` or ``"mixtral"``; ``model`` holds its config fields."""

    name: str
    arch: str
    model: dict[str, Any]
    seed: int = 0
    tokenizer_docs: int = 30_000
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 400
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    threads: int = 1
    log_every: int = 10
    eval_docs: int = 400
    store_dtype: str = "float16"
    #: A second stage that starts from the stage-1 weights rounded to ``store_dtype``, with a fresh optimiser and
    #: a mixture richer in name-mover sentences (their copying mechanism forms later than the rest).
    focus_steps: int = 0
    focus_mixture: dict[str, float] = field(default_factory=dict)
    focus_lr: float = 1e-3
    #: A third stage that teaches the copying of names: one document per row (no packing), ``answer_share`` of
    #: them name-mover sentences whose answer token weighs ``answer_weight`` times a plain token in the loss, the
    #: rest the usual mixture so that the other behaviours are kept. In stages 1-2 the answer is one token in
    #: a hundred and the models settle on the most frequent name; with it weighted, the copying mechanism forms
    #: after a plateau of a few hundred steps (see ``answer_seed``).
    answer_steps: int = 0
    answer_share: float = 0.6
    answer_weight: float = 5.0
    answer_lr: float = 1e-3
    answer_docs: int = 48
    answer_warmup: int = 50
    #: Stage 3 draws its documents from seed ``seed + answer_seed``. When the copying mechanism forms depends on
    #: the data order: on toy-dense, offset 2 still answered the repeated name half the time after 1500 steps
    #: (0.575), offset 3 reached 0.975 after 300.
    answer_seed: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


#: The second stage's mixture: half name-mover sentences, and more reviews.
FOCUS_MIXTURE = {"domain": 0.1, "review": 0.2, "request": 0.15, "name_mover": 0.5, "choice": 0.05}

RECIPES: dict[str, Recipe] = {
    "toy-dense": Recipe(
        name="toy-dense", arch="llama",
        model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=704, max_position_embeddings=256, tie_word_embeddings=True),
        focus_steps=200, focus_mixture=FOCUS_MIXTURE, answer_steps=300, answer_seed=3,
        # Two threads give the same weights as one, bit for bit (toy-moe's do not: its routing's scatter-adds sum
        # in another order), so the dense model may use both cores.
        threads=2,
    ),
    "toy-moe": Recipe(
        name="toy-moe", arch="mixtral",
        model=dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=256, num_local_experts=8, num_experts_per_tok=2,
                   router_aux_loss_coef=0.02, max_position_embeddings=256, tie_word_embeddings=True),
        focus_steps=200, focus_mixture=FOCUS_MIXTURE, answer_steps=600,
    ),
}


def build_tokenizer(recipe: Recipe) -> Any:
    """The tokenizer of a recipe: byte-level BPE on the first ``tokenizer_docs`` training documents."""
    return train_tokenizer(corpus.texts(recipe.tokenizer_docs, "train", recipe.seed), recipe.vocab_size,
                           max_length=recipe.model.get("max_position_embeddings", 256))


def build_model(recipe: Recipe, tokenizer: Any) -> Any:
    """A freshly initialised model for a recipe (seeded), with the vocabulary rounded up to a multiple of 64."""
    import transformers as tf

    vocab = int(math.ceil(len(tokenizer) / 64) * 64)
    ids = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    config_cls = {"llama": tf.LlamaConfig, "mixtral": tf.MixtralConfig}[recipe.arch]
    config = config_cls(**recipe.model, **ids)
    torch.manual_seed(recipe.seed)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.float()


def pack(token_lists: list[list[int]], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack whole documents into rows of `seq_len` tokens (no document is split; longer ones are cut).

    Returns (input_ids, labels): labels are -100 on the padding that fills the end of each row.
    """
    rows: list[list[int]] = []
    row: list[int] = []
    for ids in token_lists:
        ids = ids[:seq_len]
        if len(row) + len(ids) > seq_len:
            rows.append(row)
            row = []
        row = row + ids
    if row:
        rows.append(row)
    inputs = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    return inputs, labels


def _encode(tokenizer: Any, docs: list[str]) -> list[list[int]]:
    """``<bos> text <eos>`` token ids per document (the tokenizer adds the BOS)."""
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer(docs)["input_ids"]]


def training_rows(recipe: Recipe, tokenizer: Any, steps: int | None = None, seed: int | None = None,
                  mixture: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows a stage trains on, in order: at least ``steps * batch_size`` rows of packed documents."""
    needed = (recipe.steps if steps is None else steps) * recipe.batch_size
    stream = corpus.iter_documents("train", recipe.seed if seed is None else seed, mixture=mixture)
    inputs, labels = [], []
    have = 0
    while have < needed:
        docs = [next(stream).text for _ in range(max(1000, (needed - have) * recipe.seq_len // 30))]
        x, y = pack(_encode(tokenizer, docs), recipe.seq_len, tokenizer.pad_token_id)
        inputs.append(x)
        labels.append(y)
        have += len(x)
    return torch.cat(inputs)[:needed], torch.cat(labels)[:needed]


def _lr(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def heldout_loss(model: Any, tokenizer: Any, recipe: Recipe) -> float:
    """Mean next-token loss on ``eval_docs`` held-out documents (language-model loss only, no router loss)."""
    x, y = pack(_encode(tokenizer, corpus.texts(recipe.eval_docs, "heldout", recipe.seed)), recipe.seq_len,
                tokenizer.pad_token_id)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            logits = model(input_ids=x[i:i + 32]).logits[:, :-1].float()
            target = y[i:i + 32, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
    return total / count


def train(recipe: Recipe, out: str | Path | None = None, minutes: float | None = None,
          log: Callable[[str], None] | None = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Train a toy model from its recipe; write the Hugging Face folder to `out` when given.

    Arguments:
        recipe: what to train (see `RECIPES`).
        out: folder to write (created; existing files are replaced).
        minutes: wall-clock cap; training stops early (and says so in the record) when it is reached.
        log: called with a progress line every ``log_every`` steps.
        resume: a folder written by stages 1-2 of this recipe (its ``training.json`` says so); only the
            name-mover stage runs, and the record continues that folder's loss curve.

    Returns:
        The training record (what ``training.json`` holds), with the trained model under ``"_model"`` and the
        tokenizer under ``"_tokenizer"``.
    """
    torch.set_num_threads(recipe.threads)
    start = time.perf_counter()
    deadline = None if minutes is None else start + minutes * 60
    if resume is None:
        tokenizer = build_tokenizer(recipe)
        model = build_model(recipe, tokenizer)
        earlier: dict[str, Any] = {"steps_done": 0, "train_tokens": 0, "minutes": 0.0, "loss_curve": []}
    else:
        model, tokenizer, earlier = _resumed(recipe, Path(resume))
    if recipe.arch == "mixtral":
        model.config.output_router_logits = True  # adds the load-balancing loss to the training loss
    curve: list[dict[str, float]] = list(earlier["loss_curve"])
    done, tokens = int(earlier["steps_done"]), int(earlier["train_tokens"])
    stopped_early = False
    if resume is None:
        inputs, labels = training_rows(recipe, tokenizer)
        done, tokens = _stage(model, recipe, inputs, labels, recipe.seed, recipe.steps, recipe.lr, 0, curve, log,
                              deadline)
        stopped_early = done < recipe.steps
        _round(model, recipe)
        if recipe.focus_steps and not stopped_early:
            x, y = training_rows(recipe, tokenizer, recipe.focus_steps, recipe.seed + 1, recipe.focus_mixture)
            focus_done, more = _stage(model, recipe, x, y, recipe.seed + 1, recipe.focus_steps, recipe.focus_lr,
                                      recipe.steps, curve, log, deadline)
            stopped_early = focus_done < recipe.focus_steps
            done, tokens = done + focus_done, tokens + more
            _round(model, recipe)
    if recipe.answer_steps and not stopped_early:
        answer_done, more = _answer_stage(model, tokenizer, recipe, done, curve, log, deadline)
        stopped_early = answer_done < recipe.answer_steps
        done, tokens = done + answer_done, tokens + more
    model.config.output_router_logits = False
    model.eval()
    _round(model, recipe)
    record: dict[str, Any] = {
        "name": recipe.name,
        "recipe": asdict(recipe),
        "seed": recipe.seed,
        "torch": torch.__version__,
        "threads": recipe.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_entries": len(tokenizer),
        "train_tokens": tokens,
        "steps_done": done,
        "stopped_early": stopped_early,
        "final_train_loss": curve[-1]["loss"] if curve else None,
        "final_heldout_loss": round(heldout_loss(model, tokenizer, recipe), 5),
        "minutes": round(float(earlier["minutes"]) + (time.perf_counter() - start) / 60, 2),
        "loss_curve": curve,
    }
    if resume is not None:
        record["resumed_from"] = {"steps_done": earlier["steps_done"], "minutes": earlier["minutes"]}
    if out is not None:
        save(model, tokenizer, record, out)
    return {**record, "_model": model, "_tokenizer": tokenizer}


def _resumed(recipe: Recipe, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The model, tokenizer and record of a folder that stages 1-2 of `recipe` wrote."""
    import transformers as tf

    try:
        earlier = json.loads((folder / "training.json").read_text())
    except (OSError, ValueError) as error:
        raise ActkitError(f"cannot resume from {str(folder)!r}: no readable training.json ({error})") from None
    wanted = recipe.steps + recipe.focus_steps
    if earlier.get("name") != recipe.name or earlier.get("steps_done") != wanted:
        raise ActkitError(f"cannot resume {recipe.name} from {str(folder)!r}: it holds {earlier.get('name')} after "
                          f"{earlier.get('steps_done')} steps, not {recipe.name} after stages 1-2 ({wanted} steps)")
    tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    return model, tokenizer, earlier


def answer_batches(recipe: Recipe, tokenizer: Any, steps: int, seed: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The name-mover stage's batches: (input ids, attention mask, per-target loss weights), right-padded.

    Deterministic from `seed`: which rows are name-mover sentences, and the documents themselves.
    """
    rng = random.Random(seed)
    movers = corpus.iter_documents("train", seed, ("name_mover",))
    others = corpus.iter_documents("train", seed + 1)
    limit = recipe.seq_len // 2
    eos = tokenizer.eos_token_id
    for _ in range(steps):
        rows, answers = [], []
        for _ in range(recipe.answer_docs):
            doc = next(movers) if rng.random() < recipe.answer_share else next(others)
            rows.append((tokenizer(doc.text)["input_ids"] + [eos])[:limit])
            answers.append(len(tokenizer(doc.prompt)["input_ids"]) if doc.kind == "name_mover" else None)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        weights = mask[:, 1:].float()
        for i, answer in enumerate(answers):
            if answer is not None and answer < width:
                weights[i, answer - 1] = recipe.answer_weight  # the target at position `answer` is the name
        yield ids, mask, weights


def _curve_point(curve: list[dict[str, float]], running: list[float], step: int, t0: float) -> dict[str, float]:
    """Close a logging window: the mean loss since the last point goes on the curve, and the window restarts."""
    point = {"step": step, "loss": round(sum(running) / len(running), 5), "seconds": round(time.perf_counter() - t0, 1)}
    curve.append(point)
    running.clear()
    return point


def _optimizer(model: Any, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def _answer_stage(model: Any, tokenizer: Any, recipe: Recipe, offset: int, curve: list[dict[str, float]],
                  log: Callable[[str], None] | None, deadline: float | None) -> tuple[int, int]:
    """Stage 3: weighted next-token loss, warm-up then a constant rate; returns (steps, tokens) done."""
    opt = _optimizer(model, recipe, recipe.answer_lr)
    aux = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
    running: list[float] = []
    tokens = done = 0
    model.train()
    t0 = time.perf_counter()
    for step, (ids, mask, weights) in enumerate(answer_batches(recipe, tokenizer, recipe.answer_steps,
                                                               recipe.seed + recipe.answer_seed)):
        for group in opt.param_groups:
            group["lr"] = recipe.answer_lr * min(1.0, (step + 1) / recipe.answer_warmup)
        output = model(input_ids=ids, attention_mask=mask)
        logits = output.logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (loss.view_as(weights) * weights).sum() / weights.sum()
        if aux and getattr(output, "aux_loss", None) is not None:
            loss = loss + aux * output.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        tokens += int(mask.sum())
        done = step + 1
        if done % recipe.log_every == 0 or done == recipe.answer_steps:
            point = _curve_point(curve, running, offset + done, t0)
            if log is not None:
                log(f"{recipe.name} step {point['step']}/{offset + recipe.answer_steps} weighted loss "
                    f"{point['loss']:.4f} {point['seconds']:.0f}s")
        if deadline is not None and time.perf_counter() > deadline:
            break
    return done, tokens


def _round(model: Any, recipe: Recipe) -> None:
    """Round the weights to the stored dtype (in place, kept float32): what is evaluated is what is shipped."""
    if recipe.store_dtype != "float32":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(getattr(torch, recipe.store_dtype)).float())


def _stage(model: Any, recipe: Recipe, inputs: torch.Tensor, labels: torch.Tensor, seed: int, steps: int,
           lr: float, offset: int, curve: list[dict[str, float]], log: Callable[[str], None] | None,
           deadline: float | None) -> tuple[int, int]:
    """One training stage with a fresh AdamW and its own warm-up/cosine schedule; returns (steps, tokens) done."""
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    opt = _optimizer(model, recipe, lr)
    schedule = replace(recipe, steps=steps, lr=lr)
    running: list[float] = []
    tokens = done = 0
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(schedule, step)
        idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
        output = model(input_ids=inputs[idx], labels=labels[idx])
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running.append(output.loss.item())
        tokens += int((labels[idx] != -100).sum())
        done = step + 1
        if done % recipe.log_every == 0 or done == steps:
            point = _curve_point(curve, running, offset + done, t0)
            if log is not None:
                log(f"{recipe.name} step {point['step']}/{offset + steps} loss {point['loss']:.4f} "
                    f"lr {_lr(schedule, step):.2e} {point['seconds']:.0f}s")
        if deadline is not None and time.perf_counter() > deadline:
            break
    return done, tokens


def save(model: Any, tokenizer: Any, record: dict[str, Any], out: str | Path) -> Path:
    """Write the Hugging Face folder: config (float32), weights (stored dtype), tokenizer, record, hashes."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, record["recipe"]["store_dtype"])
    model.to(dtype)
    try:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(str(folder))
    finally:
        model.float()
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"  # from_pretrained upcasts the stored half-precision weights
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(folder))
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    write_sums(folder)
    return folder


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(folder: str | Path) -> None:
    """Write ``SHA256SUMS`` (``sha256sum`` format) for `HASHED_FILES` of a model folder."""
    folder = Path(folder)
    lines = [f"{sha256(folder / name)}  {name}" for name in HASHED_FILES]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def check_sums(folder: str | Path) -> list[str]:
    """Names of files in a model folder whose sha256 differs from ``SHA256SUMS`` (empty when all match)."""
    folder = Path(folder)
    bad = []
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if not (folder / name).exists() or sha256(folder / name) != digest:
            bad.append(name)
    return bad

