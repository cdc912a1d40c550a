"""Choosing servers for a pipeline: the pure core.

A route is a list of hops `(server, start, end)` whose ranges tile
`[0, num_blocks)` in order. Routes are found with Dijkstra over block
boundaries: from boundary `i`, a server whose span `[a, b)` has `a <= i < b`
takes the client to `b` at a cost of one network hop plus `(b - i)` blocks of
compute at the server's announced throughput. Using part of a span is how
overlapping servers combine. Servers for another model, and excluded
(banned) peers, are ignored.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from potluck.errors import NoRouteError
from potluck.wire import ServerInfo

#: Cost of one network hop, in seconds, before RTTs are measured.
HOP_COST = 0.002
#: Throughput assumed for a server that announced none, in tokens/s.
DEFAULT_THROUGHPUT = 10.0
#: Announced throughputs are clamped to at least this, so costs stay finite.
MIN_THROUGHPUT = 1e-3


@dataclass(frozen=True)
class Hop:
    """Blocks `[start, end)` computed by `server`."""

    server: ServerInfo
    start: int
    end: int

    @property
    def peer_id(self) -> str:
        return self.server.peer_id


def hop_cost(server: ServerInfo, start: int, end: int) -> float:
    """Expected seconds for one token through blocks `[start, end)` of `server`."""
    span_blocks = max(1, server.end - server.start)
    throughput = server.throughput if server.throughput > 0 else DEFAULT_THROUGHPUT
    throughput = max(throughput, MIN_THROUGHPUT)
    # throughput is announced for the whole span; a part of it costs its share
    return HOP_COST + (end - start) / span_blocks / throughput


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
    model: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> list[Hop]:
    """The cheapest route through all blocks, or `NoRouteError` naming the gap."""
    usable = [
        s
        for s in servers
        if s.peer_id not in exclude and (model is None or s.model == model) and s.start < s.end
    ]
    best: dict[int, float] = {0: 0.0}
    back: dict[int, tuple[int, ServerInfo]] = {}
    queue: list[tuple[float, int]] = [(0.0, 0)]
    while queue:
        cost, i = heapq.heappop(queue)
        if i == num_blocks:
            break
        if cost > best.get(i, float("inf")):
            continue
        for s in usable:
            if s.start <= i < s.end:
                j = min(s.end, num_blocks)
                c = cost + hop_cost(s, i, j)
                if c < best.get(j, float("inf")):
                    best[j] = c
                    back[j] = (i, s)
                    heapq.heappush(queue, (c, j))
    if num_blocks not in best:
        reached = max(best)
        raise NoRouteError(
            f"no known server covers block {reached} of {num_blocks} "
            f"({len(usable)} usable servers known)"
        )
    hops: list[Hop] = []
    j = num_blocks
    while j:
        i, s = back[j]
        hops.append(Hop(s, i, j))
        j = i
    hops.reverse()
    return hops
