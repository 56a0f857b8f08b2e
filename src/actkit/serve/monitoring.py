"""Monitoring and the latent guard in ``actkit serve``: the probes a server offers, a request's ``monitor`` list, and
the ``--guard`` option.

A request asks for per-token scores with a list of names, as a top-level ``monitor`` list or as ``vllm_xargs:
{"monitor": "<JSON text>"}`` (the same convention as ``steer``). A name is a probe of ``--probes DIR`` (a file
``NAME.safetensors`` written by ``actkit probe train``) or a vector of ``--vectors DIR``, read as a probe along its
direction (`actkit.monitor.probe_from_vector`): at its one block as ``NAME``, or at each of its blocks as
``NAME@L`` (ask for ``NAME@L`` to pick one). The reply carries, per choice, ``{"actkit": {"monitor": {NAME:
{"prompt": [...], "generated": [...]}}}}``: one score per prompt token and one per generated token (the score at
the position that produced it, as `actkit.monitor.monitor_generate` gives it).

``--guard P.safetensors[:flag|refuse|steer=VECTOR@COEF]`` scores every prompt on the probe P before any token is
generated and decides per request: ``flag`` (the default) reports ``{"actkit": {"guard": {"score", "threshold",
"flagged"}}}``; ``refuse`` answers a flagged prompt with `REFUSAL` and ``finish_reason: "content_filter"``; ``steer``
steers a flagged request with the registered vector at that relative coefficient (as a preset steers), from its
prompt pass on, at the vector's blocks (which must come at or after the probe's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from actkit.errors import ActkitError
from actkit.monitor import Probe, load_probe, probe_from_vector
from actkit.serve.engine import Guard
from actkit.serve.schema import APIError
from actkit.serve.steering import NAME, VectorRegistry, check_coef
from actkit.steer import SteeringVector, steering_writes

#: The most names one request may monitor.
MAX_MONITOR = 8
#: What ``--guard P:refuse`` answers to a flagged prompt.
REFUSAL = "I cannot help with that."


class ProbeRegistry:
    """The probes a server offers, by name (their file names without the extension)."""

    def __init__(self, probes: Mapping[str, Probe] | None = None) -> None:
        self.probes = dict(probes or {})

    @classmethod
    def from_folder(cls, folder: str | Path, model: nn.Module, vectors: VectorRegistry) -> ProbeRegistry:
        """Every ``*.safetensors`` probe file in `folder`, checked against `model` (a misfit is an `ActkitError`
        naming the file); a name that is also a vector's is refused (a request could not say which it means)."""
        root = Path(folder)
        if not root.is_dir():
            raise ActkitError(f"--probes {str(root)!r} is not a folder")
        found: dict[str, Probe] = {}
        for path in sorted(root.glob("*.safetensors")):
            name = path.stem
            if not NAME.fullmatch(name):
                raise ActkitError(f"{str(path)!r}: a probe's file name may hold only letters, digits, '_', '.' "
                                  "and '-' (it is the probe's name in requests)")
            if name in vectors.vectors:
                raise ActkitError(f"{str(path)!r}: {name!r} is also a vector in --vectors; rename one of them")
            try:
                found[name] = load_probe(path, model)
            except ActkitError as error:
                message = str(error)
                raise ActkitError(message if str(path) in message else f"{str(path)!r}: {message}") from None
        return cls(found)

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /v1/steering`` lists under ``probes``."""
        return [{"name": name, "site": p.site, "method": p.method, "reduce": p.reduce, "threshold": p.threshold,
                 "auroc": p.metadata.get("auroc")} for name, p in sorted(self.probes.items())]


def parse_monitor(monitor: list[Any] | None, xargs: Mapping[str, Any] | None) -> list[str]:
    """A request's monitor names, from its ``monitor`` list and its ``vllm_xargs["monitor"]`` JSON text."""
    names: list[tuple[str, Any]] = [(f"monitor.{i}", n) for i, n in enumerate(monitor or [])]
    if xargs and "monitor" in xargs:
        text = xargs["monitor"]
        param = "vllm_xargs.monitor"
        if not isinstance(text, str):
            raise APIError(400, f"{param}: must be JSON text (a string holding a list of names)", param=param)
        try:
            listed = json.loads(text)
        except json.JSONDecodeError as error:
            raise APIError(400, f"{param}: not valid JSON ({error.msg})", param=param) from None
        if isinstance(listed, str):
            listed = [listed]
        if not isinstance(listed, list):
            raise APIError(400, f"{param}: must be a JSON list of probe or vector names", param=param)
        names += [(f"{param}.{i}", n) for i, n in enumerate(listed)]
    if len(names) > MAX_MONITOR:
        raise APIError(400, f"monitor: at most {MAX_MONITOR} names per request (got {len(names)})", param="monitor")
    out = []
    for param, name in names:
        if not isinstance(name, str):
            raise APIError(400, f"{param}: a probe or vector name is a string (got {name!r})", param=param,
                           code="invalid_value")
        if name not in out:
            out.append(name)
    return out


def monitor_probes(names: Sequence[str], probes: ProbeRegistry, vectors: VectorRegistry) -> dict[str, Probe]:
    """The probes a request's names stand for (module docstring), keyed by the names the reply uses."""
    out: dict[str, Probe] = {}
    for i, name in enumerate(names):
        param = f"monitor.{i}"
        if name in probes.probes:
            out[name] = probes.probes[name]
            continue
        base, at, block = name.partition("@")
        if not NAME.fullmatch(base) or (at and not block.lstrip("-").isdigit()):
            raise APIError(400, f"{param}: {name!r} is not a probe or vector name (NAME or NAME@BLOCK)",
                           param=param, code="invalid_value")
        if base not in vectors.vectors:
            known = ", ".join(sorted([*probes.probes, *vectors.vectors])) or "none"
            raise APIError(400, f"{param}: unknown probe or vector {base!r}; this server has: {known}",
                           param=param, code="probe_not_found")
        vector = vectors.vectors[base].vector
        if not isinstance(vector, SteeringVector):
            raise APIError(400, f"{param}: {base!r} is a LinEAS file (affine maps), with no direction to read; "
                           "monitor a probe or a steering vector", param=param, code="invalid_value")
        if at:
            layer = int(block)
            if layer not in vector.directions:
                raise APIError(400, f"{param}: the vector {base!r} has no direction at block {layer}; it has "
                               f"{', '.join(map(str, vector.layers))}", param=param, code="invalid_value")
            out[name] = probe_from_vector(vector, layer)
        elif len(vector.layers) == 1:
            out[name] = probe_from_vector(vector, vector.layers[0])
        else:
            out.update({f"{base}@{layer}": probe_from_vector(vector, layer) for layer in vector.layers})
    return out


@dataclass(frozen=True)
class GuardSpec:
    """A parsed ``--guard`` value: the probe file, the action, and steer's vector and relative coefficient."""

    path: Path
    action: str = "flag"
    vector: str | None = None
    coef: float = 0.0


def parse_guard(text: str) -> GuardSpec:
    """``P.safetensors[:flag|refuse|steer=VECTOR@COEF]`` -> `GuardSpec`; `ActkitError` for anything else."""
    path, sep, action = text.rpartition(":")
    if not sep or action.startswith(("/", "\\")):  # no action given (or the colon belongs to the path)
        path, action = text, "flag"
    if not path.endswith(".safetensors"):
        raise ActkitError(f"--guard {text!r}: give a probe file P.safetensors, then optionally :flag, :refuse or "
                          ":steer=VECTOR@COEF")
    if action in ("flag", "refuse"):
        return GuardSpec(Path(path), action)
    name, at, number = action.removeprefix("steer=").partition("@")
    if not action.startswith("steer=") or not at or not NAME.fullmatch(name):
        raise ActkitError(f"--guard {text!r}: the action is flag, refuse or steer=VECTOR@COEF (a vector of "
                          "--vectors and a relative coefficient)")
    try:
        coef = float(number)
        check_coef(coef, "--guard")
    except (ValueError, APIError):
        raise ActkitError(f"--guard {text!r}: the coefficient {number!r} is not a finite number within the "
                          "server's limit") from None
    return GuardSpec(Path(path), "steer", name, coef)


def build_guard(spec: GuardSpec, model: nn.Module, vectors: VectorRegistry) -> Guard:
    """The engine's `Guard` for `spec`: the probe checked against `model`; steer's vector from the registry, at
    blocks that the probe's block precedes or equals (the decision must exist before the steering is written)."""
    if not spec.path.is_file():
        raise ActkitError(f"--guard: the probe file {str(spec.path)!r} does not exist")
    probe = load_probe(spec.path, model)
    if spec.action != "steer":
        return Guard(probe, spec.action)
    assert spec.vector is not None
    if spec.vector not in vectors.vectors:
        known = ", ".join(sorted(vectors.vectors)) or "none (give --vectors)"
        raise ActkitError(f"--guard: unknown vector {spec.vector!r}; the registered vectors: {known}")
    vector = vectors.vectors[spec.vector].vector
    if not isinstance(vector, SteeringVector):
        raise ActkitError(f"--guard: {spec.vector!r} is a LinEAS file; the guard steers with a vector (a direction "
                          "at a relative coefficient)")
    early = [layer for layer in vector.layers if layer < probe.layer]
    if early:
        raise ActkitError(f"--guard: the vector {spec.vector!r} steers block(s) {early}, before the probe's block "
                          f"{probe.layer}; the guard decides there first: use a probe at an earlier block")
    return Guard(probe, "steer", steering_writes(vector, spec.coef, relative=True))


__all__ = ["MAX_MONITOR", "REFUSAL", "GuardSpec", "ProbeRegistry", "build_guard", "monitor_probes", "parse_guard",
           "parse_monitor"]
