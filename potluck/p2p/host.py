"""The libp2p host: the only code in Potluck that touches libp2p.

`open_host(identity, ...)` is an async context manager that yields a running
`PotluckHost` listening on TCP (Noise + yamux, as negotiated by default).
Handlers receive a `FramedStream`; a handler that raises is logged and its
stream reset, and the host keeps serving everyone else.

Pitfalls avoided (see shared/STACK.md): `max_connections_per_peer=1` removes
the 250 ms dial delay; one reused stream per inference session keeps the
round trip near 1 ms; handlers keep reading while torch runs in a worker
thread, so yamux never times out waiting for a window update.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from potluck.errors import ConfigError, NetworkError, PeerTimeout, PotluckError
from potluck.p2p.framed import FramedStream
from potluck.p2p.identity import Identity
from potluck.wire import DEFAULT_MAX_FRAME, Message

log = logging.getLogger(__name__)

Handler = Callable[[FramedStream], Awaitable[None]]


def parse_multiaddr(addr: str) -> Any:
    """A `/ip4/.../tcp/.../p2p/<peer id>` address, or `ConfigError` saying why not."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        info_from_p2p_addr(maddr)
    except Exception as exc:
        raise ConfigError(
            f"{addr!r} is not a peer address like /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW..."
        ) from exc
    return maddr


class PotluckHost:
    """A running libp2p host with framed request/response helpers."""

    def __init__(self, host: Any, identity: Identity, *, max_frame: int, timeout: float) -> None:
        self._host = host
        self.identity = identity
        self.max_frame = max_frame
        self.timeout = timeout

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def raw(self) -> Any:
        """The py-libp2p host underneath (for `potluck.p2p.pubsub`)."""
        return self._host

    @property
    def addrs(self) -> list[str]:
        """Full multiaddresses, each ending in `/p2p/<peer id>`."""
        return [str(a) for a in self._host.get_addrs()]

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve `protocol`: `handler` gets each inbound stream, framed."""

        async def _serve(stream: Any) -> None:
            framed = FramedStream(stream, max_frame=self.max_frame, timeout=self.timeout)
            try:
                await handler(framed)
            except PotluckError as exc:
                log.info("%s handler ended for %s: %s", protocol, framed.remote_peer, exc)
                await framed.reset()
            except Exception:
                log.exception("%s handler crashed for %s", protocol, framed.remote_peer)
                await framed.reset()
            else:
                await framed.close()

        self._host.set_stream_handler(TProtocol(protocol), _serve)

    def is_connected(self, peer_id: str) -> bool:
        return bool(self._host.get_network().get_connections(ID.from_base58(peer_id)))

    async def connect(self, addr: str) -> str:
        """Dial a full multiaddress; returns the peer ID."""
        maddr = parse_multiaddr(addr)
        info = info_from_p2p_addr(maddr)
        with trio.move_on_after(self.timeout) as scope:
            try:
                await self._host.connect(info)
            except Exception as exc:
                raise NetworkError(f"cannot connect to {addr}: {exc}") from exc
        if scope.cancelled_caught:
            raise PeerTimeout(f"connecting to {addr} took over {self.timeout:.0f} s")
        return str(info.peer_id.to_base58())

    async def connect_any(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Make sure we are connected to `peer_id`, dialling its addresses in turn."""
        if self.is_connected(peer_id):
            return
        errors: list[str] = []
        for addr in addrs:
            full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
            try:
                await self.connect(full)
                return
            except NetworkError as exc:
                errors.append(str(exc))
        raise NetworkError(f"cannot reach {peer_id}: " + ("; ".join(errors) or "no address"))

    async def open_stream(
        self,
        peer_id: str,
        protocol: str,
        *,
        addrs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> FramedStream:
        """A new framed stream to `peer_id` speaking `protocol`."""
        if addrs:
            await self.connect_any(peer_id, addrs)
        with trio.move_on_after(self.timeout) as scope:
            try:
                stream = await self._host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
            except Exception as exc:
                raise NetworkError(f"cannot open {protocol} to {peer_id}: {exc}") from exc
            return FramedStream(
                stream, max_frame=self.max_frame, timeout=timeout if timeout else self.timeout
            )
        assert scope.cancelled_caught
        raise PeerTimeout(f"opening {protocol} to {peer_id} took over {self.timeout:.0f} s")

    async def request(
        self,
        peer_id: str,
        protocol: str,
        message: Message,
        *,
        addrs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Message:
        """Send one message on a new stream and return the one reply."""
        stream = await self.open_stream(peer_id, protocol, addrs=addrs, timeout=timeout)
        try:
            await stream.send(message)
            reply = await stream.receive()
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
        if reply is None:
            raise NetworkError(f"{peer_id} closed the {protocol} stream without answering")
        return reply


def _check_port_free(host: str, port: int) -> None:
    """ConfigError if `host:port` is taken. py-libp2p listens with SO_REUSEPORT, so a
    second node on a taken port would silently share it; a plain bind tells."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@asynccontextmanager
async def open_host(
    identity: Identity,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_frame: int = DEFAULT_MAX_FRAME,
    timeout: float = 60.0,
) -> AsyncIterator[PotluckHost]:
    """Run a libp2p host listening on `host:port` (0 picks a free port)."""
    if port:
        _check_port_free(host, port)
    listen = multiaddr.Multiaddr(f"/ip4/{host}/tcp/{port}")
    raw = new_host(
        key_pair=identity.keypair(),
        # one connection per peer avoids the 250 ms second-address dial delay; no
        # auto-dialling of every peer ever seen to keep 50 connections open
        connection_config=ConnectionConfig(
            max_connections_per_peer=1, min_connections=0, low_watermark=0
        ),
    )
    async with raw.run(listen_addrs=[listen]):
        if not raw.get_addrs():  # libp2p logs a failed bind and carries on without one
            raise ConfigError(f"cannot listen on {host}:{port} (is the port already in use?)")
        yield PotluckHost(raw, identity, max_frame=max_frame, timeout=timeout)
