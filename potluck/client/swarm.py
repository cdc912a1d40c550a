"""The client's view of the swarm, kept fresh from its peers.

The client asks its initial peers (and a few servers it already knows, in
case the initial peers are gone) for their `SwarmView`, measures the round
trip to each candidate server with an `InfoRequest`, and routes with those
RTTs. Peers that fail are banned for a while (`routing.Banlist`); a server
that does not answer the RTT probe is banned before any session tries it.
`wait_for_route` keeps refreshing until the servers cover the blocks asked
for, or the time limit passes (then `NoRouteError` names the missing block).

Validators are never route hops (they check and referee). Servers that the
client's spot-checks proved wrong, or that an initial peer's ledger shows
slashed (`SwarmView.excluded`), are excluded for good.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

import trio

from potluck.client.routing import Banlist, Hop, plan_route
from potluck.client.trust import TrustPolicy
from potluck.errors import NoRouteError, NoTrustedRouteError, PotluckError
from potluck.model.quant import quant_within
from potluck.p2p.announce import verify_announcement
from potluck.p2p.discovery import PeerTable
from potluck.p2p.gossip import exchange_views
from potluck.p2p.host import PotluckHost, parse_multiaddr
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.wire import InfoRequest, ServerInfo, SwarmRequest, SwarmView

log = logging.getLogger(__name__)

#: Known servers also asked for their view on each refresh.
EXTRA_VIEW_SOURCES = 3
#: Seconds a measured RTT stays fresh.
RTT_TTL = 60.0


class SwarmClient:
    """Known servers for one model, refreshed from peers, with RTTs and bans."""

    def __init__(
        self,
        initial_peers: Sequence[str],
        *,
        model_id: str,
        num_blocks: int,
        clock: Callable[[], float] = time.time,
        request_timeout: float = 5.0,
        banlist: Banlist | None = None,
        payload_bytes: int = 0,
        max_quant: str | None = None,
    ) -> None:
        if not initial_peers:
            raise NoRouteError("no initial peers given: pass initial_peers=[multiaddress, ...]")
        self.initial_peers = [(str(parse_multiaddr(a).get_peer_id()), a) for a in initial_peers]
        self.model_id = model_id
        self.num_blocks = num_blocks
        self.clock = clock
        self.request_timeout = request_timeout
        self.table = PeerTable(verify=verify_announcement)
        self.banlist = banlist or Banlist()
        self.rtt: dict[str, float] = {}
        #: Why the last view exchange with a peer failed (unreachable, unreadable...).
        self.view_failures: dict[str, str] = {}
        self.payload_bytes = payload_bytes  # hidden-state bytes of one token
        #: The most quantised weights this client accepts (None: any); servers beyond it
        #: are left out of everything: routes, replacements, spot-checkers, referees.
        self.max_quant = max_quant
        self._rtt_at: dict[str, float] = {}
        #: Peers excluded for good: proven wrong, or slashed on an initial peer's ledger.
        self.excluded: set[str] = set()

    def ban(self, peer_id: str) -> None:
        until = self.banlist.ban(peer_id, self.clock())
        log.info("banned %s for %.0f s", peer_id, until - self.clock())

    def exclude(self, peer_id: str) -> None:
        """Never route through `peer_id` again."""
        if peer_id not in self.excluded:
            log.warning("excluded %s from routes", peer_id)
        self.excluded.add(peer_id)

    def _on_view(self, peer_id: str, view: SwarmView) -> None:
        if peer_id in dict(self.initial_peers):  # only peers the user chose may exclude
            for excluded in view.excluded:
                self.exclude(excluded)

    def servers(self, *, include_validators: bool = False) -> list[ServerInfo]:
        """Live, unbanned, unexcluded servers of this model within `max_quant`
        (validators only if asked)."""
        now = self.clock()
        banned = self.banlist.banned(now)
        return [
            s
            for s in self.table.live(now)
            if s.model == self.model_id
            and s.peer_id not in banned
            and s.peer_id not in self.excluded
            and (include_validators or not s.validator)
            and (self.max_quant is None or quant_within(s.quant, self.max_quant))
        ]

    async def refresh(self, host: PotluckHost) -> None:
        """Pull views from the initial peers and a few known servers, then probe RTTs."""
        targets: list[tuple[str, Sequence[str]]] = [(p, [a]) for p, a in self.initial_peers]
        known = [s for s in self.servers() if s.peer_id not in dict(self.initial_peers)]
        for server in random.sample(known, min(EXTRA_VIEW_SOURCES, len(known))):
            targets.append((server.peer_id, server.addrs))
        await exchange_views(
            host,
            self.table,
            targets,
            SwarmRequest(),
            clock=self.clock,
            timeout=self.request_timeout,
            failures=self.view_failures,
            on_view=self._on_view,
        )
        await self.measure_rtts(host)

    async def measure_rtts(self, host: PotluckHost) -> None:
        """Time an `InfoRequest` to each server whose RTT is stale; ban the silent ones."""
        now = self.clock()
        stale = [s for s in self.servers() if now - self._rtt_at.get(s.peer_id, -1e9) > RTT_TTL]

        async def probe(server: ServerInfo) -> None:
            try:
                with trio.fail_after(self.request_timeout):
                    samples = []
                    for _ in range(2):  # the first includes dialling
                        t0 = trio.current_time()
                        await host.request(
                            server.peer_id, PROTOCOL_RPC, InfoRequest(), addrs=server.addrs
                        )
                        samples.append(trio.current_time() - t0)
            except (PotluckError, trio.TooSlowError) as exc:
                log.debug("RTT probe of %s failed: %s", server.peer_id, exc)
                self.ban(server.peer_id)
                return
            self.rtt[server.peer_id] = min(samples)
            self._rtt_at[server.peer_id] = self.clock()

        async with trio.open_nursery() as nursery:
            for server in stale:
                nursery.start_soon(probe, server)

    def route(
        self,
        start: int = 0,
        end: int | None = None,
        *,
        min_free_cache: int = 0,
        trust: TrustPolicy | None = None,
    ) -> list[Hop]:
        """The best route over known servers; with `trust`, over trusted ones only
        (`NoTrustedRouteError` if they do not cover the blocks)."""
        servers = self.servers()
        if trust is not None:
            now_ms = int(self.clock() * 1000)
            servers = [s for s in servers if trust.trusts(s, now_ms)]
            try:
                return self.route_over(servers, start, end, min_free_cache=min_free_cache)
            except NoRouteError as exc:
                raise NoTrustedRouteError(
                    f"no trusted route: {exc} ({len(servers)} trusted servers known)"
                ) from None
        return self.route_over(servers, start, end, min_free_cache=min_free_cache)

    def route_over(
        self,
        servers: list[ServerInfo],
        start: int = 0,
        end: int | None = None,
        *,
        min_free_cache: int = 0,
    ) -> list[Hop]:
        return plan_route(
            servers,
            self.num_blocks,
            start=start,
            end=end,
            model=self.model_id,
            rtt=self.rtt,
            min_free_cache=min_free_cache,
            payload_bytes=self.payload_bytes,
        )

    async def wait_for_route(
        self,
        host: PotluckHost,
        timeout: float,
        *,
        start: int = 0,
        end: int | None = None,
        min_free_cache: int = 0,
        trust: TrustPolicy | None = None,
    ) -> list[Hop]:
        """Refresh until a route covers `[start, end)`; `NoRouteError` after `timeout` s
        (`NoTrustedRouteError` with `trust`, when only trusted servers may be used)."""
        last: NoRouteError | None = None
        with trio.move_on_after(timeout):
            while True:
                await self.refresh(host)
                try:
                    return self.route(start, end, min_free_cache=min_free_cache, trust=trust)
                except NoRouteError as exc:
                    last = exc
                await trio.sleep(0.25)
        why = ""
        if self.view_failures:  # e.g. a peer running another Potluck version
            peer, reason = sorted(self.view_failures.items())[0]
            why = f"; {len(self.view_failures)} peer(s) gave no usable view, e.g. {peer}: {reason}"
        error = NoTrustedRouteError if trust is not None else NoRouteError
        raise error(f"after {timeout:.0f} s: {last}{why}")
