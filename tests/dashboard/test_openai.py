"""The OpenAI-compatible API: request checks and shapes over an in-process fake
backend, `SwarmBackend`'s threading over a fake model, and (slow) the same greedy
answer as the Python client from a real SmolLM2 swarm, sent with plain httpx."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import anyio.lowlevel
import httpx
import pytest
import torch
import trio
from fastapi import FastAPI

from potluck.dashboard.openai import (
    APIError,
    ChatTurn,
    Completion,
    GenerationJob,
    IncrementalText,
    StopFilter,
    SwarmBackend,
    TextSink,
    openai_router,
)
from potluck.errors import InsufficientBalance, NoRouteError
from potluck.p2p.identity import Identity
from potluck.testing.aio import run_bounded

ALICE = Identity.generate()
BOB = Identity.generate()
KEYS = {"sk-alice": ALICE, "sk-bob": BOB}
CREATED = 1_700_000_000


class FakeBackend:
    """Answers every job with `pieces` (one token each), recording what it ran."""

    models = ("smollm2", "tiny")

    def __init__(
        self,
        pieces: Sequence[str] = ("Hello", " there", ",", " friend", "."),
        error: Exception | None = None,
        fail_after: int | None = None,
    ) -> None:
        self.pieces = pieces
        self.error = error
        self.fail_after = fail_after
        self.jobs: list[GenerationJob] = []
        self.emitted = 0

    async def complete(self, job: GenerationJob, emit: TextSink) -> Completion:
        if self.error is not None:
            raise self.error
        self.jobs.append(job)
        sent = 0
        for piece in self.pieces[: job.max_tokens]:
            await anyio.lowlevel.checkpoint()
            if sent == self.fail_after:
                raise NoRouteError("after 30 s: no known server covers block 4")
            sent += 1
            self.emitted += 1
            if not emit(piece):
                break
        reason: Literal["stop", "length"] = "length" if sent == job.max_tokens else "stop"
        return Completion(reason, prompt_tokens=7, completion_tokens=sent)


def make_app(backend: Any, **options: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(openai_router(backend, clock=lambda: CREATED, **options))
    return app


Call = Callable[[httpx.AsyncClient], Awaitable[None]]


def with_client(app: FastAPI, test: Call, timeout: float = 30.0) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://potluck") as client:
            await test(client)

    run_bounded(main, timeout)


def post(
    app: FastAPI,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One request; `body` is sent as JSON, or as is if it is bytes."""
    out: list[httpx.Response] = []

    async def call(client: httpx.AsyncClient) -> None:
        if isinstance(body, bytes):
            out.append(await client.post(path, content=body, headers=headers))
        else:
            out.append(await client.post(path, json=body, headers=headers))

    with_client(app, call)
    return out[0]


def events(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, "[DONE]" as is."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    out: list[Any] = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def chat(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], **extra}


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error
    return error


# -- pure pieces ------------------------------------------------------------------


def test_stop_filter_cuts_at_a_stop_string_split_across_pieces() -> None:
    f = StopFilter(["\n\n", "END"])
    assert f.feed("Hello\n") == "Hello"
    assert not f.stopped
    assert f.feed("\nmore") == ""
    assert f.stopped
    assert f.feed("ignored") == "" and f.flush() == ""


def test_stop_filter_releases_a_false_alarm_and_flushes_the_rest() -> None:
    f = StopFilter(["END"])
    pieces = [f.feed(p) for p in ("the EN", "ding E")] + [f.flush()]
    assert pieces == ["the ", "ENding ", "E"] and not f.stopped


def test_stop_filter_without_stops_passes_everything() -> None:
    f = StopFilter()
    assert f.feed("a") + f.feed("b") + f.flush() == "ab"
    with pytest.raises(Exception, match="empty"):
        StopFilter([""])


def test_incremental_text_holds_back_the_last_word_and_adds_up() -> None:
    t = IncrementalText()
    assert t.update("Hel") == ""
    assert t.update("Hello wor") == "Hello "
    assert t.update("Hello world\n") == "world\n"
    assert t.update("Hello world\n\ufffd") == ""
    assert t.finish("Hello world\nü") == "ü"


def test_a_generation_job_checks_itself() -> None:
    with pytest.raises(Exception, match="max_tokens"):
        GenerationJob(model="m", prompt="x", max_tokens=0)
    with pytest.raises(Exception, match="payer"):
        GenerationJob(model="m", prompt="x", max_tokens=1, priority="high")


# -- shapes -------------------------------------------------------------------------


def test_chat_completion_in_the_openai_format() -> None:
    backend = FakeBackend()
    r = post(make_app(backend), "/v1/chat/completions", chat(max_tokens=3))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion" and body["created"] == CREATED
    assert body["model"] == "smollm2"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there,"},
            "finish_reason": "length",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    (job,) = backend.jobs
    assert job.prompt == (ChatTurn("user", "Say hello."),)
    assert job.greedy and job.priority == "normal" and job.payer is None


def test_completion_in_the_openai_format_with_its_defaults() -> None:
    backend = FakeBackend()
    r = post(make_app(backend), "/v1/completions", {"model": "tiny", "prompt": ["Once"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello there, friend."
    assert body["choices"][0]["finish_reason"] == "stop"
    (job,) = backend.jobs
    assert job.prompt == "Once" and job.model == "tiny" and job.max_tokens == 16


def test_chat_streams_chunks_that_add_up_and_end_with_done() -> None:
    r = post(
        make_app(FakeBackend()),
        "/v1/chat/completions",
        chat(stream=True, stream_options={"include_usage": True}),
    )
    assert r.status_code == 200, r.text
    *chunks, usage, done = events(r)
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in [*chunks, usage]}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello there, friend."
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5


def test_completion_streams_text_chunks() -> None:
    r = post(
        make_app(FakeBackend()),
        "/v1/completions",
        {"model": "tiny", "prompt": "Once", "stream": True, "max_tokens": 2},
    )
    *chunks, done = events(r)
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]


def test_stop_strings_cut_the_answer_and_stop_the_backend() -> None:
    backend = FakeBackend()
    app = make_app(backend)
    r = post(app, "/v1/chat/completions", chat(stop=[" fri", "zzz"]))
    assert r.json()["choices"][0]["message"]["content"] == "Hello there,"
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert backend.emitted == 4  # the backend was told to stop at the piece that matched
    r = post(app, "/v1/chat/completions", chat(stop="the", stream=True))
    chunks = events(r)[:-1]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_models_are_listed() -> None:
    out: list[httpx.Response] = []

    async def call(client: httpx.AsyncClient) -> None:
        out.append(await client.get("/v1/models"))

    with_client(make_app(FakeBackend()), call)
    assert [m["id"] for m in out[0].json()["data"]] == ["smollm2", "tiny"]


def test_sampling_options_reach_the_backend() -> None:
    backend = FakeBackend()
    body = chat(temperature=0.7, top_p=0.9, seed=5, max_completion_tokens=2, user="u")
    assert post(make_app(backend), "/v1/chat/completions", body).status_code == 200
    (job,) = backend.jobs
    assert (job.temperature, job.top_p, job.seed, job.max_tokens) == (0.7, 0.9, 5, 2)
    assert not job.greedy


# -- refusals: a 4xx with a clear message, and nothing runs -------------------------


def test_malformed_json_is_400() -> None:
    backend = FakeBackend()
    app = make_app(backend)
    error = assert_error(
        post(app, "/v1/chat/completions", b'{"model": "smollm2", '), 400, "not valid JSON"
    )
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert_error(post(app, "/v1/completions", b"[1, 2]"), 400, "must be a JSON object")
    assert_error(post(app, "/v1/completions", b""), 400, "not valid JSON")
    assert backend.jobs == []


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/chat/completions", {"model": "smollm2"}, "messages", ["Field required"]),
        ("/v1/chat/completions", chat(max_tokens="many"), "max_tokens", ["integer"]),
        ("/v1/chat/completions", chat(max_tokens=0), "max_tokens", ["greater than"]),
        ("/v1/chat/completions", chat(temperature=3), "temperature", ["less than"]),
        ("/v1/chat/completions", chat(n=2), "n", ["only n=1"]),
        ("/v1/chat/completions", chat(stop=["a"] * 5), "stop", ["at most 4"]),
        ("/v1/chat/completions", chat(priority="urgent"), "priority", ["'normal' or 'high'"]),
        (
            "/v1/chat/completions",
            {"model": "smollm2", "messages": [{"role": "user"}]},
            "messages[0].content",
            ["Field required"],
        ),
        (
            "/v1/chat/completions",
            {
                "model": "smollm2",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "messages[0].content",
            ["only text"],
        ),
        (
            "/v1/chat/completions",
            {"model": "smollm2", "messages": [{"role": "pirate", "content": "arr"}]},
            "messages[0].role",
            ["Input should be"],
        ),
        ("/v1/chat/completions", chat(tools=[{"type": "function"}]), "tools", ["tool calls"]),
        ("/v1/completions", {"model": "tiny", "prompt": [1, 2]}, "prompt", ["a string"]),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "logprobs": 3},
            "logprobs",
            ["logprobs"],
        ),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    path: str, body: dict[str, Any], param: str, words: list[str]
) -> None:
    backend = FakeBackend()
    error = assert_error(post(make_app(backend), path, body), 400, *words)
    assert error["param"] == param
    assert param in error["message"] or error["code"] == "unsupported_parameter"
    assert backend.jobs == []


def test_an_unknown_model_is_404_listing_the_known_ones() -> None:
    backend = FakeBackend()
    r = post(make_app(backend), "/v1/chat/completions", {**chat(), "model": "gpt-4o"})
    error = assert_error(r, 404, "'gpt-4o'", "smollm2", "tiny")
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert backend.jobs == []


def test_max_tokens_over_the_limit_is_400_naming_the_limit() -> None:
    backend = FakeBackend()
    app = make_app(backend, max_tokens_limit=64)
    error = assert_error(
        post(app, "/v1/chat/completions", chat(max_tokens=65)), 400, "65", "limit of 64"
    )
    assert error["param"] == "max_tokens" and error["code"] == "max_tokens_exceeded"
    r = post(
        app, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1000, "stream": True}
    )
    assert_error(r, 400, "limit of 64")
    assert backend.jobs == []
    assert post(app, "/v1/chat/completions", chat()).status_code == 200
    assert backend.jobs[0].max_tokens == 64  # a chat without max_tokens gets the limit


def test_a_bad_api_key_is_401_even_where_anonymous_requests_are_allowed() -> None:
    backend = FakeBackend()
    app = make_app(backend, api_keys=KEYS)
    for headers in (
        {"Authorization": "Bearer sk-mallory"},
        {"Authorization": "sk-alice"},
        {"Authorization": "Bearer "},
    ):
        r = post(app, "/v1/chat/completions", chat(), headers=headers)
        error = assert_error(r, 401)
        assert error["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        # a bad key is reported first, even for a body that is also wrong
        assert_error(post(app, "/v1/completions", b"{", headers=headers), 401)
    assert backend.jobs == []
    assert post(app, "/v1/chat/completions", chat()).status_code == 200  # anonymous
    assert backend.jobs[0].payer is None


def test_keys_can_be_required() -> None:
    backend = FakeBackend()
    app = make_app(backend, api_keys=KEYS, allow_anonymous=False)
    assert_error(post(app, "/v1/chat/completions", chat()), 401, "needs an API key")
    r = post(app, "/v1/chat/completions", chat(), headers={"Authorization": "Bearer sk-bob"})
    assert r.status_code == 200 and backend.jobs[0].payer == BOB


def test_priority_is_paid_by_the_key_and_needs_one() -> None:
    backend = FakeBackend()
    app = make_app(backend, api_keys=KEYS)
    alice = {"Authorization": "Bearer sk-alice"}
    assert post(app, "/v1/chat/completions", chat(priority="high"), headers=alice).is_success
    assert post(
        app,
        "/v1/completions",
        {"model": "tiny", "prompt": "x"},
        headers={**alice, "X-Potluck-Priority": "high"},
    ).is_success
    assert post(app, "/v1/completions", {"model": "tiny", "prompt": "x"}, headers=alice).is_success
    assert [(j.priority, j.payer) for j in backend.jobs] == [
        ("high", ALICE),
        ("high", ALICE),
        ("normal", ALICE),
    ]
    backend.jobs.clear()
    assert_error(post(app, "/v1/chat/completions", chat(priority="high")), 401, "API key")
    r = post(
        make_app(backend),
        "/v1/chat/completions",
        chat(priority="high"),
        headers={"Authorization": "Bearer anything"},
    )
    assert_error(r, 400, "no API keys")
    assert backend.jobs == []


def test_api_keys_may_name_key_files(tmp_path: Path) -> None:
    from potluck.p2p.identity import write_key

    write_key(tmp_path / "alice.key", ALICE)
    backend = FakeBackend()
    app = make_app(backend, api_keys={"sk-alice": tmp_path / "alice.key"})
    r = post(app, "/v1/chat/completions", chat(), headers={"Authorization": "Bearer sk-alice"})
    assert r.status_code == 200 and backend.jobs[0].payer == ALICE


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (NoRouteError("no known server covers block 3"), 503, "server_error"),
        (InsufficientBalance("a paid ticket costs 40 points"), 402, "insufficient_quota"),
        (
            APIError(400, "prompt too long", code="context_length_exceeded"),
            400,
            "invalid_request_error",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_backend_refusals_before_any_text_get_their_status(
    error: Exception, status: int, kind: str, stream: bool
) -> None:
    r = post(make_app(FakeBackend(error=error)), "/v1/chat/completions", chat(stream=stream))
    assert assert_error(r, status, str(error))["type"] == kind


def test_a_failure_after_the_first_text_ends_the_stream_with_an_error_event() -> None:
    r = post(make_app(FakeBackend(fail_after=2)), "/v1/chat/completions", chat(stream=True))
    assert r.status_code == 200
    *chunks, last = events(r)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Hello there"
    assert last["error"]["code"] == "no_route" and "block 4" in last["error"]["message"]
    r = post(make_app(FakeBackend(fail_after=2)), "/v1/chat/completions", chat())
    assert_error(r, 503, "block 4")


# -- SwarmBackend over a fake model: threads, halting, finish reasons ---------------


EOS = 0


class CharTokenizer:
    """One token per character; token 0 is the end of sequence."""

    chat_template = "fake"

    def __call__(self, text: str, return_tensors: str) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([[ord(c) for c in text]])}

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return self(text, return_tensors="pt")

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids if i != EOS)


class ScriptedModel:
    """Duck-types `DistributedModelForCausalLM.generate`: 'generates' `answer` then EOS,
    taking `delay` seconds per token."""

    name_or_path = "/models/fake"

    def __init__(self, answer: str, *, delay: float = 0.0, context: int = 128) -> None:
        self.answer = [ord(c) for c in answer] + [EOS]
        self.delay = delay
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.calls: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self.tokens_run = 0
        self.finished = threading.Event()
        self.last_session_priorities: list[str] = []
        self.closed = False

    def generate(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls.append(kwargs)
        self.threads.add(threading.current_thread().name)
        self.last_session_priorities = ["paid" if kwargs["priority"] == "high" else "normal"]
        self.finished.clear()
        streamer, stopping = kwargs["streamer"], kwargs["stopping_criteria"]
        streamer.put(ids)
        out = ids
        for token in self.answer[: kwargs["max_new_tokens"]]:
            time.sleep(self.delay)
            self.tokens_run += 1
            out = torch.cat([out, torch.tensor([[token]])], dim=1)
            done = bool(stopping(out, None).all()) or token == EOS
            streamer.put(torch.tensor([token]))
            if done:
                break
        streamer.end()
        self.finished.set()
        return out

    def close(self) -> None:
        self.closed = True


def swarm_backend(
    answer: str = "Paris is the capital. More text follows here.",
    model: ScriptedModel | None = None,
    **kwargs: Any,
) -> tuple[SwarmBackend, ScriptedModel]:
    model = model or ScriptedModel(answer)
    return SwarmBackend(model, tokenizer=CharTokenizer(), **kwargs), model  # type: ignore[arg-type]


def test_swarm_backend_generates_in_a_worker_thread() -> None:
    backend, model = swarm_backend()
    app = make_app(backend)
    r = post(app, "/v1/completions", {"model": "fake", "prompt": "Q", "max_tokens": 8})
    body = r.json()
    assert body["choices"][0]["text"] == "Paris is"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9}
    r = post(app, "/v1/chat/completions", {**chat(stream=True, max_tokens=60), "model": "fake"})
    chunks = events(r)[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Paris is the capital. More text follows here."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # the model's EOS
    assert len(chunks) > 5  # word by word, not all at once
    assert model.calls[0]["do_sample"] is False and model.calls[0]["priority"] == "normal"
    assert threading.current_thread().name not in model.threads
    backend.close()
    assert model.closed


def test_swarm_backend_halts_the_generation_at_a_stop_string() -> None:
    backend, _ = swarm_backend()
    r = post(
        make_app(backend),
        "/v1/completions",
        {"model": "fake", "prompt": "Q", "max_tokens": 40, "stop": "capital"},
    )
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("Paris is the ", "stop")
    # "capital." is only released at the next space; one more token runs after that
    assert r.json()["usage"]["completion_tokens"] == len("Paris is the capital. ") + 1


def test_swarm_backend_passes_sampling_options() -> None:
    backend, model = swarm_backend()
    body = {"model": "fake", "prompt": "Q", "temperature": 0.5, "top_p": 0.8, "seed": 1}
    assert post(make_app(backend), "/v1/completions", body).status_code == 200
    assert {k: model.calls[0][k] for k in ("do_sample", "temperature", "top_p")} == {
        "do_sample": True,
        "temperature": 0.5,
        "top_p": 0.8,
    }


class SamplingModel(ScriptedModel):
    """Draws its answer from torch's global generator, like sampling does."""

    def generate(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.answer = [*torch.randint(ord("a"), ord("z"), (6,)).tolist(), EOS]
        return super().generate(ids, **kwargs)


def test_a_seed_repeats_a_sample_and_no_seed_does_not() -> None:
    backend, _ = swarm_backend(model=SamplingModel(""))
    app = make_app(backend)

    def sample(**extra: Any) -> str:
        body = {"model": "fake", "prompt": "Q", "temperature": 1.0, **extra}
        text: str = post(app, "/v1/completions", body).json()["choices"][0]["text"]
        return text

    assert sample(seed=7) == sample(seed=7) != sample(seed=8)
    assert len({sample() for _ in range(3)}) == 3


def test_swarm_backend_refuses_before_generating() -> None:
    backend, model = swarm_backend()
    app = make_app(backend, api_keys=KEYS, max_tokens_limit=100)
    r = post(app, "/v1/completions", {"model": "fake", "prompt": "Q" * 40, "max_tokens": 90})
    assert_error(r, 400, "context of 128 tokens")
    r = post(
        app,
        "/v1/completions",
        {"model": "fake", "prompt": "Q", "priority": "high"},
        headers={"Authorization": "Bearer sk-alice"},
    )
    assert_error(r, 400, "genesis")
    assert model.calls == []


def test_swarm_backend_opens_one_model_per_key_identity() -> None:
    opened: dict[str, ScriptedModel] = {}

    def open_model(identity: Identity) -> Any:
        opened[identity.peer_id] = ScriptedModel(f"paid by {identity.peer_id[-4:]}")
        return opened[identity.peer_id]

    backend, shared = swarm_backend(open_model=open_model)
    app = make_app(backend, api_keys=KEYS)
    for key in ("sk-alice", "sk-alice", "sk-bob"):
        r = post(
            app,
            "/v1/completions",
            {"model": "fake", "prompt": "Q", "priority": "high"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.json()["choices"][0]["text"].startswith("paid by")
        assert r.json()["potluck"] == {"priorities": ["paid"]}  # what the servers granted
    r = post(
        app,
        "/v1/chat/completions",
        {**chat(stream=True, max_tokens=3), "model": "fake", "priority": "high"},
        headers={"Authorization": "Bearer sk-bob"},
    )
    assert events(r)[-2]["potluck"] == {"priorities": ["paid"]}
    assert post(app, "/v1/completions", {"model": "fake", "prompt": "Q"}).is_success
    assert set(opened) == {ALICE.peer_id, BOB.peer_id}
    assert len(opened[ALICE.peer_id].calls) == 2 and len(opened[BOB.peer_id].calls) == 2
    assert len(shared.calls) == 1
    assert opened[ALICE.peer_id].calls[0]["priority"] == "high"
    backend.close()
    assert all(m.closed for m in opened.values())


def test_streams_over_http_under_hypercorn_and_stops_when_the_client_leaves() -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    model = ScriptedModel("word " * 400, delay=0.01, context=4096)
    backend, _ = swarm_backend(model=model)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    body = {**chat(stream=True, max_tokens=1000), "model": "fake"}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            binds = await nursery.start(
                functools.partial(
                    serve,
                    make_app(backend, max_tokens_limit=1000),  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=shutdown.wait,
                )
            )
            async with (
                httpx.AsyncClient(base_url=binds[0]) as client,
                client.stream("POST", "/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                assert "content-length" not in r.headers
                seen = [line async for line in _first_lines(r, 3)]
            assert all(line.startswith("data: {") for line in seen)
            while not model.finished.is_set():  # the client left: the generation stops
                await trio.sleep(0.01)
            shutdown.set()

    run_bounded(main, 30)
    assert 3 <= model.tokens_run < 100


async def _first_lines(response: httpx.Response, n: int) -> AsyncIterator[str]:
    count = 0
    async for line in response.aiter_lines():
        if line:
            yield line
            count += 1
            if count == n:
                return


# -- the real swarm ---------------------------------------------------------------


DASHBOARD = {}  # the bootstrap's dashboard URL, set by `smol_swarm`


@pytest.fixture(scope="module")
def smol_swarm(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bootstrap serving the dashboard with `--openai-model smollm2`, and one server."""
    import socket

    from potluck.testing.swarm import LocalSwarm

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with LocalSwarm(tmp_path_factory.mktemp("openai")) as local:
        boot = local.start_node(
            "boot", extra=["--dashboard", f"127.0.0.1:{port}", "--openai-model", "smollm2"]
        )
        local.start_node("s0", model="smollm2", blocks="0:30", extra=["--compute-threads", "1"])
        DASHBOARD["url"] = f"http://127.0.0.1:{port}"
        yield boot.addr


@pytest.mark.slow
def test_openai_requests_get_the_python_clients_greedy_answer(smol_swarm: str) -> None:
    from transformers import AutoTokenizer

    from potluck.client import AutoDistributedModelForCausalLM

    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    prompt = "The capital of France is"
    tokens = 20
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", initial_peers=[smol_swarm])
    try:
        tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
        expected_chat = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        plain = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(plain, max_new_tokens=tokens, do_sample=False)
        expected_text = tokenizer.decode(out[0, plain.shape[1] :], skip_special_tokens=True)
    finally:
        model.close()
    assert expected_chat.strip() and expected_text.strip()

    backend = SwarmBackend.from_pretrained("smollm2", initial_peers=[smol_swarm])
    results: dict[str, httpx.Response] = {}

    async def calls(client: httpx.AsyncClient) -> None:
        body = {"model": "smollm2", "messages": messages, "max_tokens": tokens}
        results["chat"] = await client.post("/v1/chat/completions", json=body)
        results["stream"] = await client.post("/v1/chat/completions", json={**body, "stream": True})
        results["text"] = await client.post(
            "/v1/completions", json={"model": "smollm2", "prompt": prompt, "max_tokens": tokens}
        )

    try:
        with_client(make_app(backend), calls, timeout=120)
    finally:
        backend.close()
    chat_body = results["chat"].json()
    assert chat_body["choices"][0]["message"]["content"] == expected_chat
    assert chat_body["usage"] == {
        "prompt_tokens": ids.shape[1],
        "completion_tokens": tokens,
        "total_tokens": ids.shape[1] + tokens,
    }
    chunks = events(results["stream"])
    assert chunks[-1] == "[DONE]"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert streamed == expected_chat
    assert len(chunks) > 3
    assert chunks[-2]["choices"][0]["finish_reason"] == chat_body["choices"][0]["finish_reason"]
    assert results["text"].json()["choices"][0]["text"] == expected_text

    # the same request over real HTTP to the node started with --openai-model
    body = {"model": "smollm2", "messages": messages, "max_tokens": tokens}
    reply = httpx.post(f"{DASHBOARD['url']}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == expected_chat


class ByteTokenizer:
    """UTF-8 bytes as token ids (for the tiny random model, vocab 384)."""

    def __call__(self, text: str, return_tensors: str) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([list(text.encode())])}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode(errors="replace")


@pytest.mark.slow
def test_a_key_pays_for_priority_from_its_wallet(tiny_model: Path, tmp_path: Path) -> None:
    from potluck.ledger.genesis import Genesis, load_key
    from potluck.testing.swarm import LocalSwarm, ledger_genesis, with_wallet

    genesis_path, validator = ledger_genesis(
        tmp_path / "swarm", tiny_model, "openai", spot_check_rate=0.0, priority_price=10
    )
    genesis = Genesis.load(genesis_path)
    fast = ["--announce-interval", "0.5", "--announce-ttl", "3", "--ledger-sync-interval", "1"]
    alice = {"Authorization": "Bearer sk-alice"}
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 8}
    with LocalSwarm(tmp_path / "nodes") as local:
        flags = ["--genesis", str(genesis_path), *fast]
        boot = local.start_node("boot", extra=flags)
        local.start_node("server", model=str(tiny_model), blocks="0:6", extra=flags)
        with_wallet(
            boot.addr,
            genesis,
            load_key(validator),
            lambda wallet: wallet.grant(ALICE.public_bytes.hex(), 1000),
        )
        backend = SwarmBackend.from_pretrained(
            tiny_model,
            initial_peers=[boot.addr],
            genesis=genesis_path,
            name="tiny",
            tokenizer=ByteTokenizer(),
        )
        try:
            app = make_app(backend, api_keys=KEYS)
            paid = post(app, "/v1/completions", {**body, "priority": "high"}, headers=alice)
            normal = post(app, "/v1/completions", body, headers=alice)
            anonymous = post(app, "/v1/completions", body)
            refused = post(app, "/v1/completions", {**body, "priority": "high"})
        finally:
            backend.close()
        state = with_wallet(boot.addr, genesis, ALICE, lambda wallet: wallet.state())
    assert paid.json()["potluck"] == {"priorities": ["paid"]}, paid.text
    assert paid.json()["usage"]["completion_tokens"] == 8
    assert normal.json()["potluck"] == anonymous.json()["potluck"] == {"priorities": ["normal"]}
    assert_error(refused, 401, "API key")
    # the wallet took the grant, then paid one ticket (a refund may still be on its way)
    assert 0 < state.balance < 1000 and state.seq >= 2
