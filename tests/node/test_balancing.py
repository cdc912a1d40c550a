"""Servers that choose their own blocks, and move to cover blocks that lost theirs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from potluck.client.routing import coverage
from potluck.client.runtime import ClientRuntime
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.testing.models import make_tiny_llama
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.wire import ServerInfo, SwarmRequest, SwarmView

pytestmark = pytest.mark.slow

FAST = ["--announce-interval", "0.5", "--announce-ttl", "3"]


def _servers(runtime: ClientRuntime, node: NodeProcess) -> list[ServerInfo]:
    async def pull() -> SwarmView:
        reply = await runtime.host.request(
            node.peer_id, PROTOCOL_RPC, SwarmRequest(), addrs=[node.addr]
        )
        assert isinstance(reply, SwarmView)
        return reply

    return list(runtime.run(pull).servers)


def _wait_for_coverage(
    runtime: ClientRuntime, boot: NodeProcess, num_blocks: int, times: int, timeout: float
) -> list[int]:
    deadline = time.monotonic() + timeout
    counts = [0] * num_blocks
    while time.monotonic() < deadline:
        counts = coverage(_servers(runtime, boot), num_blocks)
        if min(counts) >= times:
            break
        time.sleep(0.25)
    return counts


def test_six_servers_without_blocks_cover_30_blocks_twice(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "llama30", num_layers=30, seed=1)
    # announcements that outlive a busy machine's stalls: nobody dies in this test, and
    # a server must see every earlier one when it chooses
    steady = ["--announce-interval", "1", "--announce-ttl", "20"]
    with LocalSwarm(tmp_path / "swarm") as swarm:
        boot = swarm.start_node("boot", extra=steady)
        spans = []
        # equal servers: a fixed per-step delay dominates the measured throughput, which
        # for a model this tiny would otherwise be mostly noise on a busy machine
        equal = ["--num-blocks", "10", "--compute-delay", "0.05", "--rebalance-interval", "600"]
        for i in range(6):  # one after another, each able to hold 10 blocks
            node = swarm.start_node(f"s{i}", model=str(model), extra=[*steady, *equal])
            spans.append(tuple(node.info["blocks"]))  # type: ignore[arg-type]
        runtime = ClientRuntime()
        try:
            counts = _wait_for_coverage(runtime, boot, 30, times=2, timeout=15)
        finally:
            runtime.close()
    assert all(end - start == 10 for start, end in spans), spans
    assert min(counts) >= 2, (spans, counts)


def test_a_running_server_moves_to_blocks_that_lost_their_server(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "llama8", num_layers=8, seed=2)
    with LocalSwarm(tmp_path / "swarm") as swarm:
        boot = swarm.start_node("boot", extra=FAST)
        low = swarm.start_node("low", model=str(model), blocks="0:4", extra=FAST)
        high = swarm.start_node("high", model=str(model), blocks="4:8", extra=FAST)
        mover = swarm.start_node(
            "mover",
            model=str(model),
            extra=[*FAST, "--num-blocks", "4", "--rebalance-interval", "1"],
        )
        start, _ = mover.info["blocks"]  # type: ignore[misc]
        # kill the fixed server whose blocks the mover does not hold
        doomed = high if start == 0 else low
        runtime = ClientRuntime()
        try:
            assert min(_wait_for_coverage(runtime, boot, 8, times=1, timeout=10)) >= 1
            doomed.kill(signal.SIGKILL)
            killed = time.monotonic()
            # first the dead server's announcement expires (3 s), then the mover moves
            deadline = killed + 30
            moved = False
            while time.monotonic() < deadline and not moved:
                servers = _servers(runtime, boot)
                mine = [s for s in servers if s.peer_id == mover.peer_id]
                alive = [s for s in servers if s.peer_id != doomed.peer_id]
                moved = bool(mine) and min(coverage(alive, 8)) >= 1
                time.sleep(0.25)
            restored_after = time.monotonic() - killed
        finally:
            runtime.close()
    assert moved, "the running server never moved to the unserved blocks"
    assert restored_after < 30
    assert "moving from blocks" in mover.log_tail(200)


def test_a_server_joining_without_blocks_takes_the_gap(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "llama8", num_layers=8, seed=2)
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_node("boot", extra=FAST)
        swarm.start_node("low", model=str(model), blocks="0:5", extra=FAST)
        joiner = swarm.start_node("joiner", model=str(model), extra=[*FAST, "--num-blocks", "3"])
    assert joiner.info["blocks"] == [5, 8]
