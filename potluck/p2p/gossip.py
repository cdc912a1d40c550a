"""Exchanging swarm views with peers (the I/O around `discovery.PeerTable`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from potluck.errors import PotluckError
from potluck.p2p.discovery import PeerTable
from potluck.p2p.host import PotluckHost
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.wire import Message, SwarmView

log = logging.getLogger(__name__)


async def exchange_views(
    host: PotluckHost,
    table: PeerTable,
    targets: Sequence[tuple[str, Sequence[str]]],
    message: Message,
    *,
    clock: Callable[[], float],
    timeout: float,
    failures: dict[str, str] | None = None,
    on_view: Callable[[str, SwarmView], None] | None = None,
) -> None:
    """Send `message` (our announcement, or a `SwarmRequest`) to every target at once
    and merge each `SwarmView` that comes back; an unreachable peer is skipped, and
    why is recorded in `failures` (by peer ID) when given. `on_view(peer_id, view)`
    sees each view that came back."""

    async def one(peer_id: str, addrs: Sequence[str]) -> None:
        try:
            with trio.fail_after(timeout):
                reply = await host.request(peer_id, PROTOCOL_RPC, message, addrs=addrs)
        except (PotluckError, trio.TooSlowError) as exc:
            log.debug("view exchange with %s failed: %s", peer_id, exc)
            if failures is not None:
                failures[peer_id] = str(exc) or type(exc).__name__
            return
        if failures is not None:
            failures.pop(peer_id, None)
        if isinstance(reply, SwarmView):
            table.merge(reply.servers, clock())
            if on_view is not None:
                on_view(peer_id, reply)

    async with trio.open_nursery() as nursery:
        for peer_id, addrs in targets:
            nursery.start_soon(one, peer_id, addrs)
