"""Choosing servers for a pipeline: the pure core.

A route is a list of hops `(server, start, end)` whose ranges tile
`[start, end)` of the model's blocks in order (the whole model, or, when a
hop fails mid-generation, just the blocks it held). Routes are found with
Dijkstra over block boundaries: from boundary `i`, a server whose span
`[a, b)` has `a <= i < b` takes the client to `min(b, end)` at the expected
latency of one token through those blocks:

    rtt(server) + 2 x token bytes / bandwidth
        + blocks / span blocks / throughput x (1 + LOAD_PENALTY x load)

`rtt` is the round trip the client measured (or `HOP_COST` before it has
one), `bandwidth` the network throughput the server announced, `throughput`
its announced tokens/s for its whole span, and `load` the sessions it had
open when it announced (each queues in front of ours). Using part of a span
is how overlapping servers combine. Servers for another model, banned peers,
and servers whose free cache cannot hold the session are ignored.

`Banlist` keeps peers that failed out of routes for a while, doubling the
time on every new failure.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from potluck.errors import NoRouteError
from potluck.p2p.announce import account_of_peer
from potluck.wire import ServerInfo

#: Cost of one network hop, in seconds, before its RTT is measured.
HOP_COST = 0.002
#: Throughput assumed for a server that announced none, in tokens/s.
DEFAULT_THROUGHPUT = 10.0
#: Announced throughputs are clamped to at least this, so costs stay finite.
MIN_THROUGHPUT = 1e-3
#: Extra compute time per open session on the server, as a fraction.
LOAD_PENALTY = 0.5


@dataclass(frozen=True)
class Hop:
    """Blocks `[start, end)` computed by `server`."""

    server: ServerInfo
    start: int
    end: int

    @property
    def peer_id(self) -> str:
        return self.server.peer_id

    @property
    def server_account(self) -> str:
        """The server's ledger account (the public key its peer ID embeds)."""
        return account_of_peer(self.server.peer_id)


def hop_cost(
    server: ServerInfo,
    start: int,
    end: int,
    *,
    rtt: Mapping[str, float] | None = None,
    payload_bytes: int = 0,
) -> float:
    """Expected seconds for one token through blocks `[start, end)` of `server`,
    sending and receiving `payload_bytes` each way."""
    span_blocks = max(1, server.end - server.start)
    throughput = server.throughput if server.throughput > 0 else DEFAULT_THROUGHPUT
    throughput = max(throughput, MIN_THROUGHPUT)
    # throughput is announced for the whole span; a part of it costs its share
    compute = (end - start) / span_blocks / throughput * (1 + LOAD_PENALTY * server.load)
    network = rtt.get(server.peer_id, HOP_COST) if rtt is not None else HOP_COST
    if server.bandwidth > 0:
        network += 2 * payload_bytes / server.bandwidth
    return network + compute


def coverage(servers: Iterable[ServerInfo], num_blocks: int) -> list[int]:
    """How many servers serve each block."""
    counts = [0] * num_blocks
    for s in servers:
        for block in range(max(0, s.start), min(num_blocks, s.end)):
            counts[block] += 1
    return counts


def plan_route(
    servers: Iterable[ServerInfo],
    num_blocks: int,
    *,
    start: int = 0,
    end: int | None = None,
    model: str | None = None,
    exclude: frozenset[str] = frozenset(),
    rtt: Mapping[str, float] | None = None,
    min_free_cache: int = 0,
    payload_bytes: int = 0,
) -> list[Hop]:
    """The cheapest route through blocks `[start, end)` (default: all), or
    `NoRouteError` naming the first block no usable server covers."""
    stop = num_blocks if end is None else end
    if not 0 <= start < stop <= num_blocks:
        raise NoRouteError(f"blocks {start}:{stop} are not a range of the model's {num_blocks}")
    usable = [
        s
        for s in servers
        if s.peer_id not in exclude
        and (model is None or s.model == model)
        and s.start < s.end
        and s.free_cache_tokens >= min_free_cache
    ]
    best: dict[int, float] = {start: 0.0}
    back: dict[int, tuple[int, ServerInfo]] = {}
    queue: list[tuple[float, int]] = [(0.0, start)]
    while queue:
        cost, i = heapq.heappop(queue)
        if i == stop:
            break
        if cost > best.get(i, float("inf")):
            continue
        for s in usable:
            if s.start <= i < s.end:
                j = min(s.end, stop)
                c = cost + hop_cost(s, i, j, rtt=rtt, payload_bytes=payload_bytes)
                if c < best.get(j, float("inf")):
                    best[j] = c
                    back[j] = (i, s)
                    heapq.heappush(queue, (c, j))
    if stop not in best:
        reached = max(best)
        raise NoRouteError(
            f"no known server covers block {reached} of {num_blocks} "
            f"({len(usable)} usable servers known)"
        )
    hops: list[Hop] = []
    j = stop
    while j != start:
        i, s = back[j]
        hops.append(Hop(s, i, j))
        j = i
    hops.reverse()
    return hops


class Banlist:
    """Peers kept out of routes after failing, for `base x 2^(failures-1)` s, capped."""

    def __init__(self, *, base: float = 5.0, cap: float = 300.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def ban(self, peer_id: str, now: float) -> float:
        """Ban `peer_id` from `now`; returns until when."""
        failures = self._failures.get(peer_id, 0) + 1
        self._failures[peer_id] = failures
        until = now + min(self.cap, self.base * 2.0 ** (failures - 1))
        self._until[peer_id] = until
        return until

    def forgive(self, peer_id: str) -> None:
        """Reset a peer's record after it served well again."""
        self._failures.pop(peer_id, None)
        self._until.pop(peer_id, None)

    def banned(self, now: float) -> frozenset[str]:
        return frozenset(p for p, until in self._until.items() if until > now)

    def is_banned(self, peer_id: str, now: float) -> bool:
        return self._until.get(peer_id, 0.0) > now
