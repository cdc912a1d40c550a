"""The client's swarm view against real (and missing) peers."""

from __future__ import annotations

import socket

import pytest

from potluck.client.runtime import ClientRuntime
from potluck.client.swarm import SwarmClient
from potluck.errors import NoRouteError
from potluck.p2p.identity import Identity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_route_says_why_the_initial_peers_gave_no_view() -> None:
    ghost = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{Identity.generate().peer_id}"
    swarm = SwarmClient([ghost], model_id="m", num_blocks=4, request_timeout=1.0)
    runtime = ClientRuntime(timeout=2.0)
    try:
        with pytest.raises(NoRouteError, match="gave no usable view"):
            runtime.run(swarm.wait_for_route, runtime.host, 1.5)
    finally:
        runtime.close()
    assert list(swarm.view_failures) == [ghost.rsplit("/", 1)[1]]


def test_no_initial_peers_is_refused_at_once() -> None:
    with pytest.raises(NoRouteError, match="no initial peers"):
        SwarmClient([], model_id="m", num_blocks=4)
