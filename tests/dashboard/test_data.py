"""The dashboard's pure core: coverage, uptimes, charts and the metrics text."""

from __future__ import annotations

import re

import pytest

from potluck.dashboard.data import (
    BalancePoint,
    BlockCoverage,
    UptimeTracker,
    revision,
    swarm_health,
    swarm_revision,
)
from potluck.dashboard.metrics import Metric, render
from potluck.dashboard.pages import layout, short
from potluck.dashboard.svg import balance_chart, coverage_chart
from potluck.p2p.identity import Identity
from potluck.wire import ServerInfo


def announce(
    start: int, end: int, *, tps: float = 10.0, validator: bool = False, quant: str = "none"
) -> ServerInfo:
    return ServerInfo(
        peer_id=Identity.generate().peer_id,
        addrs=(),
        model="m" * 64,
        start=start,
        end=end,
        throughput=tps,
        free_cache_tokens=100,
        version="0.1.0",
        expires_at=1000.0,
        validator=validator,
        quant=quant,
    )


def test_coverage_adds_route_servers_per_block() -> None:
    servers = [announce(0, 4, tps=5), announce(2, 6, tps=7), announce(0, 8, validator=True)]
    health = swarm_health(servers, now=990.0, since={}, num_blocks=None)
    assert health.num_blocks == 8  # the validator's span reaches the end
    assert [c.servers for c in health.coverage] == [1, 1, 2, 2, 1, 1, 0, 0]
    assert [c.throughput for c in health.coverage] == [5, 5, 12, 12, 7, 7, 0, 0]
    assert not health.covered and health.weakest_block == 6
    assert all(row.expires_in == 10.0 for row in health.servers)
    assert [row.validator for row in health.servers] == [False, False, True]


def test_a_servers_quantisation_is_listed() -> None:
    servers = [announce(0, 3), announce(3, 6, quant="nf4")]
    health = swarm_health(servers, now=0.0, since={}, num_blocks=6)
    assert [row.quant for row in health.servers] == ["none", "nf4"]


def test_a_swarm_is_covered_when_every_block_has_a_server() -> None:
    health = swarm_health([announce(0, 3), announce(3, 6)], now=0.0, since={}, num_blocks=6)
    assert health.covered and health.weakest_block == 0
    empty = swarm_health([], now=0.0, since={}, num_blocks=None)
    assert (empty.num_blocks, empty.covered, empty.weakest_block) == (0, False, None)


def test_uptime_restarts_after_a_gap() -> None:
    tracker = UptimeTracker(gap=30)
    assert tracker.observe(100.0, ["a", "b"]) == {"a": 100.0, "b": 100.0}
    assert tracker.observe(125.0, ["a"]) == {"a": 100.0}
    assert tracker.observe(150.0, ["a", "b"]) == {"a": 100.0, "b": 150.0}  # b was gone 50 s
    assert tracker.observe(300.0, ["b"]) == {"b": 300.0}


def test_revisions_change_with_the_swarm_and_the_ledger() -> None:
    servers = [announce(0, 3)]
    base = swarm_revision(servers, [])
    assert swarm_revision(servers, ["x"]) != base
    assert swarm_revision([*servers, announce(3, 6)], []) != base
    assert revision(100.0, base, 5) == revision(101.0, base, 5)
    assert revision(100.0, base, 6) != revision(100.0, base, 5)
    assert revision(100.0, base, 5) != revision(200.0, base, 5)  # pages refresh now and then


def test_the_coverage_chart_draws_a_bar_per_block() -> None:
    coverage = [BlockCoverage(b, 0 if b == 2 else 1, 4.0 + b) for b in range(5)]
    svg = coverage_chart(coverage)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert len(re.findall(r"<rect class=\"block", svg)) == 5
    assert len(re.findall(r"<rect class=\"block uncovered\"", svg)) == 1
    assert "block 2: 0 servers" in svg
    assert "no servers announced yet" in coverage_chart([])


def test_the_balance_chart_draws_balance_and_available() -> None:
    points = [
        BalancePoint(1000, 100, 100, "a"),
        BalancePoint(2000, 50, 50, "b"),
        BalancePoint(3000, 50, -50, "c"),
    ]
    svg = balance_chart(points)
    assert '<polyline class="balance"' in svg and '<polyline class="available"' in svg
    assert ">-50<" in svg  # the axis reaches the debt
    flat = balance_chart([BalancePoint(1000, 5, 5, "a")])
    assert '<polyline class="available"' not in flat
    assert "no entries yet" in balance_chart([])


def test_metrics_escape_label_values_and_describe_every_family() -> None:
    text = render(
        [
            Metric("x_total", "counter", "A help\nline.", [({"who": 'a"b\\c\nd'}, 3.0)]),
            Metric("y", "gauge", "Y.", [({}, 0.25), ({}, float("nan"))]),
        ]
    )
    assert text.splitlines() == [
        "# HELP x_total A help\\nline.",
        "# TYPE x_total counter",
        'x_total{who="a\\"b\\\\c\\nd"} 3',
        "# HELP y Y.",
        "# TYPE y gauge",
        "y 0.25",
        "y NaN",
    ]


@pytest.mark.parametrize("nasty", ["<script>alert(1)</script>", '"><img src=x>'])
def test_pages_escape_what_they_are_given(nasty: str) -> None:
    html = layout(nasty, "", "", revision=nasty, swarm=nasty)
    assert nasty not in html
    assert "&lt;" in html or "&quot;" in html


def test_short_ids_keep_both_ends() -> None:
    peer = "12D3KooWAa5HNwRVtAoUAtZuERGekU2ePbTN5FB2ejna4q668Hz4"
    assert short(peer) == "12D3KooW…668Hz4"
    assert short("abc") == "abc"
