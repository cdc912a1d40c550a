"""Serving the dashboard with hypercorn's trio worker, as a node does, over a real socket."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from potluck.dashboard import LedgerFileSource, create_app
from potluck.dashboard.serve import run_dashboard, serve_app
from potluck.errors import ConfigError
from potluck.node.config import NodeConfig, parse_listen
from potluck.testing.aio import run_bounded
from potluck.wire import SwarmView
from tests.dashboard.conftest import Built


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("8000", ("127.0.0.1", 8000)),
        (":8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8000", ("::1", 8000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected
    assert NodeConfig(dashboard=text).dashboard == text


@pytest.mark.parametrize("text", ["", "host:", "host:http", "1.2.3.4:70000", "a b:80", "h/x:1"])
def test_bad_listen_addresses_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--dashboard"):
        NodeConfig(dashboard=text)


def test_hypercorn_serves_the_app_in_trio_on_a_free_port(built: Built) -> None:
    with LedgerFileSource(built.path, built.work.genesis, servers=built.servers) as source:
        app = create_app(source)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(serve_app, app, "127.0.0.1", 0)
                assert url.startswith("http://127.0.0.1:") and url.endswith("/")
                assert not url.endswith(":0/")
                async with httpx.AsyncClient(base_url=url) as client:
                    status = (await client.get("/api/status")).json()
                    assert status["ledger"]["entries"] == len(built.work.entries)
                    page = await client.get("/balances")
                    assert page.status_code == 200 and "Leaderboard" in page.text
                nursery.cancel_scope.cancel()

        run_bounded(main, 30)


def test_a_taken_port_is_a_config_error(built: Built) -> None:
    with socket.socket() as taken, LedgerFileSource(None, None) as source:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(source)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_app, app, "127.0.0.1", port)

        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_bounded(main, 30)


def test_run_dashboard_reads_the_view_and_times_servers_up(built: Built) -> None:
    clock = [1000.0]
    views = [SwarmView(servers=tuple(built.servers[:2]))]

    async def main() -> None:
        async with (
            run_dashboard(
                "127.0.0.1",
                0,
                view=lambda: views[-1],
                ledger_path=built.path,
                genesis=built.work.genesis,
                model="tiny",
                model_identity=built.work.genesis.model_identity,
                num_blocks=8,
                node_id="me",
                clock=lambda: clock[0],
            ) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            first = (await client.get("/api/swarm")).json()
            clock[0] += 42
            later = (await client.get("/api/swarm")).json()
            status = (await client.get("/api/status")).json()
        assert [s["uptime_seconds"] for s in first["servers"]] == [0, 0]
        assert [s["uptime_seconds"] for s in later["servers"]] == [42, 42]
        assert status["node"] == "me" and status["ledger"]["forks"] == 1

    run_bounded(main, 30)
