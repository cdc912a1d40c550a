"""The client's view of the swarm, pulled from its initial peers.

On start the client asks each initial peer for its `SwarmView` and keeps
asking until the servers it knows cover every block of the model, or the
time limit passes (then `NoRouteError` says which block is missing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import trio

from potluck.client.routing import Hop, plan_route
from potluck.errors import NoRouteError
from potluck.p2p.announce import verify_announcement
from potluck.p2p.discovery import PeerTable
from potluck.p2p.gossip import exchange_views
from potluck.p2p.host import PotluckHost, parse_multiaddr
from potluck.wire import SwarmRequest

log = logging.getLogger(__name__)


class SwarmClient:
    """Known servers for one model, refreshed from the initial peers."""

    def __init__(
        self,
        initial_peers: Sequence[str],
        *,
        model_id: str,
        num_blocks: int,
        clock: Callable[[], float] = time.time,
        request_timeout: float = 5.0,
    ) -> None:
        if not initial_peers:
            raise NoRouteError("no initial peers given: pass initial_peers=[multiaddress, ...]")
        self.initial_peers = [(str(parse_multiaddr(a).get_peer_id()), a) for a in initial_peers]
        self.model_id = model_id
        self.num_blocks = num_blocks
        self.clock = clock
        self.request_timeout = request_timeout
        self.table = PeerTable(verify=verify_announcement)
        self.banned: set[str] = set()

    async def refresh(self, host: PotluckHost) -> None:
        """Pull the view of every initial peer (concurrently, failures ignored)."""

        targets = [(peer_id, [addr]) for peer_id, addr in self.initial_peers]
        await exchange_views(
            host,
            self.table,
            targets,
            SwarmRequest(),
            clock=self.clock,
            timeout=self.request_timeout,
        )

    def route(self) -> list[Hop]:
        return plan_route(
            self.table.live(self.clock()),
            self.num_blocks,
            model=self.model_id,
            exclude=frozenset(self.banned),
        )

    async def wait_for_route(self, host: PotluckHost, timeout: float) -> list[Hop]:
        """Refresh until a route covers every block; `NoRouteError` after `timeout` s."""
        last: NoRouteError | None = None
        with trio.move_on_after(timeout):
            while True:
                await self.refresh(host)
                try:
                    return self.route()
                except NoRouteError as exc:
                    last = exc
                await trio.sleep(0.25)
        raise NoRouteError(f"after {timeout:.0f} s: {last}")
