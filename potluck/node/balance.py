"""Which contiguous blocks a server serves: the pure core of load balancing.

No I/O, no clock, no torch: announcements in, block numbers out. The node
calls `choose_span` when it joins and `plan_move` now and then afterwards;
loading the new blocks and re-announcing is its business, not ours.

The measure
    Block `b`'s throughput is the sum of the announced throughputs of the
    servers that serve `b` (`block_throughputs`). A server announces the
    tokens/s of its whole span at batch 1; it adds that number to every block
    of its span, because a request that needs block `b` can be sent to any
    of them. A server that announces 0 tokens/s adds nothing, so its blocks
    count as unserved. The swarm is as strong as its weakest block: the
    pipeline cannot run faster than its slowest stage, and a block with
    throughput 0 means no pipeline at all.

Joining (`choose_span`)
    A server of `length` blocks takes the window where the swarm is weakest:
    the lowest minimum throughput, then the lowest sum, then the lowest
    start. The window therefore always contains a weakest block of the
    swarm, and of two windows with the same bottleneck it relieves the one
    that is weak throughout rather than in one place. Equal inputs give
    equal outputs, so servers joining at once from the same swarm view agree.

Moving (`plan_move`)
    A server leaves itself out of the swarm, asks `choose_span` where it
    would join now, and moves there only if all three hold:

    a. the span differs from the one it serves;
    b. every block that is served now (throughput > 0, itself included) is
       still served after the move: a server never strands the clients of a
       block it alone serves;
    c. the swarm gets better. If every block is served, the weakest-block
       throughput must grow by more than `margin`:
       `after > before * (1 + margin)`. If some block is unserved, the
       number of unserved blocks must fall.

    `margin` (say 0.2, i.e. 20 %) is the price of a move: a server that moves
    loads new weights (keeping the old ones until its open sessions end), which
    is only worth it for a
    clear gain, and measured throughputs are noisy, so a tiny "gain" is often
    no gain at all. It must be >= 0.

    Rule (c) for a swarm with gaps is a refinement of "move if afterwards
    every block is served": with two gaps, no single move closes both, so
    that rule would leave both open for ever, even with idle redundant
    servers around. Counting the gaps lets the servers close them one move
    at a time.

Why moves stop
    Every move strictly raises the potential (-unserved blocks, weakest
    throughput), compared lexicographically: rule (b) never adds a gap,
    rule (c) removes one or raises the minimum by a factor > 1 + margin.
    Block throughputs are sums of subsets of the servers' throughputs, so
    the potential takes finitely many values and any sequence of moves (one
    server at a time, in any order) ends in a state where nobody wants to
    move: there is no oscillation, even with `margin = 0`. Block sums use
    `math.fsum` (exactly rounded, independent of order), so the `after` a
    server computes is bit-for-bit the `before` that every server sees once
    it has moved, and float rounding cannot break that argument. For the
    same reason a balanced swarm has no churn: where leaving and re-joining
    would not raise the bottleneck (or close a gap), no server moves.

    Servers that decide at the same moment from the same view can both move
    towards the same gap; the node spreads its checks out in time (with
    jitter) so that each decides on a view that includes the others' moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # potluck.wire pulls in torch; this module only reads fields
    from potluck.wire import ServerInfo

#: A typical `margin` for `plan_move`: move only for a > 20 % better bottleneck.
DEFAULT_MARGIN = 0.2


def _clamp(start: int, end: int, num_blocks: int) -> tuple[int, int]:
    return max(0, start), min(num_blocks, end)


def _contributions(
    servers: Iterable[ServerInfo], num_blocks: int, exclude: str | None, model: str | None
) -> list[list[float]]:
    """For each block, the throughputs of the servers that serve it."""
    per_block: list[list[float]] = [[] for _ in range(num_blocks)]
    for s in servers:
        if s.peer_id == exclude or (model is not None and s.model != model):
            continue
        start, end = _clamp(s.start, s.end, num_blocks)
        for block in range(start, end):
            per_block[block].append(s.throughput)
    return per_block


def _with(per_block: list[list[float]], start: int, end: int, throughput: float) -> list[float]:
    """Block throughputs with one more server of `throughput` on `[start, end)`."""
    return [
        math.fsum([*values, throughput]) if start <= block < end else math.fsum(values)
        for block, values in enumerate(per_block)
    ]


def block_throughputs(
    servers: Iterable[ServerInfo],
    num_blocks: int,
    *,
    exclude: str | None = None,
    model: str | None = None,
) -> list[float]:
    """Per block, the summed throughput (tokens/s) of the servers serving it.

    Spans are clamped to `[0, num_blocks)`. `exclude` leaves out one peer id
    (a server weighing a move leaves itself out); `model`, if given, leaves
    out servers of other models. Pass one announcement per peer.
    """
    if num_blocks < 0:
        raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    return [math.fsum(values) for values in _contributions(servers, num_blocks, exclude, model)]


def choose_span(throughputs: Sequence[float], length: int) -> tuple[int, int]:
    """The `length` contiguous blocks `(start, end)` where the swarm is weakest.

    Minimises (minimum throughput in the window, sum in the window, start).
    `length` is clamped to `[1, len(throughputs)]`.
    """
    num_blocks = len(throughputs)
    if num_blocks == 0:
        raise ValueError("choose_span needs at least one block")
    length = min(max(length, 1), num_blocks)
    best_start = min(
        range(num_blocks - length + 1),
        key=lambda start: (
            min(throughputs[start : start + length]),
            math.fsum(throughputs[start : start + length]),
            start,
        ),
    )
    return best_start, best_start + length


def plan_move(
    servers: Iterable[ServerInfo],
    num_blocks: int,
    me: ServerInfo,
    *,
    margin: float = DEFAULT_MARGIN,
) -> tuple[int, int] | None:
    """The span `me` should move to, or None to stay (rules in the module docstring).

    `servers` is the swarm view; whether it holds `me`'s own announcement
    does not matter, `me` is what counts. Servers of other models are ignored.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if not margin >= 0.0:  # also rejects NaN
        raise ValueError(f"margin must be >= 0, got {margin}")
    others = _contributions(servers, num_blocks, me.peer_id, me.model)
    current = _clamp(me.start, me.end, num_blocks)
    now = _with(others, *current, me.throughput)
    target = choose_span([math.fsum(values) for values in others], me.end - me.start)
    if target == current:
        return None
    moved = _with(others, *target, me.throughput)
    if any(b > 0.0 and a <= 0.0 for b, a in zip(now, moved, strict=True)):
        return None  # a block that has servers now would have none
    before, after = min(now), min(moved)
    if before > 0.0:
        improves = after > before * (1.0 + margin)
    else:
        improves = sum(t <= 0.0 for t in moved) < sum(t <= 0.0 for t in now)
    return target if improves else None


def span_for_memory(budget_bytes: int, bytes_per_block: int, num_blocks: int) -> int:
    """How many blocks fit in `budget_bytes`: at least 1, at most `num_blocks`.

    For a server started without `--num-blocks`; a budget too small for one
    block still gives 1, and loading it will say whether it really fits.
    """
    if bytes_per_block <= 0:
        raise ValueError(f"bytes_per_block must be > 0, got {bytes_per_block}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    return min(max(budget_bytes // bytes_per_block, 1), num_blocks)
