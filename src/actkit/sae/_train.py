"""Training a top-k SAE on a site, streaming: each batch of `token_batches` is run through the model, its
activations at the site train the SAE for one step, and are dropped; memory does not grow with the tokens.

The recipe is Gao et al. (2024), "Scaling and evaluating sparse autoencoders": a pre-bias ``b_dec`` (started at the
mean activation of the first batch) subtracted before the encoder, top-k of the ReLU, decoder rows kept at unit
norm (the gradient's component along each row is removed before the Adam step, the rows renormalized after it),
the encoder started as the decoder's transpose, and the AuxK loss (the top ``k_aux`` latents among those dead for a
while reconstruct the residual error, weight 1/32) that keeps latents from dying. The loss is the mean squared
error normalized by the variance of the first batch, so 1 - loss is about the fraction of variance explained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.collect import collect, context_length, token_batches
from actkit.core.hooks import Read, tap
from actkit.core.positions import From, StepContext
from actkit.errors import ActkitError
from actkit.sae._model import SparseAutoencoder, check_k, unit_rows
from actkit.steer.vectors import model_metadata

#: The AuxK loss's weight (Gao et al.: 1/32).
AUX_WEIGHT = 1 / 32


def _site(model: nn.Module, site: str) -> str:
    sites = Anatomy.of(model).expand(site)
    if len(sites) != 1:
        raise ActkitError(f"give one site to train an SAE on, not a pattern ({site!r} matches {len(sites)} sites)")
    return str(sites[0])


def train_sae(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Iterable[str],
    site: str,
    *,
    n_features: int,
    k: int,
    max_tokens: int | None = None,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float | None = None,
    dead_tokens: int | None = None,
    seed: int = 0,
    max_length: int | None = None,
    skip_first: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Train a top-k SAE on the activations of `model` at `site` over `texts`.

    Arguments:
        model: the model (not changed).
        tokenizer: its tokenizer.
        texts: training documents (batched by `token_batches`, `collect`'s rules); a list for several epochs.
        site: one site, such as ``resid_post.2``.
        n_features: the dictionary size.
        k: features kept per token (1 <= k <= n_features).
        max_tokens: stop each epoch after this many tokens (None: all the texts).
        epochs: passes over `texts`.
        batch_size: documents per forward pass; one Adam step per batch.
        lr: Adam's learning rate (default Gao et al.'s ``2e-4 / sqrt(n_features / 2**14)``).
        dead_tokens: a latent that has not fired for this many tokens is dead for the AuxK loss (default: a fifth of
            the tokens of an epoch, at least 2,000 and at most 1,000,000).
        seed: seeds the initialization.
        max_length: cap on tokens per row (default the model's context).
        skip_first: leave out each row's first token. In many models (SmolLM2 among them) its activation is
            massive, tens of times the others' norm, and would take the loss, the mean norm and most features
            (SAELens leaves out BOS tokens for the same reason); recorded in the metadata, and `evaluate_sae` then
            leaves it out too.
        log: called after each step with ``{"step", "tokens", "loss", "dead"}``.

    Returns:
        (the SAE, a report: ``tokens``, ``steps``, ``seconds``, ``first_loss``, ``last_loss`` (normalized MSE of the
        first and last 10% of steps), ``dead_fraction`` at the end).
    """
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ActkitError(f"the number of features must be a positive integer (got {n_features})")
    check_k(k, n_features)
    if epochs < 1:
        raise ActkitError(f"epochs must be at least 1 (got {epochs})")
    if epochs > 1 and not isinstance(texts, Sequence):
        raise ActkitError("several epochs need the texts as a list (an iterator can be read once)")
    if max_tokens is not None and max_tokens <= 0:
        raise ActkitError(f"max_tokens must be a positive number of tokens (got {max_tokens})")
    name = _site(model, site)
    device = next(model.parameters()).device
    limit = min(context_length(model, tokenizer), max_length or 10**9)
    generator = torch.Generator().manual_seed(seed)
    rows: list[torch.Tensor] = []

    def grab(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        keep = mask & (ctx.positions > 0) if skip_first else mask
        rows.append(x.detach()[keep].to(torch.float32))

    params: dict[str, torch.Tensor] = {}
    optimizer: torch.optim.Optimizer | None = None
    scale = 1.0
    d_in = 0
    last_fired = torch.zeros(0)
    dead_after = 0
    tokens = steps = 0
    losses: list[float] = []
    norm_sum = 0.0
    start = time.perf_counter()
    with tap(model, read={name: [Read(grab)]}) as state:
        for _ in range(epochs):
            for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, max_tokens=max_tokens):
                state.reset()
                with torch.no_grad():
                    model(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device), use_cache=False)
                x = torch.cat(rows).to("cpu")
                rows.clear()
                if not bool(torch.isfinite(x).all()):
                    raise ActkitError(f"NaN or inf at site {name}: the model overflows there; try --dtype float32")
                if not params:
                    d_in = x.shape[-1]
                    params, scale = _init(x, n_features, generator)
                    optimizer = torch.optim.Adam(params.values(), lr=lr or 2e-4 / math.sqrt(n_features / 2**14),
                                                 betas=(0.9, 0.999), eps=6.25e-10)
                    last_fired = torch.zeros(n_features, dtype=torch.long)
                    dead_after = dead_tokens or int(min(max(2000, (max_tokens or 10**9) // 5), 1_000_000))
                assert optimizer is not None
                loss, fired = _step(params, optimizer, x, k, scale, last_fired >= dead_after, d_in)
                last_fired += x.shape[0]
                last_fired[fired] = 0
                tokens += x.shape[0]
                norm_sum += float(x.norm(dim=-1).sum())
                steps += 1
                losses.append(loss)
                if log is not None:
                    log({"step": steps, "tokens": tokens, "loss": loss,
                         "dead": int((last_fired >= dead_after).sum())})
    if steps == 0:
        raise ActkitError("no tokens to train on: the texts are empty")
    tail = max(1, steps // 10)
    w_enc, b_enc, w_dec, b_dec = (params[n].detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    sae = SparseAutoencoder(w_enc, b_enc, w_dec, b_dec, site=name, k=k, architecture="topk")
    sae.metadata["actkit"] = {
        **model_metadata(model), "trained_tokens": tokens, "epochs": epochs, "seed": seed,
        "mean_norm": norm_sum / tokens, "method": "topk (Gao et al. 2024)", "skip_first": skip_first,
    }
    report = {"tokens": tokens, "steps": steps, "seconds": time.perf_counter() - start,
              "first_loss": sum(losses[:tail]) / tail, "last_loss": sum(losses[-tail:]) / tail,
              "dead_fraction": float((last_fired >= dead_after).float().mean())}
    return sae, report


def _init(x: torch.Tensor, n_features: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
    """Parameters for the first batch `x`, and the scale the loss is divided by (its mean squared deviation)."""
    d_in = x.shape[-1]
    mean = x.mean(0)
    scale = float((x - mean).pow(2).sum(-1).mean()) or 1.0
    w_dec = unit_rows(torch.randn(n_features, d_in, generator=generator))
    params = {"W_enc": w_dec.T.clone().contiguous(), "b_enc": torch.zeros(n_features), "W_dec": w_dec,
              "b_dec": mean.clone()}
    for p in params.values():
        p.requires_grad_(True)
    return params, scale


def _step(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, x: torch.Tensor, k: int, scale: float,
          dead: torch.Tensor, d_in: int) -> tuple[float, torch.Tensor]:
    """One Adam step on `x` (N, d_in); returns the normalized MSE and the latents that fired."""
    w_enc, b_enc, w_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    with torch.enable_grad():
        pre = (x - b_dec) @ w_enc + b_enc
        top = pre.topk(k, dim=-1)
        values = torch.relu(top.values)
        f = torch.zeros_like(pre).scatter(-1, top.indices, values)
        recon = f @ w_dec + b_dec
        error = x - recon
        loss = error.pow(2).sum(-1).mean() / scale
        total = loss
        n_dead = int(dead.sum())
        if n_dead:
            k_aux = min(d_in // 2, n_dead)
            masked = pre.masked_fill(~dead, -math.inf)
            aux = masked.topk(k_aux, dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, aux.indices, torch.relu(aux.values))
            aux_loss = (error.detach() - f_aux @ w_dec).pow(2).sum(-1).mean() / scale
            total = total + AUX_WEIGHT * aux_loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
    with torch.no_grad():
        if w_dec.grad is not None:  # keep the rows on the unit sphere: drop the radial part of the gradient
            w_dec.grad -= (w_dec.grad * w_dec).sum(-1, keepdim=True) * w_dec
        optimizer.step()
        w_dec.copy_(unit_rows(w_dec))
    fired = top.indices[values > 0].unique()
    return float(loss.detach()), fired


class ReconstructionStats:
    """A reducer: how well an SAE reconstructs the activations it reads (for `collect`).

    ``result()``: ``fve`` (fraction of variance explained, 1 - SSE / total squared deviation from the mean),
    ``mse`` (per token, summed over dimensions), ``l0`` (mean active features per token), ``dead_fraction``
    (features that never fired), ``tokens``.
    """

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae
        self.n = 0
        self.sse = 0.0
        self.active = 0
        self.sum = torch.zeros(sae.d_in, dtype=torch.float64)
        self.sq = 0.0
        self.fired = torch.zeros(sae.d_sae, dtype=torch.bool)

    def update(self, x: torch.Tensor, mask: torch.Tensor, where: torch.Tensor | None = None) -> None:
        rows = x.detach()[mask].to("cpu", torch.float32)
        if rows.shape[0] == 0:
            return
        f = self.sae.encode(rows)
        recon = self.sae.decode(f)
        self.sse += float((rows - recon).double().pow(2).sum())
        self.sum += rows.double().sum(0)
        self.sq += float(rows.double().pow(2).sum())
        self.active += int((f != 0).sum())
        self.fired |= (f != 0).any(0)
        self.n += rows.shape[0]

    def merge(self, other: ReconstructionStats) -> ReconstructionStats:
        self.n += other.n
        self.sse += other.sse
        self.active += other.active
        self.sum += other.sum
        self.sq += other.sq
        self.fired |= other.fired
        return self

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise ActkitError("the SAE read no tokens")
        total = self.sq - float(self.sum.pow(2).sum()) / self.n
        return {"fve": 1 - self.sse / total if total > 0 else float("nan"), "mse": self.sse / self.n,
                "l0": self.active / self.n, "dead_fraction": float((~self.fired).float().mean()),
                "tokens": self.n}


def evaluate_sae(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, texts: Sequence[str] | Iterable[str], *,
                 max_tokens: int | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Reconstruction quality of `sae` on `texts` (held out from training): see `ReconstructionStats`.

    Arguments:
        model: the model the SAE reads (checked against the SAE by the caller, or here by the site's width).
        tokenizer: its tokenizer.
        sae: the SAE; one trained with ``skip_first`` is measured without each row's first token too.
        texts: documents.
        max_tokens: read at most this many tokens.
        batch_size: documents per forward pass.
    """
    skip = bool((sae.metadata.get("actkit") or {}).get("skip_first"))
    found = collect(model, texts, sae.site, {"sae": lambda: ReconstructionStats(sae)}, tokenizer=tokenizer,
                    max_tokens=max_tokens, batch_size=batch_size, positions=From(1) if skip else None)
    result: dict[str, Any] = found[sae.site]["sae"].result()
    return result
