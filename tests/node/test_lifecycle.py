"""Node processes: start, announce, expire, stop cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from potluck.client.runtime import ClientRuntime
from potluck.node.run import READY_FILE
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.testing.swarm import LocalSwarm
from potluck.wire import SwarmRequest, SwarmView

pytestmark = pytest.mark.slow


def _view(runtime: ClientRuntime, peer_id: str, addr: str) -> SwarmView:
    async def pull() -> SwarmView:
        reply = await runtime.host.request(peer_id, PROTOCOL_RPC, SwarmRequest(), addrs=[addr])
        assert isinstance(reply, SwarmView)
        return reply

    return runtime.run(pull)


def test_ctrl_c_stops_a_server_cleanly_and_identity_persists(
    tiny_model: Path, tmp_path: Path
) -> None:
    with LocalSwarm(tmp_path) as swarm:
        node = swarm.start_node("s", model=str(tiny_model), blocks="0:3")
        first_peer = node.peer_id
        key = node.data_dir / "identity.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert f"potluck node listening on {node.addr}" in node.log_tail()
        node.kill(signal.SIGINT)
        assert node.process.wait(timeout=30) == 0
        assert not (node.data_dir / READY_FILE).exists()
        assert "Traceback" not in node.log_tail(200)

        again = swarm.start_node("s", model=str(tiny_model), blocks="0:3")
        assert again.peer_id == first_peer


def test_servers_are_announced_and_a_dead_one_expires(tiny_model: Path, tmp_path: Path) -> None:
    fast = ["--announce-interval", "0.5", "--announce-ttl", "3"]
    with LocalSwarm(tmp_path) as swarm:
        boot = swarm.start_node("boot", extra=fast)
        a = swarm.start_node("a", model=str(tiny_model), blocks="0:3", extra=fast, wait=False)
        b = swarm.start_node("b", model=str(tiny_model), blocks="3:6", extra=fast, wait=False)
        swarm.wait_ready(a)
        swarm.wait_ready(b)
        runtime = ClientRuntime()
        try:
            deadline = time.monotonic() + 20
            seen: set[str] = set()
            while time.monotonic() < deadline and seen != {a.peer_id, b.peer_id}:
                seen = {s.peer_id for s in _view(runtime, boot.peer_id, boot.addr).servers}
                time.sleep(0.2)
            assert seen == {a.peer_id, b.peer_id}
            # a server learns of the other through the bootstrap node, within an interval or two
            b_view: set[str] = set()
            while time.monotonic() < deadline and a.peer_id not in b_view:
                b_view = {s.peer_id for s in _view(runtime, b.peer_id, b.addr).servers}
                time.sleep(0.2)
            assert a.peer_id in b_view

            a.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < 15:
                seen = {s.peer_id for s in _view(runtime, boot.peer_id, boot.addr).servers}
                if a.peer_id not in seen:
                    break
                time.sleep(0.2)
            gone_after = time.monotonic() - killed_at
        finally:
            runtime.close()
        assert a.peer_id not in seen and b.peer_id in seen
        assert (
            gone_after <= 3 + 4
        )  # the TTL, plus the 1 s expiry sweep and slack for a busy machine


def _start_and_fail(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "potluck", "node", "start", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _start_and_fail(tmp_path, "--port", str(port))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_a_malformed_initial_peer_is_a_one_line_error(tmp_path: Path) -> None:
    result = _start_and_fail(tmp_path, "--initial-peers", "127.0.0.1:4000")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "127.0.0.1:4000" in result.stderr and "Traceback" not in result.stderr


def test_a_second_node_on_a_taken_port_is_refused(tmp_path: Path) -> None:
    with LocalSwarm(tmp_path) as swarm:
        first = swarm.start_node("first", extra=["--port", "0"])
        port = first.addr.split("/tcp/")[1].split("/")[0]
        result = _start_and_fail(tmp_path / "second", "--port", port)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot listen" in result.stderr
