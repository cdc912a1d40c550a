"""Inference sessions: one stream per hop, hidden states through the pipeline.

`InferenceSession` opens a session on every server of a route, then each
`step(hidden)` sends the hidden states of the new tokens through the hops in
order and returns the last hop's output. The client keeps every input it
sent to each hop (`HopSession.history`), so that a replacement server can be
given the whole history as one prefill.

The async classes run on the client's trio thread; `InferenceSession` is the
synchronous face used by generation code.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from types import TracebackType

import torch

from potluck.client.routing import Hop
from potluck.client.runtime import ClientRuntime
from potluck.errors import MessageError, NetworkError, PotluckError, remote_error
from potluck.p2p.framed import FramedStream
from potluck.p2p.host import PotluckHost
from potluck.p2p.protocols import PROTOCOL_INFERENCE
from potluck.wire import (
    CloseSession,
    ErrorReply,
    InferenceStep,
    Message,
    OpenSession,
    SessionOpened,
    StepResult,
)

WIRE_DTYPE = torch.float32


def _check_reply(reply: Message | None, expected: type[Message], peer: str) -> Message:
    if reply is None:
        raise NetworkError(f"server {peer} closed the session stream")
    if isinstance(reply, ErrorReply):
        raise remote_error(reply.code, f"server {peer}: {reply.message}")
    if not isinstance(reply, expected):
        raise MessageError(
            f"server {peer} answered {type(reply).__name__}, not {expected.__name__}"
        )
    return reply


class HopSession:
    """One server's part of an inference session (async, on the trio thread)."""

    def __init__(self, hop: Hop, max_length: int) -> None:
        self.hop = hop
        self.max_length = max_length
        self.session_id = secrets.token_hex(16)
        self.stream: FramedStream | None = None
        self.step = 0
        self.position = 0
        self.history: list[torch.Tensor] = []  # inputs sent, for replay

    async def open(self, host: PotluckHost) -> None:
        server = self.hop.server
        self.stream = await host.open_stream(server.peer_id, PROTOCOL_INFERENCE, addrs=server.addrs)
        await self.stream.send(
            OpenSession(self.session_id, self.hop.start, self.hop.end, self.max_length)
        )
        _check_reply(await self.stream.receive(), SessionOpened, server.peer_id)

    async def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, seq, hidden) -> the hop's output, same shape."""
        if self.stream is None:
            raise NetworkError("session is not open")
        hidden = hidden.to(WIRE_DTYPE).contiguous()
        await self.stream.send(InferenceStep(self.session_id, self.step, self.position, hidden))
        reply = _check_reply(await self.stream.receive(), StepResult, self.hop.peer_id)
        assert isinstance(reply, StepResult)
        if reply.step != self.step or reply.hidden.shape != hidden.shape:
            raise MessageError(
                f"server {self.hop.peer_id} answered step {reply.step} with shape "
                f"{tuple(reply.hidden.shape)} for step {self.step} of shape {tuple(hidden.shape)}"
            )
        self.history.append(hidden)
        self.step += 1
        self.position += hidden.shape[1]
        return reply.hidden

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        try:
            await stream.send(CloseSession(self.session_id))
            await stream.receive()
        except PotluckError:
            pass
        await stream.close()


class InferenceSession:
    """A session through every hop of a route; synchronous, for generation code."""

    def __init__(self, runtime: ClientRuntime, route: Sequence[Hop], max_length: int) -> None:
        self.runtime = runtime
        self.route = list(route)
        self.max_length = max_length
        self.hops = [HopSession(hop, max_length) for hop in self.route]
        self.position = 0
        self._closed = False
        try:
            runtime.run(self._open)
        except BaseException:
            self.close()
            raise

    async def _open(self) -> None:
        for hop in self.hops:
            await hop.open(self.runtime.host)

    async def _step(self, hidden: torch.Tensor) -> torch.Tensor:
        for hop in self.hops:
            hidden = await hop.forward(hidden)
        return hidden

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Send (batch, seq, hidden) states of new tokens through all hops."""
        if self._closed:
            raise NetworkError("the inference session is closed")
        if hidden.ndim != 3:
            raise MessageError(f"hidden states must be (batch, seq, hidden), got {hidden.shape}")
        if self.position + hidden.shape[1] > self.max_length:
            raise MessageError(
                f"session max_length is {self.max_length}; "
                f"{self.position + hidden.shape[1]} tokens asked"
            )
        out = self.runtime.run(self._step, hidden)
        self.position += hidden.shape[1]
        return out

    async def _close(self) -> None:
        for hop in self.hops:
            await hop.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(PotluckError):
            self.runtime.run(self._close)

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
