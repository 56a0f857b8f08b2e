"""One loop that runs a model over texts and feeds reducers at sites, in bounded memory.

Text rules: each text is one document; a document longer than the model's context is split into consecutive
chunks of at most that many tokens; special tokens are only those the tokenizer itself adds (a BOS token at the
start of a document, for tokenizers that add one). Batches are right-padded; padding is never read. Memory is
that of one batch plus the reducers, whatever the number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
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


def _finite_guard(site: str, where: dict[str, int]) -> Callable[[torch.Tensor, torch.Tensor, StepContext], None]:
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
    anatomy = Anatomy.of(model)
    resolved = [str(s) for s in anatomy.expand(sites)]
    limit = min(context_length(model, tokenizer), max_length or 10**9)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    device = next(model.parameters()).device
    pos = positions or All()
    made = {site: {name: factory() for name, factory in reducers.items()} for site in resolved}
    where = {"batch": 0, "document": 0}
    reads: dict[str, list[Read]] = {
        site: [Read(r, pos) for r in made[site].values()] + ([Read(_finite_guard(site, where))] if check_finite else [])
        for site in resolved
    }
    total_docs = len(texts) if isinstance(texts, Sequence) else None
    tokens = batches = documents = 0
    bar = _progress(progress, total_docs, max_tokens)
    try:
        with torch.inference_mode(), tap(model, read=reads) as state:
            for batch in _batches(_chunks(texts, tokenizer, limit), batch_size, max_tokens):
                batch = [c for c in batch if c.ids]
                if not batch:
                    continue
                width = max(len(c.ids) for c in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, chunk in enumerate(batch):
                    ids[row, : len(chunk.ids)] = torch.tensor(chunk.ids)
                    attention[row, : len(chunk.ids)] = 1
                state.documents = torch.tensor([c.document for c in batch], device=device)
                state.offsets = torch.tensor([c.offset for c in batch], device=device)
                where.update(batch=batches, document=batch[0].document)
                state.reset()
                model(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False)
                batches += 1
                tokens += int(attention.sum())
                documents = max(documents, batch[-1].document + 1)
                if bar is not None:
                    bar.update(documents, tokens)
    finally:
        if bar is not None:
            bar.close()
    if tokens == 0:
        raise ActkitError("no tokens to read: the texts are empty or shorter than one token")
    return Collection(made, tokens, documents, batches, resolved)


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


__all__ = ["Collection", "collect", "context_length", "read_texts"]
