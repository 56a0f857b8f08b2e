"""The OpenAI-compatible HTTP layer of ``actkit serve`` (FastAPI): requests in, `Engine` streams out.

Every request is parsed by hand from its body (a size cap first, then strict pydantic models), so every bad
request is a 4xx with the OpenAI error object and never reaches the engine. Generation runs in the engine's
thread; the handlers wait for its events off the event loop and cancel the engine stream when the client goes
away or a stop string is reached.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from actkit.errors import ActkitError
from actkit.serve.engine import Engine, Finished, GenerationRequest, Guard, Stream, Token
from actkit.serve.monitoring import REFUSAL, ProbeRegistry, monitor_probes, parse_monitor
from actkit.serve.schema import APIError, ChatRequest, CompletionRequest, validation_error
from actkit.serve.steering import (
    DEFAULT_PRESET_COEF,
    VectorRegistry,
    WritesCache,
    parse_preset,
    parse_steer,
)

#: The largest request body accepted (bytes): room for long token-id prompts, not for abuse.
MAX_BODY = 4 * 1024 * 1024
#: How long one wait for an engine event lasts before the handler checks whether the client is still there.
POLL_S = 0.25

Disconnected = Callable[[], Awaitable[bool]]
#: A prompt's log-probabilities as the engine gives them: per token, its own and the top alternatives.
Scores = list[tuple[float | None, dict[int, float]]]


@dataclass
class Limits:
    """What one request may ask for."""

    max_new_tokens: int
    context_length: int


@dataclass
class Output:
    """One prompt's generation as it comes out: text with the stop strings applied, and its tokens."""

    tokenizer: Any
    stops: list[str]
    ids: list[int] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    sent: int = 0
    stopped: bool = False
    finished: Finished | None = None
    head: Token | Finished | None = None  # the first event: the prompt's scores and the guard's decision

    def text(self) -> str:
        if self.refused:
            return REFUSAL
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    @property
    def refused(self) -> bool:
        return self.finished is not None and self.finished.reason == "refused"

    def end(self, finished: Finished) -> None:
        self.finished = finished
        self.head = self.head or finished

    def keep(self, token: Token) -> None:
        """Add a token whose text nobody waits for (a whole reply without stop strings: decoded once, at the end)."""
        self.head = self.head or token
        self.ids.append(token.id)
        self.tokens.append(token)

    def push(self, token: Token) -> str:
        """Add a token; the text that is now safe to send (held back: a possible start of a stop string, or an
        incomplete character). After a stop string, `stopped` is set and nothing more is sent."""
        self.head = self.head or token
        self.ids.append(token.id)
        self.tokens.append(token)
        full = self.text()
        cut = min((i for i in (full.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._send(full, max(cut, self.sent))
        safe = len(full.rstrip("\ufffd"))  # an incomplete character decodes as U+FFFD until its last byte
        hold = 0
        for stop in self.stops:
            hold = max([hold] + [k for k in range(1, len(stop)) if full[:safe].endswith(stop[:k])])
        return self._send(full, max(safe - hold, self.sent))

    def flush(self) -> str:
        """The rest of the text, once the stream has ended without a stop string."""
        return "" if self.stopped else self._send(self.text(), None)

    def _send(self, full: str, upto: int | None) -> str:
        end = len(full) if upto is None else upto
        out = full[self.sent:end]
        self.sent = end
        return out

    def kept_tokens(self) -> list[Token]:
        """The tokens whose text lies before the cut (all of them without a stop string)."""
        if not self.stopped:
            return self.tokens
        kept: list[Token] = []
        for k, token in enumerate(self.tokens):
            if len(self.tokenizer.decode(self.ids[:k], skip_special_tokens=True)) >= self.sent:
                break
            kept.append(token)
        return kept

    def reason(self) -> str:
        if self.stopped:
            return "stop"
        if self.refused:
            return "content_filter"
        reason = self.finished.reason if self.finished else "length"
        return reason if reason in ("stop", "length") else "stop"

    def extra(self, request: GenerationRequest) -> dict[str, Any] | None:
        """The reply's ``actkit`` field: the monitor's scores (of the prompt, and of the tokens kept) and the
        guard's decision; None when the request has neither."""
        out: dict[str, Any] = {}
        head = self.head
        if request.monitor:
            prompt = (head.prompt_scores if head is not None else None) or {}
            kept = self.kept_tokens()
            out["monitor"] = {name: {"prompt": prompt.get(name, []),
                                     "generated": [t.scores[name] for t in kept if t.scores and name in t.scores]}
                              for name in request.monitor}
        if request.guard is not None and head is not None and head.guard is not None:
            score, flagged = head.guard
            out["guard"] = {"score": score, "threshold": request.guard.probe.threshold, "flagged": flagged}
        return out or None


async def events(stream: Stream, disconnected: Disconnected) -> AsyncIterator[Token | Finished]:
    """The engine stream's events, waited for off the event loop; cancels it if the client goes away (checked at
    least every `POLL_S` seconds) or the consumer stops early (a stop string, an error)."""
    done = False
    checked = time.monotonic()
    try:
        while True:
            try:
                batch = await asyncio.to_thread(stream.drain, POLL_S)  # one thread hop for all tokens ready
            except queue.Empty:
                batch = []
            if not batch or time.monotonic() - checked > POLL_S:  # also while tokens flow
                if await disconnected():
                    return
                checked = time.monotonic()
            for event in batch:
                if isinstance(event, Finished):
                    done = True
                yield event
                if done:
                    return
    finally:
        if not done:
            stream.cancel()


class Server:
    """The state behind the routes: the engine, the tokenizer, the vectors and the limits."""

    def __init__(self, engine: Engine, tokenizer: Any, registry: VectorRegistry, *, model_name: str,
                 aliases: tuple[str, ...], limits: Limits, probes: ProbeRegistry | None = None,
                 guard: Guard | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.registry = registry
        self.writes = WritesCache(registry)
        self.probes = probes or ProbeRegistry()
        self.guard = guard
        self.model_name = model_name
        self.names = (model_name, *aliases)
        self.limits = limits

    # ----- requests -----

    def steering(self, body: CompletionRequest | ChatRequest) -> tuple[str, dict[str, Any] | None]:
        """The model name to answer with, and the request's writes (preset first, then its items)."""
        parsed = parse_preset(body.model, self.names)
        if parsed is None:
            raise APIError(404, f"model {body.model!r} does not exist; GET /v1/models lists {self.model_name!r} and "
                           f"its presets (MODEL:VECTOR@COEF)", param="model", code="model_not_found")
        _, preset = parsed
        items: list[Any] = []
        if preset is not None:
            self.registry.get(preset.vector, "model")
            items.append(preset)
        items += parse_steer(body.steer, body.vllm_xargs)
        return body.model, self.writes.get(items)

    def reading(self, body: CompletionRequest | ChatRequest) -> dict[str, Any]:
        """The request's `GenerationRequest` fields for monitoring and the guard."""
        names = parse_monitor(body.monitor, body.vllm_xargs)
        return {"monitor": monitor_probes(names, self.probes, self.registry) if names else None,
                "guard": self.guard}

    def max_new(self, asked: int | None, prompt_len: int, param: str) -> int:
        cap = self.limits.max_new_tokens
        if asked is not None and asked > cap:
            raise APIError(400, f"{param}: at most {cap} tokens per request (got {asked}; the server's "
                           "--max-new-tokens)", param=param, code="invalid_value")
        room = self.limits.context_length - prompt_len
        if room < 0 or (asked is not None and asked > room):
            raise APIError(400, f"the prompt is {prompt_len} tokens and {param}={asked}, more than the model's "
                           f"context of {self.limits.context_length} tokens; shorten the prompt or ask for fewer "
                           "tokens", param="prompt" if room < 1 else param, code="context_length_exceeded")
        return min(cap, room) if asked is None else asked

    def token_ids(self, prompt: str | list[int], param: str) -> list[int]:
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt)["input_ids"])  # as actkit generate tokenizes a prompt
        else:
            vocab = len(self.tokenizer)
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"{param}: token id(s) {bad[:5]} outside the vocabulary (0..{vocab - 1})",
                               param=param, code="invalid_value")
            ids = list(prompt)
        if not ids:
            raise APIError(400, f"{param}: the prompt is empty after tokenization", param=param)
        return ids

    def submit(self, request: GenerationRequest) -> Stream:
        try:
            return self.engine.submit(request)
        except ActkitError as error:
            raise APIError(503, f"the server cannot take this request now: {error}", type="server_error",
                           code="unavailable") from None

    def chat_ids(self, body: ChatRequest) -> list[int]:
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions",
                           param="messages", code="unsupported")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # a template may reject a conversation (roles out of order...)
            raise APIError(400, f"messages: the chat template rejects them ({error})", param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # as actkit generate --chat

    # ----- logprobs -----

    def piece(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def top(self, alternatives: dict[int, float] | None, k: int) -> dict[str, float]:
        ranked = sorted((alternatives or {}).items(), key=lambda kv: -kv[1])[:max(k, 1)]
        return {self.piece(t): float(v) for t, v in ranked}

    def completion_logprobs(self, tokens: list[Token], k: int, prompt: tuple[list[int], Scores | None] | None = None,
                            offset: int = 0) -> dict[str, Any]:
        """OpenAI's legacy logprobs object; with `prompt` (its ids and their scores), the prompt's tokens first
        (the first one's null). Text offsets count from `offset` (a stream's text sent so far)."""
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        rows: list[tuple[int, float | None, dict[str, float] | None]] = []
        if prompt is not None:
            ids, scores = prompt
            for i, (t, (lp, alts)) in enumerate(zip(ids, scores or [(None, {})] * len(ids), strict=False)):
                rows.append((t, lp, None if i == 0 else self.top(alts, k)))
        rows += [(t.id, t.logprob, self.top(t.top_logprobs, k)) for t in tokens]
        position = offset
        for t, lp, top in rows:
            piece = self.piece(t)
            out["tokens"].append(piece)
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append(top)
            out["text_offset"].append(position)
            position += len(piece)
        return out

    def chat_logprobs(self, tokens: list[Token], k: int) -> dict[str, Any]:
        return {"content": [{"token": self.piece(t.id), "logprob": t.logprob,
                             "bytes": list(self.piece(t.id).encode()),
                             "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())}
                                              for s, v in self.top(t.top_logprobs, k).items()][:k]}
                            for t in tokens]}


def _error(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The request body as `model`: a 413 past `MAX_BODY`, a 400 for malformed JSON or a wrong field."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"the body is not valid JSON ({error})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def create_app(engine: Engine, tokenizer: Any, registry: VectorRegistry, *, model_name: str,
               aliases: tuple[str, ...] = (), api_key: str | None = None, max_new_tokens: int = 256,
               probes: ProbeRegistry | None = None, guard: Guard | None = None) -> FastAPI:
    """The FastAPI app serving `engine` (the caller starts it and shuts it down: ``actkit serve`` does both).

    Arguments:
        engine: the generation engine.
        tokenizer: the model's tokenizer (prompts, chat template, decoding).
        registry: the steering vectors requests may name.
        model_name: the name clients give as ``model`` (and ``MODEL:VECTOR@COEF`` presets on it).
        aliases: other names accepted for the model (the spec it was loaded from).
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>`` (else 401).
        max_new_tokens: the most tokens one request may generate.
        probes: the probes requests may monitor with (besides the vectors; `actkit.serve.monitoring`).
        guard: the latent guard every request's prompt goes through, if any.
    """
    server = Server(engine, tokenizer, registry, model_name=model_name, aliases=aliases,
                    limits=Limits(max_new_tokens, engine.context_length), probes=probes, guard=guard)
    app = FastAPI(title="actkit serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    async def authorized(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise APIError(401, "a valid API key is needed: Authorization: Bearer KEY", type="authentication_error",
                           code="invalid_api_key")

    auth = [Depends(authorized)]

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return _error(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return _error(APIError(500, f"internal error: {type(error).__name__}: {error}", type="server_error"))

    @app.exception_handler(404)
    async def not_found(request: Request, error: Exception) -> JSONResponse:
        return _error(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, error: Exception) -> JSONResponse:
        return _error(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                               code="method_not_allowed"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **engine.load()}

    def model_rows() -> list[dict[str, Any]]:
        created = int(time.time())
        rows = [{"id": model_name, "object": "model", "created": created, "owned_by": "actkit"}]
        rows += [{"id": f"{model_name}:{v.name}@{DEFAULT_PRESET_COEF:g}", "object": "model", "created": created,
                  "owned_by": "actkit", "root": model_name, "parent": model_name}
                 for v in registry.vectors.values() if v.relative_ok]
        return rows

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": model_rows()}

    @app.get("/v1/models/{model:path}", dependencies=auth)
    async def model(model: str) -> dict[str, Any]:
        """One model: the served name, a listed preset, or any valid ``MODEL:VECTOR@COEF`` preset."""
        for row in model_rows():
            if row["id"] == model:
                return row
        parsed = parse_preset(model, server.names)
        preset = None if parsed is None else parsed[1]
        if parsed is None or (preset is not None and (preset.vector not in registry.vectors
                                                      or not registry.vectors[preset.vector].relative_ok)):
            raise APIError(404, f"model {model!r} does not exist; GET /v1/models lists them", param="model",
                           code="model_not_found")
        return {"id": model, "object": "model", "created": int(time.time()), "owned_by": "actkit",
                "root": model_name, "parent": model_name}

    @app.get("/v1/steering", dependencies=auth)
    async def steering() -> dict[str, Any]:
        shown = None if guard is None else {"site": guard.probe.site, "action": guard.action,
                                            "threshold": guard.probe.threshold}
        return {"object": "list", "model": model_name, "data": registry.describe(),
                "probes": server.probes.describe(), "guard": shown}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await _body(request, CompletionRequest)
        name, writes = server.steering(body)
        reading = server.reading(body)
        stops = body.stops()
        prompts = body.prompts()
        rows = [server.token_ids(p, "prompt") for p in prompts]
        # echo + logprobs scores the prompt (lm-evaluation-harness); with max_tokens <= 1 the generated token is
        # kept even when it is EOS, so the log-probabilities always end with one generated token, as vLLM's do
        scoring = body.echo and body.logprobs is not None
        max_new = [server.max_new(body.max_tokens, len(ids), "max_tokens") for ids in rows]
        k = body.logprobs or 0
        requests = [GenerationRequest(prompt_ids=ids, max_new_tokens=n, temperature=body.temperature,
                                      top_p=body.top_p, seed=body.seed, writes=writes,
                                      prompt_logprobs=k if scoring else None, logprobs=body.logprobs,
                                      eos_token_ids=frozenset() if body.ignore_eos or (scoring and n <= 1) else None,
                                      **reading)
                    for ids, n in zip(rows, max_new, strict=True)]
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        texts = [p if isinstance(p, str) else server.tokenizer.decode(p) for p in prompts]

        def chunk(index: int, text: str, finish: str | None, logprobs: Any = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            if extra is not None:
                choice["actkit"] = extra
            return {"id": ident, "object": "text_completion", "created": created, "model": name,
                    "choices": [choice]}

        streams = [server.submit(r) for r in requests]
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)

            async def sse() -> AsyncIterator[str]:
                totals = [0, 0]
                try:
                    for i, stream in enumerate(streams):
                        out = Output(server.tokenizer, stops)
                        offset = 0  # of the logprobs' text, as in the whole reply
                        echo = body.echo  # the prompt still to send: at once, or with the first event's scores
                        if echo and not scoring:
                            yield _sse(chunk(i, texts[i], None))
                            echo = False
                        async for event in events(stream, request.is_disconnected):
                            if echo:  # the first chunk carries the prompt's log-probabilities, as vLLM's does
                                scores = server.completion_logprobs([], k, (rows[i], event.prompt_logprobs))
                                offset = _end(scores, offset)
                                yield _sse(chunk(i, texts[i], None, scores))
                                echo = False
                            if isinstance(event, Finished):
                                out.end(event)
                                totals[0] += event.prompt_tokens
                                totals[1] += event.completion_tokens
                                break
                            text = out.push(event)
                            lp: dict[str, Any] | None = None
                            if body.logprobs is not None:
                                lp = server.completion_logprobs([event], k, offset=offset)
                                offset = _end(lp, offset)
                            if text or lp:
                                yield _sse(chunk(i, text, None, lp))
                            if out.stopped:
                                break
                        yield _sse(chunk(i, out.flush(), out.reason(), None, out.extra(requests[i])))
                    if usage:
                        yield _sse({"id": ident, "object": "text_completion", "created": created, "model": name,
                                    "choices": [], "usage": _usage(*totals)})
                    yield "data: [DONE]\n\n"
                finally:
                    for stream in streams:
                        stream.cancel()

            return StreamingResponse(sse(), media_type="text/event-stream")
        choices = []
        totals = [0, 0]
        try:
            for i, stream in enumerate(streams):
                out = await _collect(stream, Output(server.tokenizer, stops), request.is_disconnected,
                                     len(rows[i]))
                finished = out.finished
                if finished is None:
                    return Response(status_code=499)
                if finished.reason == "error":
                    raise APIError(500, f"generation failed: {finished.error}", type="server_error")
                totals[0] += finished.prompt_tokens
                totals[1] += finished.completion_tokens
                text = out.text()[:out.sent] if out.stopped else out.text()
                lp = None
                if body.logprobs is not None:
                    lp = server.completion_logprobs(out.kept_tokens(), k,
                                                    (rows[i], finished.prompt_logprobs) if scoring else None)
                choice = {"index": i, "text": (texts[i] if body.echo else "") + text, "logprobs": lp,
                          "finish_reason": out.reason()}
                extra = out.extra(requests[i])
                if extra is not None:
                    choice["actkit"] = extra
                choices.append(choice)
        finally:
            for stream in streams:
                stream.cancel()
        return JSONResponse({"id": ident, "object": "text_completion", "created": created, "model": name,
                             "choices": choices, "usage": _usage(*totals)})

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(request: Request) -> Response:
        body: ChatRequest = await _body(request, ChatRequest)
        name, writes = server.steering(body)
        reading = server.reading(body)
        stops = body.stops()
        ids = server.chat_ids(body)
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_new = server.max_new(body.max_completion_tokens or body.max_tokens, len(ids), param)
        k = body.top_logprobs or 0
        logprobs = k if body.logprobs else None
        asked = GenerationRequest(prompt_ids=ids, max_new_tokens=max_new, temperature=body.temperature,
                                  top_p=body.top_p, seed=body.seed, writes=writes, logprobs=logprobs,
                                  eos_token_ids=frozenset() if body.ignore_eos else None, **reading)
        stream = server.submit(asked)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None, lp: Any = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
            if extra is not None:
                choice["actkit"] = extra
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [choice]}

        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)

            async def sse() -> AsyncIterator[str]:
                out = Output(server.tokenizer, stops)
                try:
                    yield _sse(chunk({"role": "assistant", "content": ""}, None))
                    async for event in events(stream, request.is_disconnected):
                        if isinstance(event, Finished):
                            out.end(event)
                            break
                        text = out.push(event)
                        lp = server.chat_logprobs([event], k) if body.logprobs else None
                        if text or lp:
                            yield _sse(chunk({"content": text}, None, lp))
                        if out.stopped:
                            break
                    rest = out.flush()
                    yield _sse(chunk({"content": rest} if rest else {}, out.reason(), None, out.extra(asked)))
                    if usage and out.finished is not None:
                        yield _sse({"id": ident, "object": "chat.completion.chunk", "created": created,
                                    "model": name, "choices": [],
                                    "usage": _usage(out.finished.prompt_tokens, out.finished.completion_tokens)})
                    yield "data: [DONE]\n\n"
                finally:
                    stream.cancel()

            return StreamingResponse(sse(), media_type="text/event-stream")
        try:
            out = await _collect(stream, Output(server.tokenizer, stops), request.is_disconnected, len(ids))
        finally:
            stream.cancel()
        finished = out.finished
        if finished is None:
            return Response(status_code=499)
        if finished.reason == "error":
            raise APIError(500, f"generation failed: {finished.error}", type="server_error")
        text = out.text()[:out.sent] if out.stopped else out.text()
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": server.chat_logprobs(out.kept_tokens(), k) if body.logprobs else None,
                  "finish_reason": out.reason()}
        extra = out.extra(asked)
        if extra is not None:
            choice["actkit"] = extra
        return JSONResponse({"id": ident, "object": "chat.completion", "created": created, "model": name,
                             "choices": [choice], "usage": _usage(finished.prompt_tokens, finished.completion_tokens)})

    return app


async def _collect(stream: Stream, out: Output, disconnected: Disconnected, prompt_tokens: int) -> Output:
    """Run a stream to its end (or its first stop string); `out.finished` stays None if the client left."""
    async for event in events(stream, disconnected):
        if isinstance(event, Finished):
            out.end(event)
            break
        if not out.stops:
            out.keep(event)
            continue
        out.push(event)
        if out.stopped:
            break
    if out.stopped and out.finished is None:
        out.end(Finished("stop", prompt_tokens, len(out.tokens)))
    return out


def _end(logprobs: dict[str, Any], start: int) -> int:
    """The text offset just past a legacy logprobs object's last token (`start` when it has none)."""
    if not logprobs["tokens"]:
        return start
    return int(logprobs["text_offset"][-1]) + len(logprobs["tokens"][-1])


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


__all__ = ["MAX_BODY", "Limits", "Output", "Server", "create_app", "events"]
