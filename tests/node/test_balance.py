"""Span choice: joiners take the weakest window, moves never strand a block, and moves stop."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.node.balance import (
    block_throughputs,
    choose_span,
    plan_move,
    span_for_memory,
)
from potluck.testing.servers import fake_server
from potluck.wire import ServerInfo

MARGIN = 0.2


server = fake_server


def moved(s: ServerInfo, span: tuple[int, int]) -> ServerInfo:
    return dataclasses.replace(s, start=span[0], end=span[1])


def unserved(throughputs: list[float]) -> int:
    return sum(t == 0.0 for t in throughputs)


def join(swarm: list[ServerInfo], name: str, length: int, num_blocks: int) -> ServerInfo:
    """A new server picks its blocks from the swarm as it is and joins it."""
    start, end = choose_span(block_throughputs(swarm, num_blocks), length)
    new = server(name, start, end)
    swarm.append(new)
    return new


def settle(
    swarm: list[ServerInfo], num_blocks: int, margin: float, max_rounds: int = 50
) -> tuple[list[ServerInfo], int, bool]:
    """Round-robin plan_move until a full round without a move: (swarm, moves, settled)."""
    swarm = list(swarm)
    moves = 0
    for _ in range(max_rounds):
        quiet = True
        for i, me in enumerate(swarm):
            target = plan_move(swarm, num_blocks, me, margin=margin)
            if target is not None:
                swarm[i] = moved(me, target)
                moves += 1
                quiet = False
        if quiet:
            return swarm, moves, True
    return swarm, moves, False


# --- block_throughputs ------------------------------------------------------------


def test_block_throughputs_sum_clamp_and_exclude() -> None:
    a, b = server("a", 0, 4, 10.0), server("b", 2, 9, 5.0)  # b runs past the 6-block model
    assert block_throughputs([a, b], 6) == [10.0, 10.0, 15.0, 15.0, 5.0, 5.0]
    assert block_throughputs([a, b], 6, exclude=b.peer_id) == [10.0] * 4 + [0.0] * 2
    assert block_throughputs([], 3) == [0.0, 0.0, 0.0]


def test_block_throughputs_can_keep_one_model() -> None:
    a, b = server("a", 0, 2, 10.0), server("b", 0, 2, 5.0, model="other")
    assert block_throughputs([a, b], 2, model="smollm2") == [10.0, 10.0]


# --- choose_span --------------------------------------------------------------------


def test_choose_span_takes_the_unserved_window() -> None:
    assert choose_span([5.0, 5.0, 5.0, 0.0, 0.0, 5.0], 2) == (3, 5)
    # a gap wider than the span: the first unserved window
    assert choose_span([5.0, 0.0, 0.0, 0.0, 5.0], 2) == (1, 3)


def test_choose_span_prefers_low_minimum_then_low_sum() -> None:
    # window [0, 2) has the lower sum, but [3, 5) holds the bottleneck
    assert choose_span([1.0, 1.0, 9.0, 0.5, 9.0], 2) == (2, 4)
    # same bottleneck everywhere: the window that is weak throughout
    assert choose_span([1.0, 9.0, 9.0, 1.0, 1.0, 9.0], 2) == (3, 5)


def test_choose_span_ties_go_to_the_lowest_start() -> None:
    assert choose_span([0.0] * 10, 3) == (0, 3)
    assert choose_span([2.0, 1.0, 1.0, 2.0, 1.0, 1.0], 2) == (1, 3)


def test_choose_span_clamps_the_length() -> None:
    assert choose_span([3.0, 1.0, 2.0], 0) == (1, 2)
    assert choose_span([3.0, 1.0, 2.0], -4) == (1, 2)
    assert choose_span([3.0, 1.0, 2.0], 3) == (0, 3)
    assert choose_span([3.0, 1.0, 2.0], 99) == (0, 3)
    with pytest.raises(ValueError):
        choose_span([], 1)


throughput_lists = st.lists(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 10.0]) | st.floats(0.0, 100.0),
    min_size=1,
    max_size=40,
)


@given(throughput_lists, st.integers(-2, 45))
def test_choose_span_is_the_weakest_window(throughputs: list[float], length: int) -> None:
    start, end = choose_span(throughputs, length)
    n = len(throughputs)
    assert end - start == min(max(length, 1), n)
    assert 0 <= start < end <= n
    # it holds a weakest block of the whole swarm
    assert min(throughputs[start:end]) == min(throughputs)
    # and no window beats it on (min, sum, start)
    size = end - start

    def key(s: int) -> tuple[float, float, int]:
        window = throughputs[s : s + size]
        return min(window), math.fsum(window), s

    assert all(key(start) <= key(s) for s in range(n - size + 1))


# --- joining and balance -------------------------------------------------------------


def test_six_joiners_serve_every_block_twice_and_then_stay() -> None:
    swarm: list[ServerInfo] = []
    for name in "abcdef":
        join(swarm, name, 10, 30)
    assert [(s.start, s.end) for s in swarm] == [
        (0, 10),
        (10, 20),
        (20, 30),
        (0, 10),
        (10, 20),
        (20, 30),
    ]
    assert block_throughputs(swarm, 30) == [20.0] * 30
    for me in swarm:
        assert plan_move(swarm, 30, me, margin=MARGIN) is None
        assert plan_move(swarm, 30, me, margin=0.0) is None


def test_a_lone_server_of_a_block_never_leaves_it() -> None:
    # x alone serves block 0; moving to the gap [5, 8) would cover three
    # unserved blocks, but strand block 0
    x, y = server("x", 0, 3), server("y", 1, 5)
    assert block_throughputs([x, y], 8) == [10.0, 20.0, 20.0, 10.0, 10.0, 0.0, 0.0, 0.0]
    assert choose_span(block_throughputs([y], 8), 3) == (5, 8)
    assert plan_move([x, y], 8, x, margin=MARGIN) is None
    # with a second server on block 0, x is free to go
    z = server("z", 0, 1)
    assert plan_move([x, y, z], 8, x, margin=MARGIN) == (5, 8)


def test_redundant_servers_close_several_gaps_one_move_at_a_time() -> None:
    # four servers piled on [0, 10) of a 30-block model: no single move serves
    # every block, but each move closes a gap
    swarm = [server(name, 0, 10) for name in "abcd"]
    assert plan_move(swarm, 30, swarm[0], margin=MARGIN) == (10, 20)
    settled, moves, done = settle(swarm, 30, MARGIN)
    assert done
    assert moves == 2
    assert unserved(block_throughputs(settled, 30)) == 0


def test_no_move_that_does_not_raise_the_bottleneck() -> None:
    # before: min(20, 12) = 12; b leaving leaves [0, 10) at 10, the weakest
    # window, which is where b already is
    a, b, c = server("a", 0, 10, 10.0), server("b", 0, 10, 10.0), server("c", 10, 20, 12.0)
    assert plan_move([a, b, c], 20, b, margin=0.0) is None


def test_a_fast_server_relieves_a_slow_bottleneck() -> None:
    fast1, fast2 = server("f1", 0, 10, 50.0), server("f2", 0, 10, 50.0)
    slow = server("slow", 10, 20, 2.0)
    # before: 2; after f2 moves: min(50, 52) = 50 > 2 * 1.2
    assert plan_move([fast1, fast2, slow], 20, fast2, margin=MARGIN) == (10, 20)


def test_the_margin_decides_a_borderline_move() -> None:
    a, b = server("a", 0, 10, 25.0), server("b", 0, 10, 11.0)
    c, d = server("c", 10, 20, 24.0), server("d", 10, 20, 0.0)  # d counts for nothing
    # before: min(36, 24) = 24; after b moves: min(25, 35) = 25, a gain of ~4 %
    assert plan_move([a, b, c, d], 20, b, margin=0.0) == (10, 20)
    assert plan_move([a, b, c, d], 20, b, margin=0.04) == (10, 20)
    assert plan_move([a, b, c, d], 20, b, margin=0.05) is None
    assert plan_move([a, b, c, d], 20, b, margin=MARGIN) is None


def test_own_announcement_in_the_view_does_not_matter() -> None:
    a, b = server("a", 0, 10), server("b", 0, 10)
    with_me = plan_move([a, b], 20, b, margin=MARGIN)
    without_me = plan_move([a], 20, b, margin=MARGIN)
    assert with_me == without_me == (10, 20)
    # a stale announcement of b elsewhere is replaced by `me`
    stale = server("b", 10, 20)
    assert plan_move([a, stale], 20, b, margin=MARGIN) == (10, 20)


def test_a_server_with_no_throughput_stays() -> None:
    a, b = server("a", 0, 10), server("b", 0, 10, 0.0)
    assert plan_move([a, b], 20, b, margin=MARGIN) is None


def test_plan_move_checks_its_arguments() -> None:
    a = server("a", 0, 10)
    with pytest.raises(ValueError):
        plan_move([a], 10, a, margin=-0.1)
    with pytest.raises(ValueError):
        plan_move([a], 10, a, margin=math.nan)
    with pytest.raises(ValueError):
        plan_move([a], 0, a, margin=MARGIN)


# --- properties of plan_move ---------------------------------------------------------


@st.composite
def swarms(draw: st.DrawFn) -> tuple[int, list[ServerInfo]]:
    num_blocks = draw(st.integers(1, 30))
    count = draw(st.integers(1, 8))
    out = []
    for i in range(count):
        start = draw(st.integers(0, num_blocks - 1))
        end = draw(st.integers(start + 1, num_blocks))
        throughput = draw(st.sampled_from([0.0, 1.0, 2.0, 5.0, 10.0]) | st.floats(0.0, 100.0))
        out.append(server(f"s{i}", start, end, throughput))
    return num_blocks, out


margins = st.sampled_from([0.0, 0.05, MARGIN, 1.0])


@given(swarms(), margins)
def test_a_move_never_strands_a_block_and_always_helps(
    swarm: tuple[int, list[ServerInfo]], margin: float
) -> None:
    num_blocks, servers = swarm
    for i, me in enumerate(servers):
        target = plan_move(servers, num_blocks, me, margin=margin)
        if target is None:
            continue
        assert target != (me.start, me.end)
        assert target[1] - target[0] == me.end - me.start
        now = block_throughputs(servers, num_blocks)
        after = block_throughputs([*servers[:i], moved(me, target), *servers[i + 1 :]], num_blocks)
        for block in range(num_blocks):
            if now[block] > 0.0:
                assert after[block] > 0.0, f"block {block} stranded"
        if min(now) > 0.0:
            assert min(after) > min(now) * (1.0 + margin)
        else:
            assert unserved(after) < unserved(now)


@given(swarms())
def test_a_lone_server_stays_on_its_blocks(swarm: tuple[int, list[ServerInfo]]) -> None:
    num_blocks, servers = swarm
    for me in servers:
        target = plan_move(servers, num_blocks, me, margin=MARGIN)
        if target is None:
            continue
        others = block_throughputs(servers, num_blocks, exclude=me.peer_id)
        alone = [b for b in range(me.start, me.end) if others[b] == 0.0 and me.throughput > 0]
        assert all(target[0] <= b < target[1] for b in alone)


@settings(deadline=None)
@given(swarms(), margins)
def test_moves_stop(swarm: tuple[int, list[ServerInfo]], margin: float) -> None:
    num_blocks, servers = swarm
    start = block_throughputs(servers, num_blocks)
    settled, moves, done = settle(servers, num_blocks, margin)
    assert done, f"still moving after {moves} moves"
    end = block_throughputs(settled, num_blocks)
    # the potential argument: gaps never open, and the bottleneck never drops
    assert unserved(end) <= unserved(start)
    assert min(end) >= min(start)
    # and a settled swarm has no churn
    for me in settled:
        assert plan_move(settled, num_blocks, me, margin=margin) is None


@given(st.lists(st.integers(1, 12), min_size=1, max_size=10), st.integers(1, 30))
def test_a_joiner_always_covers_a_weakest_block(lengths: list[int], num_blocks: int) -> None:
    swarm: list[ServerInfo] = []
    for i, length in enumerate(lengths):
        weakest = min(block_throughputs(swarm, num_blocks))
        new = join(swarm, f"j{i}", length, num_blocks)
        before = block_throughputs(swarm[:-1], num_blocks)
        assert any(before[b] == weakest for b in range(new.start, new.end))


# --- span_for_memory -----------------------------------------------------------------


def test_span_for_memory() -> None:
    assert span_for_memory(10_000, 1_000, 30) == 10
    assert span_for_memory(10_999, 1_000, 30) == 10
    assert span_for_memory(500, 1_000, 30) == 1  # at least one block
    assert span_for_memory(0, 1_000, 30) == 1
    assert span_for_memory(10**12, 1_000, 30) == 30  # at most the model
    with pytest.raises(ValueError):
        span_for_memory(10_000, 0, 30)
    with pytest.raises(ValueError):
        span_for_memory(10_000, 1_000, 0)


@given(st.integers(0, 10**12), st.integers(1, 10**9), st.integers(1, 200))
def test_span_for_memory_fits(budget: int, per_block: int, num_blocks: int) -> None:
    blocks = span_for_memory(budget, per_block, num_blocks)
    assert 1 <= blocks <= num_blocks
    if blocks > 1:
        assert blocks * per_block <= budget
    if blocks < num_blocks:
        assert (blocks + 1) * per_block > budget
