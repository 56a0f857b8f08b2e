"""The sparse autoencoder itself: weights in SAELens's layout, encode and decode, and edits of its features.

The tensors carry SAELens's names and shapes (``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_in),
``b_dec`` (d_in,)), so a file written elsewhere loads without renaming and one written here loads there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from actkit.core.interventions import Intervention, check_finite
from actkit.core.positions import Positions, StepContext
from actkit.errors import ActkitError

#: The SAELens architectures actkit can run: ``topk`` (Gao et al. 2024), ``standard`` (ReLU) and ``jumprelu``.
ARCHITECTURES = ("topk", "standard", "jumprelu")


@dataclass
class SparseAutoencoder:
    """A sparse autoencoder at one site of a model.

    Arguments:
        W_enc: (d_in, d_sae) encoder.
        b_enc: (d_sae,) encoder bias.
        W_dec: (d_sae, d_in) decoder; row i is feature i's direction (unit norm for SAEs trained by actkit).
        b_dec: (d_in,) decoder bias, subtracted from the input first when `apply_b_dec_to_input` (the pre-bias).
        site: the actkit site it reads and writes (``resid_post.2``).
        k: features kept per token (``topk`` only).
        architecture: one of `ARCHITECTURES`.
        threshold: (d_sae,) JumpReLU thresholds (``jumprelu`` only).
        apply_b_dec_to_input: subtract `b_dec` before encoding (SAELens's default).
        metadata: JSON-ready facts: the model it was trained for (``actkit``), training statistics.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    site: str
    k: int | None = None
    architecture: str = "topk"
    threshold: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ActkitError(f"SAE architecture {self.architecture!r} is not supported; actkit runs "
                              f"{', '.join(ARCHITECTURES)}")
        if self.W_enc.dim() != 2 or self.W_dec.dim() != 2:
            raise ActkitError(f"W_enc and W_dec must be matrices (got shapes {tuple(self.W_enc.shape)} and "
                              f"{tuple(self.W_dec.shape)})")
        d_in, d_sae = self.W_enc.shape
        expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        if self.threshold is not None:
            expected["threshold"] = (d_sae,)
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ActkitError(f"SAE tensor {name} has shape {got}; with W_enc of shape {(d_in, d_sae)} it must "
                                  f"be {shape}")
        if self.architecture == "topk":
            if self.k is None:
                raise ActkitError("a top-k SAE needs k, the number of features kept per token")
            check_k(self.k, d_sae)
        if self.architecture == "jumprelu" and self.threshold is None:
            raise ActkitError("a JumpReLU SAE needs its 'threshold' tensor")

    @property
    def d_in(self) -> int:
        """The size of the site's activation."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """The number of features (the dictionary size)."""
        return int(self.W_enc.shape[1])

    def check_feature(self, feature: int) -> int:
        """`feature` if it indexes a feature of this SAE; otherwise `ActkitError` saying the valid range."""
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < self.d_sae:
            raise ActkitError(f"feature {feature} is out of range: this SAE has {self.d_sae} features, "
                              f"0..{self.d_sae - 1}")
        return feature

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activations ``(x - b_dec) @ W_enc + b_enc`` (in the SAE's dtype)."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations: top-k of the ReLU, ReLU, or JumpReLU."""
        if self.architecture == "topk":
            assert self.k is not None
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold)
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) activations -> (..., d_sae) feature activations (a top-k SAE keeps at most k per token)."""
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) feature activations -> (..., d_in) reconstruction ``f @ W_dec + b_dec``."""
        return f @ self.W_dec + self.b_dec

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SparseAutoencoder:
        """A copy on `device` in `dtype` (metadata shared)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(device=device, dtype=dtype)

        return SparseAutoencoder(move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec),  # type: ignore[arg-type]
                                 self.site, self.k, self.architecture, move(self.threshold),
                                 self.apply_b_dec_to_input, self.metadata)


def check_k(k: int, d_sae: int) -> None:
    """Refuse a k that is not a count of features between 1 and the dictionary size."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ActkitError(f"k must be a positive number of features (got {k})")
    if k > d_sae:
        raise ActkitError(f"k = {k} is larger than the dictionary ({d_sae} features); give k <= {d_sae}")


EditMode = Literal["set", "add", "amplify"]


@dataclass
class FeatureEdit:
    """What to do to some features' activations: the edit inside `EncodeEditDecode`.

    Arguments:
        features: feature indices, (n,) for every row or (B, n) one set per row of the batch.
        value: a number or (B,) one per row.
        mode: ``set`` clamps the features to `value`; ``add`` adds `value`; ``amplify`` adds `value` times the
            token's largest feature activation (the intervention behind Arad et al.'s output score).
    """

    features: torch.Tensor
    value: float | torch.Tensor
    mode: EditMode = "set"

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        batch, length = f.shape[0], f.shape[1]
        index = self.features.to(f.device)
        if index.dim() == 1:
            index = index.expand(batch, -1)
        index = index[:, None, :].expand(batch, length, index.shape[-1])
        value = torch.as_tensor(self.value, dtype=f.dtype, device=f.device)
        if value.dim() == 1:
            value = value.reshape(-1, 1, 1)
        if self.mode == "set":
            new = value.expand(index.shape)
        elif self.mode == "add":
            new = f.gather(-1, index) + value
        else:
            new = f.gather(-1, index) + value * f.amax(dim=-1, keepdim=True)
        return f.scatter(-1, index, new)


class EncodeEditDecode(Intervention):
    """Encode the activation, edit its features, decode, and keep what the SAE does not reconstruct.

    The new activation is ``decode(edit(f)) + (x - decode(f))`` with ``f = encode(x)``, computed as
    ``x + (edit(f) - f) @ W_dec``: the same number, and with no edit exactly ``x``, bit for bit (the
    reconstruction error is kept, so an SAE that reconstructs badly does not damage the model by being used).

    Arguments:
        sae: the SAE (moved to the activation's device and dtype on first use).
        edit: ``f -> f'`` on (B, T, d_sae) feature activations (a `FeatureEdit`); None changes nothing.
        positions: which tokens to edit.
    """

    def __init__(self, sae: SparseAutoencoder, edit: FeatureEdit | None = None, positions: Positions | None = None):
        super().__init__(positions)
        if edit is not None:
            check_finite(edit.value, "feature value")
            bad = [int(i) for i in edit.features.reshape(-1) if not 0 <= int(i) < sae.d_sae]
            if bad:
                sae.check_feature(bad[0])
        self.sae = sae
        self.edit_fn = edit
        self._moved: dict[tuple[torch.device, torch.dtype], SparseAutoencoder] = {}

    def _sae_for(self, x: torch.Tensor) -> SparseAutoencoder:
        if x.shape[-1] != self.sae.d_in:
            raise ActkitError(f"the SAE reads activations of size {self.sae.d_in} but the site {self.sae.site} has "
                              f"size {x.shape[-1]}; use an SAE trained for this site and model")
        key = (x.device, torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
        if key not in self._moved:
            self._moved[key] = self.sae.to(device=key[0], dtype=key[1])
        return self._moved[key]

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sae = self._sae_for(x)
        if self.edit_fn is None:
            return x
        f = sae.encode(x)
        delta = (self.edit_fn(f) - f) @ sae.W_dec
        return x + delta.to(x.dtype)


def feature_indices(sae: SparseAutoencoder, features: int | Sequence[int]) -> list[int]:
    """`features` as a checked, non-empty list of indices."""
    chosen = [features] if isinstance(features, int) else list(features)
    if not chosen:
        raise ActkitError("no features given; name at least one feature index")
    return [sae.check_feature(i) for i in chosen]


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """`w` with each row scaled to unit norm (zero rows stay zero)."""
    norms = w.norm(dim=-1, keepdim=True)
    return w / torch.where(norms > 0, norms, torch.ones_like(norms))


def finite_number(value: float, what: str) -> float:
    """`value` if finite; otherwise `ActkitError`."""
    if not math.isfinite(value):
        raise ActkitError(f"the {what} must be a finite number (got {value})")
    return value
