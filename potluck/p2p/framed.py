"""Whole messages over a libp2p stream.

`stream.read(n)` returns at most `n` bytes, so every message is framed
(`potluck.wire.framing`) and read exactly: first the 8-byte header, which is
checked against the maximum frame size before a single body byte is read,
then exactly the body. Errors are typed: a broken or closed stream is a
`NetworkError`, a silent peer a `PeerTimeout`, bad bytes a `WireError`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamError

from potluck.errors import NetworkError, PeerTimeout
from potluck.wire import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    Message,
    decode_message,
    encode_frame,
    encode_message,
    parse_header,
)


class FramedStream:
    """A libp2p stream that sends and receives whole `potluck.wire` messages."""

    def __init__(
        self,
        stream: Any,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        timeout: float = 60.0,
    ) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self.timeout = timeout

    @property
    def remote_peer(self) -> str:
        """The base58 peer ID at the other end."""
        return str(self.stream.muxed_conn.peer_id.to_base58())

    async def _read_exactly(self, n: int) -> bytes:
        chunks: list[bytes] = []
        remaining = n
        while remaining:
            try:
                chunk = await self.stream.read(remaining)
            except StreamError as exc:
                raise NetworkError(f"stream from {self.remote_peer} broke: {exc}") from exc
            if not chunk:
                raise NetworkError(f"stream from {self.remote_peer} closed mid-message")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    async def receive_bytes(self) -> bytes | None:
        """The next frame's payload, or None if the peer closed the stream cleanly."""
        with trio.move_on_after(self.timeout) as scope:
            try:
                first = await self.stream.read(HEADER_SIZE)
            except StreamError:
                return None
            if not first:
                return None
            header = first
            if len(header) < HEADER_SIZE:
                header += await self._read_exactly(HEADER_SIZE - len(header))
            length = parse_header(header, self.max_frame)
            return await self._read_exactly(length) if length else b""
        assert scope.cancelled_caught
        raise PeerTimeout(f"peer {self.remote_peer} sent nothing for {self.timeout:.0f} s")

    async def receive(self) -> Message | None:
        """The next message, or None on a clean close. Bad bytes raise `WireError`."""
        payload = await self.receive_bytes()
        return None if payload is None else decode_message(payload)

    async def send_bytes(self, payload: bytes) -> None:
        frame = encode_frame(payload, self.max_frame)
        with trio.move_on_after(self.timeout) as scope:
            try:
                await self.stream.write(frame)
            except StreamError as exc:
                raise NetworkError(f"stream to {self.remote_peer} broke: {exc}") from exc
            return
        assert scope.cancelled_caught
        raise PeerTimeout(
            f"peer {self.remote_peer} did not take our message in {self.timeout:.0f} s"
        )

    async def send(self, message: Message) -> None:
        await self.send_bytes(encode_message(message))

    async def close(self) -> None:
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):
                await self.stream.close()

    async def reset(self) -> None:
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):
                await self.stream.reset()
