"""``actkit serve``: load a model and its steering vectors, start the engine and serve the OpenAI API (uvicorn).

SIGTERM is a graceful stop, not the CLI's usual unwind (status 143): uvicorn stops accepting connections, the
requests in flight finish within `GRACE_S` seconds, the engine finishes or cancels what is left, and the command
exits with status 0.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from actkit.cli_common import DEFAULT_MODEL, DeviceOption, DtypeOption, ModelOption, bad_input, stderr
from actkit.errors import ActkitError

#: Seconds the requests in flight get to finish after SIGTERM (then the engine cancels the rest).
GRACE_S = 30.0
#: The environment variable that sets the API key when ``--api-key`` is not given.
API_KEY_ENV = "ACTKIT_API_KEY"


def served_name(spec: str) -> str:
    """The name clients give as ``model``: a built-in model's short name (``toy-dense``), else the spec."""
    return spec.split(":", 1)[1] if spec.startswith("builtin:") else spec


def serve_command(
    model: ModelOption = DEFAULT_MODEL,
    vectors: Annotated[Path | None, typer.Option("--vectors", help="A folder of steering vectors (.safetensors, "
                                                 ".gguf), each served under its file name.")] = None,
    host: Annotated[str, typer.Option("--host", help="The address to bind (loopback unless told otherwise).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", help=f"Require 'Authorization: Bearer KEY' (also "
                                                f"{API_KEY_ENV}).", envvar=API_KEY_ENV, show_envvar=False)] = None,
    probes: Annotated[Path | None, typer.Option("--probes", help="A folder of probes (.safetensors from 'actkit "
                                                "probe train'), each a name requests may monitor with.")] = None,
    guard: Annotated[str | None, typer.Option("--guard", help="P.safetensors[:flag|refuse|steer=VECTOR@COEF]: score "
                                              "every prompt on the probe P before generating; flag it, refuse it, or "
                                              "steer it with a registered vector (relative coefficient).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Requests decoded together at most.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="The most tokens one request may "
                                                "generate.")] = 256,
    threads: Annotated[int | None, typer.Option("--threads", help="torch's threads for the model (default: "
                                                "torch's). A small model on few cores decodes faster with 1, the "
                                                "HTTP layer having the rest.")] = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Serve a model over the OpenAI API (completions, chat, streaming) with per-request steering."""
    import uvicorn

    from actkit.models import load
    from actkit.serve.app import create_app
    from actkit.serve.engine import Engine
    from actkit.serve.monitoring import ProbeRegistry, build_guard, parse_guard
    from actkit.serve.steering import VectorRegistry

    with bad_input():
        if not 0 < port < 65536:
            raise ActkitError(f"--port must lie in 1..65535 (got {port})")
        if max_batch < 1:
            raise ActkitError(f"--max-batch must be at least 1 (got {max_batch})")
        if max_new_tokens < 1:
            raise ActkitError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
        if threads is not None and threads < 1:
            raise ActkitError(f"--threads must be at least 1 (got {threads})")
        if not host.strip():
            raise ActkitError("--host is empty")
        if api_key is not None and not api_key.strip():
            raise ActkitError(f"--api-key (or {API_KEY_ENV}) is empty")
        if vectors is not None and not vectors.is_dir():
            raise ActkitError(f"--vectors {str(vectors)!r} is not a folder")
        if probes is not None and not probes.is_dir():
            raise ActkitError(f"--probes {str(probes)!r} is not a folder")
        spec = parse_guard(guard) if guard is not None else None
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        loaded, tokenizer = load(model, dtype=dtype, device=device)
        registry = VectorRegistry.from_folder(vectors, loaded) if vectors is not None else VectorRegistry()
        offered = ProbeRegistry.from_folder(probes, loaded, registry) if probes is not None else ProbeRegistry()
        guarding = build_guard(spec, loaded, registry) if spec is not None else None
        engine = Engine(loaded, tokenizer, max_batch=max_batch)
    name = served_name(model)
    app = create_app(engine, tokenizer, registry, model_name=name, aliases=(model,) if model != name else (),
                     api_key=api_key, max_new_tokens=max_new_tokens, probes=offered, guard=guarding)
    server = _graceful_server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                    timeout_graceful_shutdown=int(GRACE_S)))
    engine.start()
    guarded = "" if guarding is None else f", guard {guarding.action} at {guarding.probe.site}"
    stderr().print(f"actkit serve: {name} with {len(registry.vectors)} vector(s), {len(offered.probes)} probe(s)"
                   f"{guarded} on http://{host}:{port}/v1", highlight=False)
    try:
        server.run()
    finally:
        engine.shutdown(GRACE_S)


def _graceful_server(config: Any) -> Any:
    """uvicorn's server, except that SIGTERM ends it with status 0 once it has drained (uvicorn re-raises the
    signal after its graceful shutdown, which would end actkit's CLI with status 143)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)

    return Server(config)


__all__ = ["API_KEY_ENV", "GRACE_S", "serve_command", "served_name"]
