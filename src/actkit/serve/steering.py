"""Per-request steering for ``actkit serve``: the vectors a server offers, and a request's ``steer`` list as writes.

A request steers with a list of items that compose, applied in the order given:

- ``{"vector": NAME, "coef": 1.0, "relative": false, "layers": null, "positions": "all"}``: exactly
  ``actkit generate --vector NAME.safetensors --coef C [--relative] [--layers ...] [--positions P]`` (both build
  their writes with `actkit.steer.steering_writes`);
- ``{"ablate": NAME, "layers": null, "positions": "all"}``: directional ablation, `actkit.steer.Ablate` of the
  vector's direction at each of its layers, at the site where ``--vector`` would add it (``resid_post.L``), so
  the component along the vector is removed where steering would have pushed it;
- ``{"vector": NAME, "coef": 1.0, "layers": null, "positions": "all"}`` where NAME is a LinEAS file (per-block
  affine maps, `actkit.steer.lineas`): exactly ``actkit generate --vector NAME.safetensors --coef C`` with it, the
  coefficient being the map's strength (``x + coef * (T(x) - x)``; 1 is the map as trained); ``relative`` and
  ``ablate`` need a direction, so they are refused for it.

It comes as a top-level ``steer`` list or as ``vllm_xargs: {"steer": "<JSON text>"}`` (vLLM allows only strings
and numbers in ``vllm_xargs``). A preset model name ``MODEL:NAME@COEF`` is ``[{"vector": NAME, "coef": COEF,
"relative": true}]`` (steering vectors only). Vector names are looked up in the registry, never read as paths.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from torch import nn

from actkit.core.interventions import Intervention
from actkit.core.positions import parse_positions
from actkit.errors import ActkitError
from actkit.serve.schema import APIError
from actkit.steer import (
    Ablate,
    SteeringVector,
    combine,
    import_gguf,
    load_vector,
    restrict_layers,
    steering_writes,
)
from actkit.steer.lineas import KIND as LINEAS
from actkit.steer.lineas import LinEAS, is_lineas_file, load_lineas

#: What a vector name may hold (a file name without its extension; never a path).
NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: The most steering items one request may give.
MAX_ITEMS = 8
#: The largest coefficient magnitude accepted (relative: 1000 times the mean residual norm is far past breaking any
#: model; absolute: directions are usually unit or mean-difference sized).
MAX_COEF = 1000.0
#: The relative coefficient of the preset aliases `GET /v1/models` lists (``MODEL:NAME@0.5``).
DEFAULT_PRESET_COEF = 0.5


@dataclass(frozen=True)
class Registered:
    """A vector the server offers: its name, the file it came from and the vector (or LinEAS maps)."""

    name: str
    path: Path
    vector: SteeringVector | LinEAS

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/steering`` shows (no file paths: the folder is the operator's business)."""
        if isinstance(self.vector, LinEAS):
            maps = self.vector
            return {
                "name": self.name, "format": "safetensors", "site": maps.site, "layers": maps.layers,
                "method": LINEAS, "model": maps.metadata.get("model"), "hidden_size": maps.hidden_size,
                "sites": [f"{maps.site}.{layer}" for layer in maps.layers], "rank": maps.rank,
                "blocks": maps.summary(), "relative": False,
            }
        meta = self.vector.metadata
        means = meta.get("mean_norms") or {}
        return {
            "name": self.name, "format": self.path.suffix.lstrip("."), "site": self.vector.site,
            "layers": self.vector.layers, "method": meta.get("method"), "model": meta.get("model"),
            "hidden_size": self.vector.hidden_size,
            "norms": {str(layer): float(v.norm()) for layer, v in self.vector.directions.items()},
            "mean_norms": {str(k): float(v) for k, v in means.items()} if isinstance(means, Mapping) else {},
            "relative": self.relative_ok,
        }

    @property
    def relative_ok(self) -> bool:
        """Whether relative coefficients (and so presets) work: the file is a vector (not LinEAS maps) with a
        mean norm for every layer."""
        if isinstance(self.vector, LinEAS):
            return False
        try:
            for layer in self.vector.layers:
                self.vector.mean_norm(layer)
        except ActkitError:
            return False
        return True


class VectorRegistry:
    """The vectors a server offers, by name."""

    def __init__(self, vectors: Sequence[Registered] = ()) -> None:
        self.vectors = {v.name: v for v in vectors}

    @classmethod
    def from_folder(cls, folder: str | Path, model: nn.Module) -> VectorRegistry:
        """Every ``*.safetensors`` (actkit vectors and LinEAS files) and ``*.gguf`` (control vectors) in `folder`,
        under its file name without the extension, each checked against `model` (a misfit is an `ActkitError`
        naming the file)."""
        root = Path(folder)
        if not root.is_dir():
            raise ActkitError(f"--vectors {str(root)!r} is not a folder")
        found: list[Registered] = []
        for path in sorted(root.iterdir()):
            if path.suffix not in (".safetensors", ".gguf") or not path.is_file():
                continue
            name = path.stem
            if not NAME.fullmatch(name):
                raise ActkitError(f"{str(path)!r}: a vector's file name may hold only letters, digits, '_', '.' "
                                  "and '-' (it is the vector's name in requests)")
            if any(r.name == name for r in found):
                raise ActkitError(f"{str(path)!r}: two files are named {name!r}; keep one")
            try:
                vector: SteeringVector | LinEAS
                if path.suffix == ".gguf":
                    vector = import_gguf(path, model)
                else:
                    vector = load_lineas(path, model) if is_lineas_file(path) else load_vector(path, model)
            except ActkitError as error:
                message = str(error)
                raise ActkitError(message if str(path) in message else f"{str(path)!r}: {message}") from None
            found.append(Registered(name, path, vector))
        return cls(found)

    def get(self, name: Any, param: str) -> Registered:
        """The vector called `name`; a 400 naming `param` for a bad or unknown name."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise APIError(400, f"{param}: a vector name is letters, digits, '_', '.' and '-' (got {name!r})",
                           param=param, code="invalid_value")
        if name not in self.vectors:
            known = ", ".join(sorted(self.vectors)) or "none"
            raise APIError(400, f"{param}: unknown vector {name!r}; this server has: {known}", param=param,
                           code="vector_not_found")
        return self.vectors[name]

    def describe(self) -> list[dict[str, Any]]:
        return [self.vectors[name].describe() for name in sorted(self.vectors)]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    layers: list[StrictInt] | None = None
    positions: Literal["all", "prompt", "generated"] = "all"


class SteerItem(_Item):
    """``{"vector": NAME, "coef": x, "relative": bool, "layers": [...], "positions": ...}``."""

    vector: StrictStr
    coef: StrictFloat = 1.0
    relative: StrictBool = False


class AblateItem(_Item):
    """``{"ablate": NAME, "layers": [...], "positions": ...}``."""

    ablate: StrictStr


def parse_steer(steer: list[Any] | None, xargs: Mapping[str, Any] | None) -> list[SteerItem | AblateItem]:
    """A request's steering items, from its ``steer`` list and its ``vllm_xargs["steer"]`` JSON text (both may be
    given: the top-level items come first). Every problem is a 400 naming the parameter."""
    items: list[tuple[str, Any]] = [(f"steer.{i}", item) for i, item in enumerate(steer or [])]
    if xargs:
        unknown = sorted(set(xargs) - {"steer", "monitor"})
        if unknown:
            raise APIError(400, f"vllm_xargs: unknown key(s) {unknown}; actkit reads 'steer' and 'monitor'", param="vllm_xargs")
        if "steer" in xargs:
            text = xargs["steer"]
            if not isinstance(text, str):
                raise APIError(400, "vllm_xargs.steer: must be JSON text (a string holding a list)",
                               param="vllm_xargs.steer")
            try:
                listed = json.loads(text)
            except json.JSONDecodeError as error:
                raise APIError(400, f"vllm_xargs.steer: not valid JSON ({error.msg})",
                               param="vllm_xargs.steer") from None
            if isinstance(listed, dict):
                listed = [listed]
            if not isinstance(listed, list):
                raise APIError(400, "vllm_xargs.steer: must be a JSON list of steering items",
                               param="vllm_xargs.steer")
            items += [(f"vllm_xargs.steer.{i}", item) for i, item in enumerate(listed)]
    if len(items) > MAX_ITEMS:
        raise APIError(400, f"steer: at most {MAX_ITEMS} steering items per request (got {len(items)})",
                       param="steer")
    return [_parse_item(param, item) for param, item in items]


def _parse_item(param: str, item: Any) -> SteerItem | AblateItem:
    if not isinstance(item, dict):
        raise APIError(400, f"{param}: a steering item is an object such as {{\"vector\": NAME, \"coef\": 1}}",
                       param=param)
    kind: type[SteerItem | AblateItem] = AblateItem if "ablate" in item else SteerItem
    try:
        parsed = kind.model_validate(item)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join([param, *(str(p) for p in first["loc"])])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise APIError(400, f"{where}: {message}", param=where, code="invalid_value") from None
    if isinstance(parsed, SteerItem):
        check_coef(parsed.coef, f"{param}.coef")
    return parsed


def check_coef(coef: float, param: str) -> None:
    """A finite coefficient of magnitude at most `MAX_COEF`, else a 400."""
    if not math.isfinite(coef) or abs(coef) > MAX_COEF:
        raise APIError(400, f"{param}: the coefficient must be a finite number in [-{MAX_COEF:g}, {MAX_COEF:g}] "
                       f"(got {coef})", param=param, code="invalid_value")


def build_writes(registry: VectorRegistry, items: Sequence[SteerItem | AblateItem], param: str = "steer"
                 ) -> dict[str, list[Intervention]] | None:
    """The writes of one request (one row), the items composed in order; None without items."""
    if not items:
        return None
    parts: list[Mapping[str, Any]] = []
    for i, item in enumerate(items):
        where = f"{param}.{i}"
        name = item.ablate if isinstance(item, AblateItem) else item.vector
        found = registry.get(name, f"{where}.{'ablate' if isinstance(item, AblateItem) else 'vector'}")
        try:
            if isinstance(found.vector, LinEAS):
                parts.append(_lineas_writes(found.vector, item, where))
            elif isinstance(item, AblateItem):
                vector = restrict_layers(found.vector, item.layers)
                positions = None if item.positions == "all" else parse_positions(item.positions)
                parts.append({f"{vector.site}.{layer}": Ablate(d, positions)
                              for layer, d in vector.directions.items()})
            else:
                parts.append(steering_writes(found.vector, item.coef, relative=item.relative, layers=item.layers,
                                             positions=item.positions))
        except ActkitError as error:
            raise APIError(400, f"{where}: {error}", param=where, code="invalid_value") from None
    return combine(*parts)


class WritesCache:
    """The writes of each distinct steering list, built once and shared by every request that sends that list.

    Interventions are never changed by the passes that use them, so sharing them is safe; building them runs small
    torch operations (finite checks, norms) that, on a server whose engine thread holds the interpreter lock most
    of the time, each wait for it: a repeated request (a preset, a client's fixed payload) skips all of that.
    At most `size` lists are kept (the oldest goes first); a list that fails to build is not kept.
    """

    def __init__(self, registry: VectorRegistry, size: int = 1024) -> None:
        self.registry = registry
        self.size = size
        self._kept: dict[tuple[str, ...], dict[str, list[Intervention]] | None] = {}

    def get(self, items: Sequence[SteerItem | AblateItem], param: str = "steer"
            ) -> dict[str, list[Intervention]] | None:
        """`build_writes` of `items`, from the cache when the same list was built before."""
        key = tuple(f"{type(item).__name__}{item.model_dump_json()}" for item in items)
        if key not in self._kept:
            built = build_writes(self.registry, items, param)
            if len(self._kept) >= self.size:
                del self._kept[next(iter(self._kept))]
            self._kept[key] = built
        return self._kept[key]


def _lineas_writes(maps: LinEAS, item: SteerItem | AblateItem, where: str) -> dict[str, Intervention]:
    """A LinEAS item's writes: the maps at `item.coef` strength, at its layers and positions (as ``actkit
    generate --vector MAPS --coef C`` builds them); ablation and relative coefficients are 400s."""
    name = item.ablate if isinstance(item, AblateItem) else item.vector
    if isinstance(item, AblateItem):
        raise APIError(400, f"{where}.ablate: {name!r} is a LinEAS file (affine maps), which has no direction to "
                       f"ablate; steer with it as {json.dumps({'vector': name, 'coef': 1})} or ablate a vector",
                       param=f"{where}.ablate", code="invalid_value")
    if item.relative:
        raise APIError(400, f"{where}.relative: {name!r} is a LinEAS file, whose coef is the maps' strength (1: as "
                       "trained, 0: no change), not a multiple of the residual norm; drop relative (presets "
                       "MODEL:NAME@COEF are for vectors only)", param=f"{where}.relative", code="invalid_value")
    return maps.to_intervention(item.coef, positions=item.positions, layers=item.layers)


def parse_preset(model: str, names: Sequence[str]) -> tuple[str, SteerItem | None] | None:
    """``MODEL:NAME@COEF`` -> (MODEL, its steering item); a plain served name -> (name, None); else None."""
    if model in names:
        return model, None
    base, sep, rest = model.rpartition(":")
    name, at, number = rest.partition("@")
    if not sep or not at or base not in names:
        return None
    try:
        coef = float(number)
    except ValueError:
        raise APIError(400, f"model: the preset coefficient {number!r} is not a number ({model!r}; the form is "
                       "MODEL:VECTOR@COEF)", param="model", code="invalid_value") from None
    check_coef(coef, "model")
    return base, SteerItem(vector=name, coef=coef, relative=True)


__all__ = ["DEFAULT_PRESET_COEF", "MAX_COEF", "MAX_ITEMS", "NAME", "AblateItem", "Registered", "SteerItem",
           "VectorRegistry", "WritesCache", "build_writes", "check_coef", "parse_preset", "parse_steer"]
