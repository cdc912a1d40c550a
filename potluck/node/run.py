"""Running a node as a process: readiness file, signals, clean shutdown."""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Callable

import trio

from potluck.node.config import NodeConfig
from potluck.node.server import Server, open_node

READY_FILE = "node.json"


def write_ready_file(server: Server) -> None:
    """`data_dir/node.json`: the peer ID, addresses, span and PID of a ready node."""
    span = server.span
    record = {
        "peer_id": server.host.peer_id,
        "addrs": server.host.addrs,
        "pid": os.getpid(),
        "blocks": None if span is None else [span.start, span.end],
        "model": server.model_id,
    }
    path = server.config.data_dir / READY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


async def serve(config: NodeConfig, *, on_ready: Callable[[Server], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    (config.data_dir / READY_FILE).unlink(missing_ok=True)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config) as server:
            write_ready_file(server)
            server.on_change = write_ready_file  # a move rewrites the blocks in node.json
            if on_ready is not None:
                on_ready(server)
            async for _ in signals:
                break
    (config.data_dir / READY_FILE).unlink(missing_ok=True)


def run_node(config: NodeConfig, *, on_ready: Callable[[Server], None] | None = None) -> None:
    trio.run(functools.partial(serve, config, on_ready=on_ready))
