"""Routing for healing: sub-ranges, measured RTTs, load, cache, bandwidth, bans."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.client.routing import Banlist, hop_cost, plan_route
from potluck.errors import NoRouteError
from potluck.testing.servers import fake_server as server


def test_a_sub_range_route_tiles_exactly_the_blocks_asked_for() -> None:
    servers = [server("a", 0, 10), server("b", 8, 20), server("c", 15, 30)]
    route = plan_route(servers, 30, start=10, end=20)
    assert [(h.peer_id[-1], h.start, h.end) for h in route] == [("b", 10, 20)]
    route = plan_route(servers, 30, start=5, end=18)
    assert route[0].start == 5 and route[-1].end == 18
    assert all(a.end == b.start for a, b in itertools.pairwise(route))


def test_a_bad_sub_range_is_a_no_route_error() -> None:
    with pytest.raises(NoRouteError):
        plan_route([server("a", 0, 10)], 10, start=5, end=5)
    with pytest.raises(NoRouteError):
        plan_route([server("a", 0, 10)], 10, start=0, end=11)


def test_measured_rtt_steers_the_route() -> None:
    near, far = server("near", 0, 10), server("far", 0, 10)
    rtt = {near.peer_id: 0.001, far.peer_id: 0.5}
    assert plan_route([far, near], 10, rtt=rtt)[0].peer_id == near.peer_id
    rtt = {near.peer_id: 0.5, far.peer_id: 0.001}
    assert plan_route([far, near], 10, rtt=rtt)[0].peer_id == far.peer_id


def test_load_penalises_a_busy_server() -> None:
    idle = server("idle", 0, 10)
    busy = dataclasses.replace(server("busy", 0, 10), load=8)
    assert hop_cost(busy, 0, 10) > hop_cost(idle, 0, 10)
    assert plan_route([busy, idle], 10)[0].peer_id == idle.peer_id


def test_servers_without_room_for_the_session_are_skipped() -> None:
    full = dataclasses.replace(server("full", 0, 10, throughput=1e6), free_cache_tokens=10)
    roomy = server("roomy", 0, 10, throughput=1.0)
    assert plan_route([full, roomy], 10, min_free_cache=100)[0].peer_id == roomy.peer_id
    with pytest.raises(NoRouteError):
        plan_route([full], 10, min_free_cache=100)


def test_announced_bandwidth_adds_transfer_time() -> None:
    thin = dataclasses.replace(server("thin", 0, 10), bandwidth=1e3)
    fat = dataclasses.replace(server("fat", 0, 10), bandwidth=1e9)
    assert hop_cost(thin, 0, 10, payload_bytes=2304) > hop_cost(fat, 0, 10, payload_bytes=2304)
    assert plan_route([thin, fat], 10, payload_bytes=2304)[0].peer_id == fat.peer_id


def test_a_ban_doubles_with_each_failure_up_to_the_cap() -> None:
    bans = Banlist(base=5, cap=30)
    assert bans.ban("p", 100.0) == 105.0
    assert bans.is_banned("p", 104.9) and not bans.is_banned("p", 105.0)
    assert bans.ban("p", 200.0) == 210.0
    assert bans.ban("p", 300.0) == 320.0
    assert bans.ban("p", 400.0) == 430.0  # capped
    assert bans.banned(401.0) == frozenset({"p"})
    bans.forgive("p")
    assert bans.banned(401.0) == frozenset()
    assert bans.ban("p", 500.0) == 505.0


@given(st.lists(st.text(min_size=1, max_size=3), max_size=20), st.floats(0, 1e6))
def test_banned_peers_are_exactly_those_with_a_ban_in_force(peers: list[str], now: float) -> None:
    bans = Banlist(base=1, cap=10)
    for i, peer in enumerate(peers):
        bans.ban(peer, now - i)
    expected = {p for p in peers if bans.is_banned(p, now)}
    assert bans.banned(now) == frozenset(expected)
