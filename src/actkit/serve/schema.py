"""The request bodies ``actkit serve`` accepts (pydantic, strict: a wrong type is a 400, never a coercion) and
the OpenAI error object every bad request gets.

The fields are OpenAI's; the ones actkit does not implement are accepted only at their neutral value (``n=1``,
penalties 0, no ``logit_bias``, no ``suffix``), so a client that asks for them learns it at once. Unknown fields
are refused (a misspelt ``max_token`` would otherwise be silently ignored). Steering comes as a top-level
``steer`` list or as ``vllm_xargs: {"steer": "<JSON text>"}`` (see `actkit.serve.steering`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

#: The most stop strings a request may give (OpenAI's limit).
MAX_STOP = 4
#: The most alternatives ``logprobs`` / ``top_logprobs`` may ask for.
MAX_LOGPROBS = 20
#: The most prompts one completions request may hold.
MAX_PROMPTS = 64


class APIError(Exception):
    """A request the server refuses: becomes ``{"error": {"message", "type", "param", "code"}}`` with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(error: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the field."""
    first = error.errors()[0]
    param = str(first["loc"][0]) if first["loc"] else None  # the field (deeper parts name union members)
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field; see the server's request schema"
    return APIError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class _Sampling(_Strict):
    """The fields completions and chat share."""

    model: StrictStr
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = Field(None)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: StrictStr | None = None
    presence_penalty: StrictFloat = Field(0.0, ge=0.0, le=0.0)  # not implemented: only the neutral 0
    frequency_penalty: StrictFloat = Field(0.0, ge=0.0, le=0.0)
    logit_bias: dict[str, Any] | None = Field(None, max_length=0)
    ignore_eos: StrictBool = False  # vLLM's: generate max_tokens tokens, past any end-of-sequence token
    steer: list[Any] | None = None
    monitor: list[Any] | None = None  # probe or vector names (actkit.serve.monitoring)
    vllm_xargs: dict[StrictStr, StrictStr | StrictInt | StrictFloat] | None = None

    def stops(self) -> list[str]:
        """The stop strings as a list (empty strings dropped), at most `MAX_STOP`."""
        given = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(given) > MAX_STOP:
            raise APIError(400, f"stop: at most {MAX_STOP} stop strings (got {len(given)})", param="stop")
        return [s for s in given if s]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a prompt is text or token ids; a list of either is a batch (one choice each)."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(16, ge=0)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    best_of: Literal[1] | None = None
    suffix: None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string, or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "prompt: empty list", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        out: list[str | list[int]] = list(p)  # type: ignore[arg-type]
        if len(out) > MAX_PROMPTS:
            raise APIError(400, f"prompt: at most {MAX_PROMPTS} prompts per request (got {len(out)})",
                           param="prompt")
        return out


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``: the messages go through the tokenizer's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)


__all__ = ["MAX_LOGPROBS", "MAX_PROMPTS", "MAX_STOP", "APIError", "ChatRequest", "CompletionRequest", "Message",
           "StreamOptions", "TextPart", "validation_error"]
