"""One loop that runs a model over texts and feeds reducers at sites, in bounded memory.

Text rules: each text is one document; a document longer than the model's context is split into consecutive
chunks of at most that many tokens; special tokens are only those the tokenizer itself adds (a BOS token at the
start of a document, for tokenizers that add one). Batches are right-padded; padding is never read. Memory is
that of one batch plus the reducers, whatever the number of tokens.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.hooks import Read, tap
from actkit.core.positions import All, Positions, StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError


@dataclass
class Collection:
    """What `collect` gathered: ``reducers[site][name]`` and the token and document counts."""

    reducers: dict[str, dict[str, Any]]
    tokens: int
    documents: int
    batches: int
    sites: list[str] = field(default_factory=list)

    def __getitem__(self, site: str) -> dict[str, Any]:
        return self.reducers[str(site)]


@dataclass
class _Chunk:
    ids: list[int]
    document: int
    offset: int


def read_texts(path: str | Path) -> list[str]:
    """Read a text file as documents, one per non-empty line; a missing, unreadable or empty file is an error."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActkitError(f"text file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ActkitError(f"cannot read text file {str(p)!r}: {error}; give a UTF-8 text file") from None
    texts = [line for line in raw.splitlines() if line.strip()]
    if not texts:
        raise ActkitError(f"text file {str(p)!r} is empty: give one document per line")
    return texts


def _strings(texts: Sequence[str] | Iterable[str]) -> Sequence[str] | Iterable[str]:
    """`texts` with every item checked to be a string (an iterator is checked as it is read, so it still streams)."""
    if isinstance(texts, (str, bytes)):
        raise ActkitError(f"texts must be a list of documents, not one {type(texts).__name__}: wrap it as [text]")

    def check(index: int, text: object) -> str:
        if not isinstance(text, str):
            raise ActkitError(f"texts[{index}] is {reprlib.repr(text)} ({type(text).__name__}), not a string: every "
                              "document must be text (decode bytes first; leave out missing entries)")
        return text

    if isinstance(texts, Sequence):
        for index, text in enumerate(texts):
            check(index, text)
        return texts
    return (check(index, text) for index, text in enumerate(texts))


def context_length(model: nn.Module, tokenizer: Any = None) -> int:
    """The longest sequence the model takes: its position limit, or the tokenizer's if smaller."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    limits = [getattr(text, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10**7]
    return min(usable) if usable else 2048


def _chunks(texts: Iterable[str], tokenizer: Any, limit: int) -> Iterator[_Chunk]:
    for doc, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        for start in range(0, len(ids), limit):
            yield _Chunk(list(ids[start:start + limit]), doc, start)


def _heads(texts: Iterable[str], tokenizer: Any, limit: int | None) -> Iterator[_Chunk]:
    for doc, text in enumerate(texts):
        ids = list(tokenizer(text)["input_ids"])
        yield _Chunk(ids[:limit] if limit is not None else ids, doc, 0)


def _batches(chunks: Iterator[_Chunk], batch_size: int, max_tokens: int | None) -> Iterator[list[_Chunk]]:
    batch: list[_Chunk] = []
    seen = 0
    for chunk in chunks:
        if max_tokens is not None:
            room = max_tokens - seen
            if room <= 0:
                break
            chunk.ids = chunk.ids[:room]
        seen += len(chunk.ids)
        batch.append(chunk)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class TokenBatch:
    """One right-padded batch of token ids, as `collect` and every calibration or evaluation loop run it.

    Attributes:
        ids: (B, T) int64 token ids; padding holds the tokenizer's pad id (0 when it has none).
        mask: (B, T) bool, True on real tokens (pass ``mask.long()`` as the attention mask).
        documents: (B,) int64, the index of each row's text in the input.
        offsets: (B,) int64, where each row starts inside its document.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    documents: torch.Tensor
    offsets: torch.Tensor

    @property
    def tokens(self) -> int:
        """The number of real tokens."""
        return int(self.mask.sum())


def token_batches(
    texts: Iterable[str],
    tokenizer: Any,
    *,
    limit: int | None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    split: bool = True,
) -> Iterator[TokenBatch]:
    """Tokenize documents and group them into right-padded batches: the one batch builder of actkit.

    Arguments:
        texts: documents; each is tokenized on its own, with the special tokens the tokenizer adds itself.
        tokenizer: called as ``tokenizer(text)["input_ids"]``; its ``pad_token_id`` pads (0 when None).
        limit: most tokens in a row (None: no limit).
        batch_size: rows per batch.
        max_tokens: stop after this many tokens, cutting the last row to fit (None: everything).
        split: True (`collect`'s rule): a document longer than `limit` is split into consecutive rows and an
            empty document gives no row. False (perplexity's rule): each document is one row, cut to `limit`
            tokens, so row i of batch k is document ``k * batch_size + i``; an empty document is a row of padding.

    Returns:
        An iterator of `TokenBatch`; a batch with no real token is never yielded.
    """
    if batch_size <= 0:
        raise ActkitError(f"batch_size must be positive (got {batch_size})")
    if limit is not None and limit <= 0:
        raise ActkitError(f"the row length limit must be positive (got {limit})")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    rows = _chunks(texts, tokenizer, limit or 10**12) if split else _heads(texts, tokenizer, limit)
    for batch in _batches(rows, batch_size, max_tokens):
        if split:
            batch = [c for c in batch if c.ids]
        width = max((len(c.ids) for c in batch), default=0)
        if width == 0:
            continue
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, chunk in enumerate(batch):
            ids[row, : len(chunk.ids)] = torch.tensor(chunk.ids, dtype=torch.long)
            mask[row, : len(chunk.ids)] = True
        yield TokenBatch(ids, mask, torch.tensor([c.document for c in batch]),
                         torch.tensor([c.offset for c in batch]))


def finite_guard(site: str, where: dict[str, int]) -> Callable[[torch.Tensor, torch.Tensor, StepContext], None]:
    """A read that raises a clear `ActkitError` on NaN or inf at `site` (what `collect(check_finite=True)` adds).

    Arguments:
        site: the site's name, for the message.
        where: ``{"batch": i, "document": j}``, updated by the caller before each batch, for the message.
    """
    def check(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        # a NaN or inf anywhere in a token's vector makes its sum non-finite: one cheap pass, no row copy
        if not bool(torch.isfinite(x.detach().sum(dim=-1, dtype=torch.float32)[mask]).all()):
            raise ActkitError(
                f"NaN or inf at site {site} in batch {where['batch']} (documents starting at "
                f"{where['document']}); the model or its inputs overflow here. Try --dtype float32, or check the "
                "weights of the layers before this site"
            )
    return check


def collect(
    model: nn.Module,
    texts: Sequence[str] | Iterable[str],
    sites: str | Site | Iterable[str | Site],
    reducers: Mapping[str, Callable[[], Any]],
    *,
    tokenizer: Any,
    batch_size: int = 8,
    max_tokens: int | None = None,
    max_length: int | None = None,
    positions: Positions | None = None,
    check_finite: bool = True,
    progress: bool = False,
) -> Collection:
    """Run `model` over `texts` and reduce the activations at `sites`.

    Arguments:
        model: a model of a family in the anatomy.
        texts: documents (see the module docstring for how they are split); `read_texts` reads a file.
        sites: site names or patterns, such as ``"resid_post.*"``.
        reducers: name -> factory; each site gets a fresh reducer from every factory.
        tokenizer: the model's tokenizer.
        batch_size: chunks per forward pass.
        max_tokens: stop after this many tokens (the last chunk is cut to fit); None reads everything.
        max_length: cap on chunk length (default the model's context).
        positions: which tokens feed the reducers (default all).
        check_finite: raise a clear error naming the site and batch on NaN or inf.
        progress: show a progress bar on stderr.

    Returns:
        A `Collection` with ``reducers[site][name]`` and counts.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise ActkitError(f"max_tokens must be a positive number of tokens (got {max_tokens})")
    if batch_size <= 0:
        raise ActkitError(f"batch_size must be positive (got {batch_size})")
    texts = _strings(texts)
    anatomy = Anatomy.of(model)
    resolved = [str(s) for s in anatomy.expand(sites)]
    limit = min(context_length(model, tokenizer), max_length or 10**9)
    device = next(model.parameters()).device
    pos = positions or All()
    made = {site: {name: factory() for name, factory in reducers.items()} for site in resolved}
    where = {"batch": 0, "document": 0}
    reads: dict[str, list[Read]] = {
        site: [Read(r, pos) for r in made[site].values()] + ([Read(finite_guard(site, where))] if check_finite else [])
        for site in resolved
    }
    total_docs = len(texts) if isinstance(texts, Sequence) else None
    tokens = batches = documents = 0
    bar = _progress(progress, total_docs, max_tokens)
    try:
        with torch.inference_mode(), tap(model, read=reads) as state:
            for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, max_tokens=max_tokens):
                state.documents = batch.documents.to(device)
                state.offsets = batch.offsets.to(device)
                where.update(batch=batches, document=int(batch.documents[0]))
                state.reset()
                model(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device), use_cache=False)
                batches += 1
                tokens += batch.tokens
                documents = max(documents, int(batch.documents[-1]) + 1)
                if bar is not None:
                    bar.update(documents, tokens)
    finally:
        if bar is not None:
            bar.close()
    if tokens == 0:
        raise ActkitError("no tokens to read: the texts are empty or shorter than one token")
    return Collection(made, tokens, documents, batches, resolved)


def next_token_nll(
    model: nn.Module,
    texts: Sequence[str] | Iterable[str],
    tokenizer: Any,
    *,
    limit: int | None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    split: bool = True,
    progress: bool = False,
) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) of `model` on `texts`: the one loss of actkit.

    The rows are `token_batches`' (see there for `limit`, `max_tokens` and `split`); every real token that has a
    real successor in its row is scored, in float32, one row at a time (a float32 copy of a whole batch of
    logits can be large), and the sums are added in float64. Runs under any active `tap`, so an edited model is
    scored the same way as a plain one.

    Returns:
        (summed NLL, number of scored tokens); the sum is inf or NaN when the logits overflow.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise ActkitError(f"max_tokens must be a positive number of tokens (got {max_tokens})")
    device = next(model.parameters()).device
    total, count, documents, tokens = 0.0, 0, 0, 0
    bar = _progress(progress, len(texts) if isinstance(texts, Sequence) else None, max_tokens)
    try:
        for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, max_tokens=max_tokens,
                                   split=split):
            ids, mask = batch.ids.to(device), batch.mask.to(device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits
            scored = mask[:, :-1] & mask[:, 1:]
            target = ids[:, 1:].masked_fill(~scored, -100)
            for row in range(ids.shape[0]):
                if bool(scored[row].any()):
                    total += float(F.cross_entropy(logits[row, :-1].float(), target[row], ignore_index=-100,
                                                   reduction="sum"))
            count += int(scored.sum())
            tokens += batch.tokens
            documents = max(documents, int(batch.documents[-1]) + 1)
            if bar is not None:
                bar.update(documents, tokens)
    finally:
        if bar is not None:
            bar.close()
    return total, count


class _Bar:
    """A rich progress bar over documents (or tokens when a budget is set)."""

    def __init__(self, total_docs: int | None, max_tokens: int | None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.by_tokens = max_tokens is not None
        total = max_tokens if self.by_tokens else total_docs
        self.progress = Progress(TextColumn("collect"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), transient=True, console=Console(stderr=True))
        self.task = self.progress.add_task("collect", total=total, info="")
        self.progress.start()

    def update(self, documents: int, tokens: int) -> None:
        done = tokens if self.by_tokens else documents
        self.progress.update(self.task, completed=done, info=f"{tokens} tokens, {documents} documents")

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total_docs: int | None, max_tokens: int | None) -> _Bar | None:
    return _Bar(total_docs, max_tokens) if enabled else None


__all__ = ["Collection", "TokenBatch", "collect", "context_length", "finite_guard", "next_token_nll", "read_texts",
           "token_batches"]
