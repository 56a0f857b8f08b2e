"""Per-feature input and output scores, as Arad, Mueller and Belinkov (2025), "SAEs Are Good for Steering - If You
Select the Right Features", define them.

Both start from a feature's **top tokens**: its decoder row put through the model's final norm and unembedding
(the logit lens), softmax, the `top` most probable tokens (the paper: 20).

- **Input score**: over the feature's top-activating contexts (the paper: its 100 top activations; a feature with
  fewer than 10 is not scored), the fraction whose most-activating token is one of its top tokens. High: the
  feature fires on the tokens it would write (an input feature).
- **Output score**: on a neutral prompt (the paper: ``"From my experience,"``), amplify the feature at the last
  token by `amplify` (the paper: 10) times that token's largest feature activation, through the SAE with its
  reconstruction error kept, and read the next-token distribution: ``(1 - r / |V|) * p``, with r the best rank
  and p the largest probability among the feature's top tokens. High: steering with the feature makes the model
  say what the feature stands for (an output feature). The paper finds steering works with features of high
  output score, whatever their input score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy, output_head
from actkit.core.collect import context_length, token_batches
from actkit.core.hooks import Read, tap
from actkit.core.positions import Last, StepContext
from actkit.errors import ActkitError
from actkit.sae._model import EncodeEditDecode, FeatureEdit, SparseAutoencoder

#: The paper's neutral prompt for the output score.
NEUTRAL_PROMPT = "From my experience,"
#: Attribute names of a base model's final norm, tried in order (the logit lens applies it before the head).
FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "final_norm")


def _final_norm(model: nn.Module) -> nn.Module:
    root = Anatomy.of(model).root
    for name in FINAL_NORMS:
        module = getattr(root, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ActkitError(f"cannot find the final norm of {type(model).__name__} (tried {', '.join(FINAL_NORMS)} on "
                      "its base model); feature scores need the logit lens")


def logit_lens_tokens(model: nn.Module, sae: SparseAutoencoder, top: int = 20, chunk: int = 256) -> torch.Tensor:
    """Each feature's top tokens: the `top` most probable tokens of its decoder row under the logit lens.

    Arguments:
        model: a causal language model whose residual stream the SAE reads.
        sae: the SAE (its site must be residual-sized: the decoder rows go through the final norm and the head).
        top: tokens per feature.
        chunk: features per matrix product (bounds memory at ``chunk * vocabulary`` floats).

    Returns:
        (d_sae, top) int64 token ids, most probable first.
    """
    head = output_head(model)
    if head is None:
        raise ActkitError(f"{type(model).__name__} has no output head; feature scores need a language model")
    hidden = Anatomy.of(model).hidden_size
    if sae.d_in != hidden:
        raise ActkitError(f"feature scores need an SAE on a residual-sized site (size {hidden}); {sae.site} has size "
                          f"{sae.d_in}")
    norm = _final_norm(model)
    param = next(head.parameters())
    out = []
    with torch.inference_mode():
        for start in range(0, sae.d_sae, chunk):
            rows = sae.W_dec[start:start + chunk].to(param.device, param.dtype)
            logits = head(norm(rows[None]))[0].float()
            out.append(logits.topk(min(top, logits.shape[-1]), dim=-1).indices.cpu())
    return torch.cat(out)


def input_scores(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, texts: Sequence[str] | Iterable[str],
                 top_tokens: torch.Tensor, *, contexts: int = 100, min_contexts: int = 10,
                 max_tokens: int | None = None, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Input scores, streaming over `texts` (each row of `token_batches` is one context).

    Arguments:
        model: the model.
        tokenizer: its tokenizer.
        sae: the SAE.
        texts: documents to find each feature's top-activating contexts in.
        top_tokens: (d_sae, top) from `logit_lens_tokens`.
        contexts: top-activating contexts kept per feature.
        min_contexts: features that fire in fewer contexts get NaN.
        max_tokens: read at most this many tokens.
        batch_size: documents per forward pass.

    Returns:
        ``input_score`` (d_sae,) float (NaN: too few contexts), ``frequency`` (d_sae,) the fraction of tokens a
        feature fires on, ``max_activation`` (d_sae,), ``contexts`` (d_sae,) the number of contexts it fired in.
    """
    device = next(model.parameters()).device
    limit = context_length(model, tokenizer)
    best_val = torch.full((0, sae.d_sae), -math.inf)
    best_tok = torch.zeros((0, sae.d_sae), dtype=torch.long)
    fired_rows = torch.zeros(sae.d_sae, dtype=torch.long)
    active = torch.zeros(sae.d_sae, dtype=torch.long)
    tokens = 0
    seen: list[torch.Tensor] = []

    def grab(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        seen.append(x.detach().to("cpu", torch.float32))

    with torch.inference_mode(), tap(model, read={sae.site: [Read(grab)]}) as state:
        for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, max_tokens=max_tokens):
            state.reset()
            model(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device), use_cache=False)
            f = sae.encode(seen.pop())
            f = f.masked_fill(~batch.mask[..., None], 0.0)
            active += (f > 0).sum((0, 1))
            tokens += batch.tokens
            value, where = f.max(dim=1)  # (B, d_sae): each row's peak and the position of it
            token = batch.ids.gather(1, where)
            value = value.masked_fill(value <= 0, -math.inf)
            fired_rows += (value > -math.inf).sum(0)
            best_val = torch.cat([best_val, value])
            best_tok = torch.cat([best_tok, token])
            if best_val.shape[0] > contexts:
                keep = best_val.topk(contexts, dim=0).indices
                best_val, best_tok = best_val.gather(0, keep), best_tok.gather(0, keep)
    if tokens == 0:
        raise ActkitError("no tokens to score features on: the texts are empty")
    valid = best_val > -math.inf  # (C, d_sae)
    hits = _in_top(best_tok, top_tokens)
    counted = valid.sum(0)
    score = (hits & valid).sum(0).double() / counted.clamp(min=1)
    score = score.masked_fill(counted < min_contexts, math.nan)
    peak = best_val.max(0).values if best_val.shape[0] else torch.zeros(sae.d_sae)
    return {"input_score": score, "frequency": active.double() / tokens, "max_activation": peak.clamp(min=0),
            "contexts": counted}


def _in_top(tokens: torch.Tensor, top_tokens: torch.Tensor) -> torch.Tensor:
    """(C, d_sae) bool: whether tokens[c, i] is among feature i's top tokens."""
    return (tokens[..., None] == top_tokens[None]).any(-1)


def output_scores(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, top_tokens: torch.Tensor, *,
                  features: Sequence[int] | None = None, prompt: str = NEUTRAL_PROMPT, amplify: float = 10.0,
                  batch_size: int = 64) -> torch.Tensor:
    """Output scores: one forward pass per feature on `prompt`, the feature amplified at the last token.

    Arguments:
        model: the model.
        tokenizer: its tokenizer.
        sae: the SAE.
        top_tokens: (d_sae, top) from `logit_lens_tokens`.
        features: the features to score (default all).
        prompt: the neutral prompt.
        amplify: the feature gains this many times the last token's largest feature activation.
        batch_size: features per forward pass (each is one row of the batch).

    Returns:
        (len(features),) float64 scores in [0, 1].
    """
    chosen = list(range(sae.d_sae)) if features is None else [sae.check_feature(i) for i in features]
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise ActkitError("the neutral prompt is empty after tokenization")
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(chosen), batch_size):
            part = torch.tensor(chosen[start:start + batch_size])
            rows = torch.tensor([ids] * len(part), device=device)
            edit = EncodeEditDecode(sae, FeatureEdit(part[:, None], amplify, mode="amplify"), positions=Last())
            with tap(model, write={sae.site: edit}):
                logits = model(input_ids=rows, attention_mask=torch.ones_like(rows), use_cache=False).logits
            probs = torch.softmax(logits[:, -1].float(), dim=-1).cpu()
            wanted = top_tokens[part]  # (n, top)
            rank = (probs[:, None, :] > probs.gather(1, wanted)[..., None]).sum(-1)  # tokens strictly above each
            best_rank = rank.min(-1).values.double()
            top_prob = probs.gather(1, wanted).max(-1).values.double()
            out.append((1 - best_rank / probs.shape[-1]) * top_prob)
    return torch.cat(out)


def feature_scores(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, texts: Sequence[str] | Iterable[str], *,
                   top: int = 20, contexts: int = 100, min_contexts: int = 10, prompt: str = NEUTRAL_PROMPT,
                   amplify: float = 10.0, max_tokens: int | None = None, show_tokens: int = 8,
                   ) -> list[dict[str, Any]]:
    """Input and output scores and top tokens of every feature: what ``actkit sae features`` prints.

    Arguments:
        model, tokenizer, sae: the model, its tokenizer and an SAE that fits it.
        texts: documents for the input score and the firing frequency.
        top: top tokens per feature (the paper: 20).
        contexts, min_contexts: see `input_scores`.
        prompt, amplify: see `output_scores`.
        max_tokens: read at most this many tokens of `texts`.
        show_tokens: how many top tokens to return as text.

    Returns:
        One dict per feature: ``feature``, ``input_score`` (None: too few contexts), ``output_score``,
        ``frequency``, ``max_activation``, ``top_tokens`` (strings).
    """
    lens = logit_lens_tokens(model, sae, top)
    inputs = input_scores(model, tokenizer, sae, texts, lens, contexts=contexts, min_contexts=min_contexts,
                          max_tokens=max_tokens)
    outputs = output_scores(model, tokenizer, sae, lens, prompt=prompt, amplify=amplify)
    rows = []
    for i in range(sae.d_sae):
        value = float(inputs["input_score"][i])
        rows.append({"feature": i, "input_score": None if math.isnan(value) else value,
                     "output_score": float(outputs[i]), "frequency": float(inputs["frequency"][i]),
                     "max_activation": float(inputs["max_activation"][i]),
                     "top_tokens": [tokenizer.decode([int(t)]) for t in lens[i, :show_tokens]]})
    return rows
