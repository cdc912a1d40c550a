"""An OpenAI-compatible HTTP API whose generations run through the swarm.

```python
from fastapi import FastAPI
from potluck.dashboard.openai import SwarmBackend, openai_router

backend = SwarmBackend.from_pretrained("smollm2", initial_peers=[BOOT])
app = FastAPI()
app.include_router(openai_router(backend, api_keys={"sk-alice": "alice.key"}))
```

`POST /v1/completions`, `POST /v1/chat/completions` (both with
`"stream": true` as server-sent events) and `GET /v1/models`, with OpenAI's
request, response and error shapes.

Three layers:

- **Pure pieces.** The request models (pydantic) check a request completely
  before anything runs; `StopFilter` cuts text at `stop` strings while it
  streams; `IncrementalText` turns a growing decode into stable pieces;
  `APIError` is an error in OpenAI's shape with its HTTP status.
- **`CompletionBackend`**, the seam: `await backend.complete(job, emit)` runs
  one `GenerationJob`, hands each new piece of text to `emit` (on the event
  loop; `emit` returning False means "stop now"), and returns a `Completion`
  (finish reason and token counts). An error raised before the first `emit`
  becomes the response's status, also for streams.
- **`openai_router`** (HTTP, thin) and **`SwarmBackend`** (the real backend:
  `potluck.client` models, whose synchronous `generate()` runs in a worker
  thread via `anyio.to_thread`, so the router works under hypercorn's trio
  worker, uvicorn, or `httpx.ASGITransport` alike).

Errors (`{"error": {"message", "type", "param", "code"}}`): malformed JSON or
an invalid request 400, a bad API key 401, an unknown model 404, the account
cannot pay for priority 402, the swarm cannot serve the model 503, a swarm
error 502. Every check runs before the backend is called, so a refused
request generates nothing and spends nothing.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.types import Receive, Scope, Send

from potluck.errors import ConfigError, InsufficientBalance, NoRouteError, PotluckError
from potluck.p2p.identity import Identity

if TYPE_CHECKING:
    import torch

    from potluck.client.model import DistributedModelForCausalLM

__all__ = [
    "APIError",
    "ChatTurn",
    "Completion",
    "CompletionBackend",
    "GenerationJob",
    "IncrementalText",
    "StopFilter",
    "SwarmBackend",
    "TextSink",
    "openai_router",
]

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
Priority = Literal["normal", "high"]

#: The header that asks for priority when the body has no `priority` field.
PRIORITY_HEADER = "X-Potluck-Priority"
#: OpenAI accepts at most this many stop strings.
MAX_STOP_STRINGS = 4
#: `max_tokens` of a completion request that gives none (OpenAI's default).
COMPLETION_DEFAULT_MAX_TOKENS = 16


# -- errors -------------------------------------------------------------------


class APIError(PotluckError):
    """A refused request, answered as `{"error": {...}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def api_error(exc: Exception) -> APIError:
    """The OpenAI-shaped error for an exception a backend raised."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InsufficientBalance):
        return APIError(402, str(exc), type="insufficient_quota", code="insufficient_quota")
    if isinstance(exc, NoRouteError):
        return APIError(
            503, f"the swarm cannot serve this now: {exc}", type="server_error", code="no_route"
        )
    if isinstance(exc, ConfigError):
        return APIError(400, str(exc))
    if isinstance(exc, PotluckError):
        return APIError(502, f"the swarm failed: {exc}", type="server_error", code="swarm_error")
    logger.error("completion failed", exc_info=exc)
    return APIError(500, "internal error while generating", type="server_error")


# -- the backend seam -----------------------------------------------------------


@dataclass(frozen=True)
class ChatTurn:
    """One chat message, its content already flattened to text."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True)
class GenerationJob:
    """One generation a backend is asked to run (already checked by the router)."""

    model: str
    #: The text to continue (`/v1/completions`) or the conversation (`/v1/chat/completions`).
    prompt: str | tuple[ChatTurn, ...]
    max_tokens: int
    #: 0 means greedy.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    priority: Priority = "normal"
    #: The identity of the request's API key (the wallet that pays for priority).
    payer: Identity | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2], not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.priority == "high" and self.payer is None:
            raise ConfigError("priority 'high' needs a payer")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Completion:
    """How a generation ended."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    #: The class each server of the route granted ("paid", "normal"...), if known.
    priorities: tuple[str, ...] = ()

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


#: Takes the next piece of generated text, on the event loop; False: stop generating.
TextSink = Callable[[str], bool]


class CompletionBackend(Protocol):
    """Runs generations for `openai_router`."""

    @property
    def models(self) -> Sequence[str]:
        """The model names requests may ask for."""
        ...

    async def complete(self, job: GenerationJob, emit: TextSink) -> Completion:
        """Generate for `job`, calling `emit(piece)` on the event loop for each new
        piece of text (their concatenation is the answer) and stopping soon after
        it returns False. Raise (`APIError`, or a `PotluckError`) before the first
        `emit` to refuse the job."""
        ...


# -- pure text handling ---------------------------------------------------------


class StopFilter:
    """Cuts streamed text at the first of `stops`, holding back what may start one.

    ```python
    f = StopFilter(["\\n\\n"])
    f.feed("Hello\\n") + f.feed("\\nmore")   # "Hello", and f.stopped is True
    ```
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        if any(not s for s in stops):
            raise ConfigError("stop strings must not be empty")
        self.stops = tuple(stops)
        self.stopped = False
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held back) that is sure to be output."""
        if self.stopped:
            return ""
        buffer = self._held + text
        cuts = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            self._held = ""
            return buffer[: min(cuts)]
        hold = max((_overlap(buffer, s) for s in self.stops), default=0)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """What was held back, once the text has ended without a stop string."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a proper start of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class IncrementalText:
    """Stable pieces of a decode that grows token by token.

    `update(decoded)` takes the decode of every token so far and returns the new
    text up to the last whitespace (a word may still change with the next token,
    and an unfinished UTF-8 sequence decodes as U+FFFD); `finish(decoded)` returns
    the rest. The pieces add up to the final decode.
    """

    def __init__(self) -> None:
        self.sent = 0

    def update(self, decoded: str) -> str:
        end = len(decoded)
        while end > self.sent and not decoded[end - 1].isspace():
            end -= 1
        return self._take(decoded, end)

    def finish(self, decoded: str) -> str:
        return self._take(decoded, len(decoded))

    def _take(self, decoded: str, end: int) -> str:
        if end <= self.sent:
            return ""
        piece = decoded[self.sent : end]
        self.sent = end
        return piece


# -- requests -----------------------------------------------------------------


#: Fields this server cannot honour: the values that are harmless, and the refusal.
_UNSUPPORTED: Mapping[str, tuple[tuple[object, ...], str]] = {
    "tools": (([],), "tool calls are not supported"),
    "tool_choice": (("none",), "tool calls are not supported"),
    "functions": (([],), "function calls are not supported"),
    "function_call": (("none",), "function calls are not supported"),
    "response_format": (({"type": "text"},), "only response_format {'type': 'text'} is supported"),
    "logit_bias": (({},), "logit_bias is not supported"),
    "logprobs": ((False,), "logprobs are not supported"),
    "top_logprobs": ((0,), "logprobs are not supported"),
    "echo": ((False,), "echo is not supported"),
    "suffix": (("",), "suffix is not supported"),
    "best_of": ((1,), "best_of is not supported"),
    "presence_penalty": ((0,), "presence_penalty is not supported"),
    "frequency_penalty": ((0,), "frequency_penalty is not supported"),
}


class _Request(BaseModel):
    """Fields shared by both endpoints; unknown fields are ignored unless they
    change the answer in a way this server cannot honour."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str | None = None
    #: Potluck's extension: "high" is paid from the API key's wallet.
    priority: Priority | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are supported")
        return tuple(value)

    def unsupported(self) -> APIError | None:
        """A refusal for the first field set to something this server cannot do."""
        extra = self.model_extra or {}
        for name, (harmless, reason) in _UNSUPPORTED.items():
            if name in extra and extra[name] is not None and extra[name] not in harmless:
                return APIError(400, reason, param=name, code="unsupported_parameter")
        return None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def tokens(self, limit: int) -> tuple[str, int]:
        """The field that sets the number of tokens to generate, and that number."""
        return "max_tokens", self.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS

    def job_prompt(self) -> str | tuple[ChatTurn, ...]:
        raise NotImplementedError


class CompletionRequest(_Request):
    """The body of `POST /v1/completions`."""

    prompt: str

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if not isinstance(value, str):
            raise ValueError("must be a string (or a list of one string)")
        return value

    def job_prompt(self) -> str:
        return self.prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_content(cls, value: Any) -> Any:
        if isinstance(value, list):
            parts = []
            for part in value:
                if not (isinstance(part, dict) and part.get("type") == "text"):
                    raise ValueError("only text content parts are supported")
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs a string 'text'")
                parts.append(part["text"])
            return "".join(parts)
        if not isinstance(value, str):
            raise ValueError("must be a string or a list of text parts")
        return value

    def turn(self) -> ChatTurn:
        return ChatTurn("system" if self.role == "developer" else self.role, self.content)


class ChatCompletionRequest(_Request):
    """The body of `POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def tokens(self, limit: int) -> tuple[str, int]:
        """`max_completion_tokens`, else `max_tokens`, else `limit`."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens or limit

    def job_prompt(self) -> tuple[ChatTurn, ...]:
        return tuple(m.turn() for m in self.messages)


# -- HTTP ---------------------------------------------------------------------


def _param(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return APIError(
            400, f"the request body is not valid JSON: {first['msg']}", code="invalid_json"
        )
    loc = first["loc"]
    message = first["msg"].removeprefix("Value error, ")
    if not loc:
        return APIError(400, f"the request body must be a JSON object ({message})")
    param = _param(loc)
    more = len(exc.errors()) - 1
    tail = f" (and {more} more error{'s' * (more > 1)})" if more else ""
    return APIError(400, f"invalid '{param}': {message}{tail}", param=param, code="invalid_value")


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


@dataclass
class _Reply:
    """Builds the bodies and stream chunks of one answer."""

    chat: bool
    model: str
    created: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: bool = False

    @property
    def _id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.id

    def body(self, text: str, done: Completion) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": done.finish_reason, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": self._id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": done.usage(),
            **_extension(done),
        }

    def _chunk(self, delta: str | None, finish: FinishReason | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["delta"] = {} if delta is None else {"content": delta}
            if not self.started:
                choice["delta"]["role"] = "assistant"
        else:
            choice["text"] = delta or ""
        self.started = True
        return {
            "id": self._id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def piece(self, text: str) -> bytes:
        return _sse(self._chunk(text, None))

    def end(self, done: Completion, *, usage: bool) -> bytes:
        out = _sse({**self._chunk(None, done.finish_reason), **_extension(done)})
        if usage:
            out += _sse({**self._chunk(None, None), "choices": [], "usage": done.usage()})
        return out + DONE


def _extension(done: Completion) -> dict[str, Any]:
    """Potluck's own field: the class each server granted (a bad or unaffordable
    ticket leaves a server at "normal")."""
    return {"potluck": {"priorities": list(done.priorities)}} if done.priorities else {}


class _EventStream(Response):
    """Server-sent events from one generation.

    The generation runs in a task group that lives as long as this response;
    its first event decides the status: an error before any text is answered as
    that error (4xx/5xx JSON), anything else starts the 200 event stream. A
    client that goes away closes the stream, after which the generation's next
    `emit` returns False.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        backend: CompletionBackend,
        job: GenerationJob,
        stop: StopFilter,
        reply: _Reply,
        *,
        usage: bool,
    ) -> None:
        # no Response.__init__: its empty body would declare "content-length: 0"
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})
        self.backend, self.job, self.stop, self.reply, self.usage = backend, job, stop, reply, usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            async def respond() -> None:
                with contextlib.suppress(OSError):  # ASGI 2.4: the client is gone
                    await self._respond(send)
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            tg.start_soon(respond)

    async def _respond(self, send: Send) -> None:
        tx, rx = anyio.create_memory_object_stream[bytes | APIError](max_buffer_size=math.inf)
        async with anyio.create_task_group() as tg, rx:
            tg.start_soon(self._generate, tx)
            first = await rx.receive()  # the producer always sends before closing
            if isinstance(first, APIError):
                error = first.response()
                await send(
                    {
                        "type": "http.response.start",
                        "status": error.status_code,
                        "headers": error.raw_headers,
                    }
                )
                await send({"type": "http.response.body", "body": error.body})
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for item in rx:
                data = _sse(item.body()) if isinstance(item, APIError) else item
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _generate(self, tx: MemoryObjectSendStream[bytes | APIError]) -> None:
        async with tx:

            def put(item: bytes | APIError) -> bool:
                try:
                    tx.send_nowait(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return False  # the response is gone (the client left)
                return True

            def emit(text: str) -> bool:
                piece = self.stop.feed(text)
                if piece and not put(self.reply.piece(piece)):
                    return False
                return not self.stop.stopped

            try:
                done = await self.backend.complete(self.job, emit)
            except Exception as exc:  # noqa: BLE001 - answered in OpenAI's shape
                put(api_error(exc))
                return
            rest = self.stop.flush()
            end = self.reply.end(_settle(done, self.stop), usage=self.usage)
            put((self.reply.piece(rest) if rest else b"") + end)


def _settle(done: Completion, stop: StopFilter) -> Completion:
    if stop.stopped and done.finish_reason != "stop":
        return Completion("stop", done.prompt_tokens, done.completion_tokens)
    return done


@dataclass(frozen=True)
class _Keys:
    """API keys and the identities whose wallets they spend."""

    identities: Mapping[str, Identity]
    allow_anonymous: bool

    def payer(self, request: Request) -> Identity | None:
        """The identity of the request's key (None: anonymous); `APIError` 401 for a
        key that is set but wrong, or a missing one where keys are required."""
        header = request.headers.get("authorization")
        if not self.identities:
            return None  # nothing to check against: any key a tool insists on sending is fine
        if header is None:
            if self.allow_anonymous:
                return None
            raise APIError(
                401,
                "this server needs an API key: send 'Authorization: Bearer <key>'",
                code="missing_api_key",
            )
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(
                401, "the Authorization header must be 'Bearer <key>'", code="invalid_api_key"
            )
        found = None
        for known, identity in self.identities.items():  # constant time per key
            if hmac.compare_digest(known.encode(), key.encode()):
                found = identity
        if found is None:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
        return found


def _load_identity(value: Identity | str | os.PathLike[str]) -> Identity:
    if isinstance(value, Identity):
        return value
    from potluck.ledger.genesis import load_key

    return load_key(Path(value))


def openai_router(
    backend: CompletionBackend,
    *,
    max_tokens_limit: int = 512,
    api_keys: Mapping[str, Identity | str | os.PathLike[str]] | None = None,
    allow_anonymous: bool = True,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """Routes `/v1/completions`, `/v1/chat/completions` and `/v1/models` over `backend`.

    - `max_tokens_limit`: the most tokens one request may ask for (a larger
      `max_tokens` is refused with 400; a chat request without one gets this).
    - `api_keys`: API key -> the account paying for that key's `priority:
      "high"` requests (an `Identity`, or the path of a key file as written by
      `potluck wallet`/`init_swarm`, read now). A request with a key not in the
      map gets 401; one without a key runs at normal priority, or gets 401
      when `allow_anonymous` is False. Without keys, any key is accepted and
      nothing can pay for priority.
    - `clock`: the `created` timestamps.
    """
    if max_tokens_limit < 1:
        raise ConfigError(f"max_tokens_limit must be at least 1, not {max_tokens_limit}")
    keys = _Keys({k: _load_identity(v) for k, v in (api_keys or {}).items()}, allow_anonymous)
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])

    def check(request: Request, body: _Request, payer: Identity | None) -> GenerationJob:
        if (refusal := body.unsupported()) is not None:
            raise refusal
        models = list(backend.models)
        if body.model not in models:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist here; models: {', '.join(models)}",
                param="model",
                code="model_not_found",
            )
        param, max_tokens = body.tokens(max_tokens_limit)
        if max_tokens > max_tokens_limit:
            raise APIError(
                400,
                f"{param} is {max_tokens}, over this server's limit of {max_tokens_limit} tokens",
                param=param,
                code="max_tokens_exceeded",
            )
        priority = body.priority or request.headers.get(PRIORITY_HEADER, "normal").lower()
        if priority not in ("normal", "high"):
            raise APIError(
                400,
                f"{PRIORITY_HEADER} must be 'normal' or 'high', not {priority!r}",
                param="priority",
            )
        if priority == "high" and payer is None:
            if keys.identities:
                raise APIError(
                    401,
                    "priority 'high' is paid from an API key's wallet: send "
                    "'Authorization: Bearer <key>'",
                    param="priority",
                    code="missing_api_key",
                )
            raise APIError(
                400,
                "this server has no API keys, so nothing can pay for priority 'high'",
                param="priority",
            )
        return GenerationJob(
            model=body.model,
            prompt=body.job_prompt(),
            max_tokens=max_tokens,
            temperature=body.temperature or 0.0,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            priority="high" if priority == "high" else "normal",
            payer=payer,
        )

    async def serve(request: Request, kind: type[_Request]) -> Response:
        try:
            payer = keys.payer(request)
            try:
                body = kind.model_validate_json(await request.body())
            except ValidationError as exc:
                raise _validation_error(exc) from None
            job = check(request, body, payer)
        except APIError as refusal:
            return refusal.response()
        reply = _Reply(chat=kind is ChatCompletionRequest, model=body.model, created=int(clock()))
        stop = StopFilter(body.stop)
        if body.stream:
            return _EventStream(backend, job, stop, reply, usage=body.include_usage)
        pieces: list[str] = []

        def emit(text: str) -> bool:
            pieces.append(stop.feed(text))
            return not stop.stopped

        try:
            done = await backend.complete(job, emit)
        except Exception as exc:  # noqa: BLE001 - answered in OpenAI's shape
            return api_error(exc).response()
        pieces.append(stop.flush())
        return JSONResponse(reply.body("".join(pieces), _settle(done, stop)))

    @router.post("/completions", summary="Complete a prompt (OpenAI format)")
    async def completions(request: Request) -> Response:
        return await serve(request, CompletionRequest)

    @router.post("/chat/completions", summary="Answer a conversation (OpenAI format)")
    async def chat_completions(request: Request) -> Response:
        return await serve(request, ChatCompletionRequest)

    @router.get("/models", summary="The models this server runs")
    async def list_models(request: Request) -> Response:
        try:
            keys.payer(request)
        except APIError as refusal:
            return refusal.response()
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "potluck"}
            for m in backend.models
        ]
        return JSONResponse({"object": "list", "data": data})

    return router


# -- the swarm backend ----------------------------------------------------------


class _Streamer:
    """A transformers streamer: counts new tokens and emits stable text pieces."""

    def __init__(self, tokenizer: Any, emit: TextSink) -> None:
        self.tokenizer = tokenizer
        self.emit = emit
        self.tokens: list[int] = []
        self.text = IncrementalText()
        self.prompt_seen = False
        self.halted = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        self._send(self.text.update(self._decode()))

    def end(self) -> None:
        self._send(self.text.finish(self._decode()))

    def _decode(self) -> str:
        decoded: str = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return decoded

    def _send(self, piece: str) -> None:
        if piece and not self.halted and not self.emit(piece):
            self.halted = True

    def should_stop(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """A stopping criterion: True once `emit` asked to stop."""
        import torch

        return torch.full((input_ids.shape[0],), self.halted, dtype=torch.bool)


@dataclass
class _Client:
    """One client model, generating for one request at a time."""

    model: DistributedModelForCausalLM
    lock: threading.Lock = field(default_factory=threading.Lock)


class SwarmBackend:
    """Generates on the swarm with `potluck.client` models: one shared model for
    anonymous requests, and (when it can open them, i.e. with the swarm's genesis)
    one per API-key identity, whose wallet pays for `priority="high"`. Each model
    runs one generation at a time; requests for the same model queue."""

    def __init__(
        self,
        model: DistributedModelForCausalLM,
        *,
        name: str | None = None,
        tokenizer: Any | None = None,
        open_model: Callable[[Identity], DistributedModelForCausalLM] | None = None,
    ) -> None:
        """`model` serves anonymous requests (and all of them without
        `open_model`); `name` is the model name clients ask for (default: the
        checkpoint folder's name, e.g. "smollm2"); `open_model(identity)` opens
        the model of an API key's identity on first use."""
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        self.name = name or Path(str(model.name_or_path)).name
        self.tokenizer = tokenizer
        self._shared = _Client(model)
        self._open_model = open_model
        self._clients: dict[str, _Client] = {}
        self._clients_lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        self._eos = frozenset([eos] if isinstance(eos, int) else (eos or ()))
        self._context = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        initial_peers: Sequence[str],
        genesis: str | Path | None = None,
        name: str | None = None,
        tokenizer: Any | None = None,
        **options: Any,
    ) -> SwarmBackend:
        """Open the shared client model (`AutoDistributedModelForCausalLM.from_pretrained`
        with `options`); with `genesis`, API keys get models of their own that pay
        for priority. `tokenizer` defaults to the checkpoint folder's."""
        from potluck.client.model import AutoDistributedModelForCausalLM

        def open_model(identity: Identity | None) -> DistributedModelForCausalLM:
            return AutoDistributedModelForCausalLM.from_pretrained(
                name_or_path,
                initial_peers=initial_peers,
                genesis=genesis,
                identity=identity,
                **options,
            )

        model = open_model(None)
        try:
            payers = None if genesis is None else open_model
            return cls(model, name=name, tokenizer=tokenizer, open_model=payers)
        except BaseException:
            model.close()
            raise

    @property
    def models(self) -> tuple[str, ...]:
        return (self.name,)

    async def complete(self, job: GenerationJob, emit: TextSink) -> Completion:
        if job.model != self.name:
            raise APIError(
                404,
                f"the model {job.model!r} does not exist here",
                param="model",
                code="model_not_found",
            )
        if job.priority == "high" and self._open_model is None:
            raise APIError(
                400,
                "this server was started without the swarm's genesis, so it "
                "cannot pay for priority 'high'",
                param="priority",
            )

        def emit_from_thread(text: str) -> bool:
            return anyio.from_thread.run_sync(emit, text)

        return await anyio.to_thread.run_sync(self._complete, job, emit_from_thread)

    def close(self) -> None:
        """Close every client model (their libp2p hosts)."""
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in [self._shared, *clients]:
            client.model.close()

    def __enter__(self) -> SwarmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- in a worker thread ---------------------------------------------------

    def _complete(self, job: GenerationJob, emit: TextSink) -> Completion:
        ids = self._encode(job)  # (1, prompt)
        client = self._client(job.payer)
        with client.lock:
            return self._generate(client.model, ids, job, emit)

    def _encode(self, job: GenerationJob) -> torch.Tensor:
        if isinstance(job.prompt, str):
            ids: torch.Tensor = self.tokenizer(job.prompt, return_tensors="pt")["input_ids"]
        else:
            if not getattr(self.tokenizer, "chat_template", None):
                raise APIError(
                    400,
                    f"the model {self.name!r} has no chat template: use /v1/completions",
                    code="no_chat_template",
                )
            messages = [{"role": t.role, "content": t.content} for t in job.prompt]
            try:
                ids = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )["input_ids"]
            except Exception as exc:  # noqa: BLE001 - the template refused the conversation
                raise APIError(
                    400, f"the chat template refused these messages: {exc}", param="messages"
                ) from None
        prompt = int(ids.shape[-1])
        if prompt == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if self._context and prompt + job.max_tokens > self._context:
            raise APIError(
                400,
                f"the prompt ({prompt} tokens) plus max_tokens "
                f"({job.max_tokens}) exceed the model's context of "
                f"{self._context} tokens",
                code="context_length_exceeded",
            )
        return ids

    def _client(self, payer: Identity | None) -> _Client:
        if payer is None or self._open_model is None:
            return self._shared
        with self._clients_lock:
            client = self._clients.get(payer.peer_id)
            if client is None:
                client = self._clients[payer.peer_id] = _Client(self._open_model(payer))
            return client

    def _generate(
        self,
        model: DistributedModelForCausalLM,
        ids: torch.Tensor,
        job: GenerationJob,
        emit: TextSink,
    ) -> Completion:
        import torch
        from transformers import StoppingCriteriaList

        streamer = _Streamer(self.tokenizer, emit)
        kwargs: dict[str, Any] = {
            "max_new_tokens": job.max_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([streamer.should_stop]),
            "priority": job.priority,
            "do_sample": not job.greedy,
        }
        if not job.greedy:
            kwargs.update(temperature=job.temperature, top_p=job.top_p)
        if job.seed is None:
            model.generate(ids, **kwargs)
        else:  # seeded from torch's global generator, restored afterwards
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(job.seed)
                model.generate(ids, **kwargs)
        return Completion(
            self._finish(streamer, job.max_tokens),
            prompt_tokens=int(ids.shape[-1]),
            completion_tokens=len(streamer.tokens),
            priorities=tuple(model.last_session_priorities),
        )

    def _finish(self, streamer: _Streamer, max_tokens: int) -> FinishReason:
        ended = bool(streamer.tokens) and streamer.tokens[-1] in self._eos
        if ended or streamer.halted or len(streamer.tokens) < max_tokens:
            return "stop"
        return "length"
