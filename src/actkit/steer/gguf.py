"""llama.cpp control vectors: export a `SteeringVector` to GGUF and import one back.

The format (what llama.cpp's control-vector loader reads): a GGUF file with architecture ``controlvector``, the
keys ``controlvector.model_hint`` (a string) and ``controlvector.layer_count`` (uint32, the number of
directions), and one float32 tensor of shape (n_embd,) per layer named ``direction.<n>``.

Layer numbering. llama.cpp adds ``direction.<n>`` to the output of its layer ``n`` (0-based, the ``il`` of its
layer loop: the same block actkit calls ``resid_post.n``), and it has no slot for layer 0: the loader rejects
``direction.0`` and the adapter stores data from layer 1 on. So the mapping is the identity on block indices,
``resid_post.n`` <-> ``direction.n``, and a vector with a direction at block 0 cannot be exported (drop that
layer or train on later blocks). Only ``resid_post`` vectors have a llama.cpp equivalent.

llama.cpp scales the directions by the strength given on its command line (``--control-vector-scaled FILE:S``, one argument);
the file holds the vectors at coefficient 1. actkit's metadata travels in an extra string key,
``actkit.metadata``, which llama.cpp ignores; `import_gguf` restores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from actkit.errors import ActkitError
from actkit.io import atomic_file, check_output_file
from actkit.steer.vectors import SteeringVector, check_fits, check_metadata

ARCH = "controlvector"
_META_KEY = "actkit.metadata"


def export_gguf(vector: SteeringVector, path: str | Path, *, overwrite: bool = False,
                model_hint: str | None = None) -> Path:
    """Write `vector` as a llama.cpp control vector (see the module docstring for the layer mapping).

    Arguments:
        vector: a ``resid_post`` steering vector without a direction at block 0.
        path: the ``.gguf`` file to write (atomically).
        overwrite: replace an existing file (the CLI's ``--force``).
        model_hint: the ``controlvector.model_hint`` string (default the model type from the metadata).

    Returns:
        The path written.
    """
    import gguf

    if vector.site != "resid_post":
        raise ActkitError(f"llama.cpp control vectors act on block outputs (resid_post); this vector is at "
                          f"{vector.site}")
    if 0 in vector.directions:
        raise ActkitError("llama.cpp never applies a control vector to the output of the first block "
                          "(direction.0 is rejected by its loader); drop layer 0 from the vector")
    p = check_output_file(path, overwrite=overwrite)
    hint = model_hint or str((vector.metadata.get("config") or {}).get("model_type") or
                             vector.metadata.get("model") or "unknown")
    meta = {**vector.metadata, "site": vector.site, "layers": vector.layers}
    with atomic_file(p, overwrite=overwrite) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.directions))
        writer.add_string(_META_KEY, json.dumps(meta, sort_keys=True))
        for layer, v in sorted(vector.directions.items()):
            writer.add_tensor(f"direction.{layer}", v.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return p


def _field(reader: Any, key: str) -> Any:
    found = reader.fields.get(key)
    return None if found is None else found.contents()


def import_gguf(path: str | Path, model: nn.Module | None = None) -> SteeringVector:
    """Read a llama.cpp control vector (from actkit or another tool) as a `SteeringVector`.

    Arguments:
        path: the ``.gguf`` file.
        model: check the vector against this model, as `load_vector` does.

    Returns:
        The vector at ``resid_post`` (``direction.n`` -> block n); actkit's metadata when the file carries it,
        otherwise the model hint and ``method="gguf"``.
    """
    import gguf

    p = Path(path)
    if not p.is_file():
        raise ActkitError(f"GGUF file {str(p)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as error:  # the reader raises ValueError, struct errors, ... on foreign files
        raise ActkitError(f"{str(p)!r} is not a readable GGUF file ({error})") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ActkitError(f"{str(p)!r} is a GGUF file of architecture {arch!r}, not a control vector ({ARCH!r})")
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit() or int(index) == 0:
            raise ActkitError(f"{str(p)!r}: unexpected tensor {tensor.name!r}; control vectors hold "
                              "'direction.<n>' tensors with n >= 1")
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise ActkitError(f"{str(p)!r}: tensor {tensor.name!r} has type {tensor.tensor_type.name}; control "
                              "vectors are float32")
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        layer = int(index)
        t = torch.from_numpy(data.copy())
        directions[layer] = directions[layer] + t if layer in directions else t
    if not directions:
        raise ActkitError(f"{str(p)!r} holds no direction tensors")
    raw = _field(reader, _META_KEY)
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        check_metadata(meta, str(p))
    else:
        meta = {"method": "gguf", "model_hint": _field(reader, f"{ARCH}.model_hint")}
    meta["layers"] = sorted(directions)
    widths = {int(v.shape[0]) for v in directions.values()}
    if len(widths) != 1:
        raise ActkitError(f"{str(p)!r}: the directions have different sizes {sorted(widths)}")
    meta["hidden_size"] = widths.pop()
    vector = SteeringVector(directions, site="resid_post", metadata=meta)
    if model is not None:
        check_fits(vector, model, source=str(p))
    return vector


__all__ = ["export_gguf", "import_gguf"]
