"""plan_route: routes tile [0, n) in order, are the cheapest, and name the gap when none exists."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.client.routing import (
    DEFAULT_THROUGHPUT,
    HOP_COST,
    Hop,
    coverage,
    hop_cost,
    plan_route,
)
from potluck.errors import NoRouteError
from potluck.testing.servers import fake_server
from potluck.wire import ServerInfo

server = fake_server


def spans(route: list[Hop]) -> list[tuple[str, int, int]]:
    return [(hop.peer_id.removeprefix("12D3KooW"), hop.start, hop.end) for hop in route]


def assert_tiles(route: list[Hop], num_blocks: int) -> None:
    assert route, "an empty route"
    assert route[0].start == 0
    assert route[-1].end == num_blocks
    for hop, following in itertools.pairwise(route):
        assert hop.end == following.start
    for hop in route:
        assert hop.server.start <= hop.start < hop.end <= hop.server.end


# --- examples -----------------------------------------------------------------------


def test_one_server_for_every_block() -> None:
    a = server("a", 0, 30)
    route = plan_route([a], 30)
    assert route == [Hop(a, 0, 30)]
    assert route[0].peer_id == a.peer_id


def test_a_chain_of_servers_in_order() -> None:
    servers = [server("c", 20, 30), server("a", 0, 10), server("b", 10, 20)]
    assert spans(plan_route(servers, 30)) == [("a", 0, 10), ("b", 10, 20), ("c", 20, 30)]


def test_overlapping_servers_combine_using_part_of_a_span() -> None:
    servers = [server("a", 0, 20), server("b", 10, 30)]
    assert spans(plan_route(servers, 30)) == [("a", 0, 20), ("b", 20, 30)]


def test_a_span_past_the_last_block_is_cut_at_the_model_end() -> None:
    assert spans(plan_route([server("a", 0, 40)], 30)) == [("a", 0, 30)]


def test_the_faster_of_two_servers_for_the_same_span_is_chosen() -> None:
    slow, fast = server("slow", 0, 30, throughput=5.0), server("fast", 0, 30, throughput=50.0)
    for order in ([slow, fast], [fast, slow]):
        assert spans(plan_route(order, 30)) == [("fast", 0, 30)]


def test_one_hop_is_preferred_over_two_equally_fast_ones() -> None:
    servers = [server("a", 0, 15), server("b", 15, 30), server("whole", 0, 30)]
    assert spans(plan_route(servers, 30)) == [("whole", 0, 30)]


def test_a_fast_pair_beats_a_slow_single_server() -> None:
    servers = [server("a", 0, 15, 100.0), server("b", 15, 30, 100.0), server("w", 0, 30, 1.0)]
    assert spans(plan_route(servers, 30)) == [("a", 0, 15), ("b", 15, 30)]


def test_a_server_that_announced_no_throughput_gets_the_default() -> None:
    unknown = server("unknown", 0, 10, throughput=0.0)
    assert hop_cost(unknown, 0, 10) == pytest.approx(HOP_COST + 1 / DEFAULT_THROUGHPUT)
    slower = server("slower", 0, 10, throughput=DEFAULT_THROUGHPUT / 2)
    assert spans(plan_route([slower, unknown], 10)) == [("unknown", 0, 10)]


def test_part_of_a_span_costs_its_share() -> None:
    s = server("a", 0, 20, throughput=4.0)
    assert hop_cost(s, 10, 20) == pytest.approx(HOP_COST + 0.5 / 4.0)


def test_excluded_peers_are_ignored() -> None:
    banned, other = server("banned", 0, 30, 1000.0), server("ok", 0, 30, 1.0)
    route = plan_route([banned, other], 30, exclude=frozenset({banned.peer_id}))
    assert spans(route) == [("ok", 0, 30)]
    with pytest.raises(NoRouteError):
        plan_route([banned], 30, exclude=frozenset({banned.peer_id}))


def test_servers_of_another_model_are_ignored() -> None:
    mine, theirs = server("mine", 0, 30, 1.0), server("theirs", 0, 30, 1000.0, model="other")
    assert spans(plan_route([mine, theirs], 30, model="smollm2")) == [("mine", 0, 30)]
    with pytest.raises(NoRouteError):
        plan_route([theirs], 30, model="smollm2")
    # without a model every server counts
    assert spans(plan_route([mine, theirs], 30)) == [("theirs", 0, 30)]


@pytest.mark.parametrize(
    ("servers", "missing"),
    [
        ([], 0),
        ([server("a", 1, 30)], 0),
        ([server("a", 0, 10), server("b", 11, 30)], 10),
        ([server("a", 0, 20), server("b", 5, 15), server("c", 25, 30)], 20),
        ([server("a", 0, 29)], 29),
    ],
)
def test_no_route_names_the_missing_block(servers: list[ServerInfo], missing: int) -> None:
    with pytest.raises(NoRouteError, match=f"block {missing} of 30"):
        plan_route(servers, 30)


def test_coverage_counts_servers_per_block() -> None:
    servers = [server("a", 0, 3), server("b", 2, 6), server("c", 5, 9)]
    assert coverage(servers, 6) == [1, 1, 2, 1, 1, 2]


# --- properties ---------------------------------------------------------------------


@st.composite
def swarms(draw: st.DrawFn, *, covering: bool) -> tuple[int, list[ServerInfo]]:
    """`num_blocks` and servers; with `covering`, every block is served."""
    n = draw(st.integers(1, 24))
    servers = []
    if covering:
        cuts = sorted(draw(st.sets(st.integers(1, n - 1))) | {0, n}) if n > 1 else [0, 1]
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            servers.append(server(f"chain{i}", a, b, draw(st.sampled_from([0.0, 1.0, 7.5]))))
    for i in range(draw(st.integers(0, 8))):
        start = draw(st.integers(0, n + 2))
        end = draw(st.integers(start + 1, n + 4))
        servers.append(server(f"extra{i}", start, end, draw(st.floats(0.0, 100.0))))
    return n, draw(st.permutations(servers))


def cheapest_cost(servers: list[ServerInfo], n: int) -> float:
    """Dynamic programming over boundaries with the edges the module docstring defines."""
    best = [math.inf] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        for s in servers:
            if s.start <= i < s.end:
                j = min(s.end, n)
                best[j] = min(best[j], best[i] + hop_cost(s, i, j))
    return best[n]


@given(swarms(covering=True))
def test_routes_tile_every_block_in_order_at_the_lowest_cost(
    swarm: tuple[int, list[ServerInfo]],
) -> None:
    n, servers = swarm
    route = plan_route(servers, n)
    assert_tiles(route, n)
    assert all(hop.server in servers for hop in route)
    total = sum(hop_cost(hop.server, hop.start, hop.end) for hop in route)
    assert total == pytest.approx(cheapest_cost(servers, n))


@given(swarms(covering=False))
def test_a_route_exists_exactly_when_every_block_is_served(
    swarm: tuple[int, list[ServerInfo]],
) -> None:
    n, servers = swarm
    counts = coverage(servers, n)
    if all(counts):
        assert_tiles(plan_route(servers, n), n)
    else:
        first_gap = counts.index(0)
        with pytest.raises(NoRouteError, match=f"block {first_gap} of {n}"):
            plan_route(servers, n)


@given(swarms(covering=True), st.data())
def test_excluded_and_foreign_servers_never_appear(
    swarm: tuple[int, list[ServerInfo]], data: st.DataObject
) -> None:
    n, servers = swarm
    banned = data.draw(st.sets(st.sampled_from([s.peer_id for s in servers])))
    foreign = [server(f"x{i}", 0, n, 1e6, model="other") for i in range(2)]
    usable = [s for s in servers if s.peer_id not in banned]
    try:
        route = plan_route(servers + foreign, n, model="smollm2", exclude=frozenset(banned))
    except NoRouteError:
        assert not all(coverage(usable, n))
    else:
        assert_tiles(route, n)
        assert all(hop.server in usable for hop in route)
