"""The one layer-index rule: negative indices from the end, out of range named, duplicates removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actkit.core.layers import layer_indices, resolve_layers
from actkit.errors import ActkitError

from tiny import build


def test_negative_indices_count_from_the_end_and_duplicates_go() -> None:
    assert layer_indices(4, None) == [0, 1, 2, 3]
    assert layer_indices(4, -1) == [3]
    assert layer_indices(4, [3, -1, 0, -4]) == [0, 3]
    assert layer_indices(4, [np.int64(2), torch.tensor(1)]) == [1, 2]


@pytest.mark.parametrize(("layers", "message"), [
    ([4], r"layer 4 does not exist; the model has 4 blocks \(0..3, or -1..-4"),
    ([-5], r"layer -5 does not exist"),
    ([], "no layers given"),
    (["1"], "'1' is not a block index"),
    ([1.0], "1.0 is not a block index"),
    ([True], "True is not a block index"),
])
def test_bad_layers_are_named(layers: list, message: str) -> None:
    with pytest.raises(ActkitError, match=message):
        layer_indices(4, layers)


def test_resolve_layers_reads_the_block_count_of_the_model() -> None:
    assert resolve_layers(build("gpt2"), -1) == [2]
