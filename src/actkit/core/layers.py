"""Which blocks: the one rule that turns a user's layer indices into block indices.

Every pillar that takes ``layers`` (steering, layer selection, patching) resolves them here, so ``-1`` means the
same block everywhere. The rule:

- None means every block;
- an index counts from the start (``0`` is the first block), a negative one from the end like Python (``-1`` is
  the last block);
- an index outside ``-n..n-1`` is an error that names the valid range;
- the result is ascending with duplicates removed (``[3, -1, 3]`` on 4 blocks is ``[3]``): a block is read or
  patched once, whichever way it was named.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.errors import ActkitError


def layer_indices(n_layers: int, layers: int | Iterable[int] | None) -> list[int]:
    """Resolve layer indices against a model of `n_layers` blocks (see the module docstring for the rule).

    Arguments:
        n_layers: the number of blocks.
        layers: one index, several, or None for every block.

    Returns:
        The block indices, ascending, without duplicates.
    """
    items = list(range(n_layers)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ActkitError("no layers given; name at least one block")
    out: set[int] = set()
    for layer in items:
        try:
            if isinstance(layer, bool):
                raise TypeError
            number = operator.index(layer)  # ints, numpy and torch integers; not floats or strings
        except TypeError:
            raise ActkitError(f"layer {layer!r} is not a block index; give integers such as 3 or -1") from None
        index = number + n_layers if number < 0 else number
        if not 0 <= index < n_layers:
            raise ActkitError(f"layer {layer} does not exist; the model has {n_layers} blocks "
                              f"(0..{n_layers - 1}, or -1..-{n_layers} counted from the end)")
        out.add(index)
    return sorted(out)


def resolve_layers(model: nn.Module, layers: int | Iterable[int] | None) -> list[int]:
    """`layer_indices` for `model`'s blocks: every pillar's way to read a ``layers`` argument.

    Arguments:
        model: a model of a known family (its block count comes from its anatomy).
        layers: one index, several, or None for every block; negative indices count from the end.

    Returns:
        The block indices, ascending, without duplicates.
    """
    return layer_indices(Anatomy.of(model).n_layers, layers)


__all__ = ["layer_indices", "resolve_layers"]
