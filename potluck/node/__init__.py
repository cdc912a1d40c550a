"""The server process: serves a span of blocks and the swarm view."""

from __future__ import annotations

from potluck.node.config import NodeConfig, parse_blocks
from potluck.node.run import READY_FILE, run_node, serve
from potluck.node.server import NotAServer, Server, open_node

__all__ = [
    "READY_FILE",
    "NodeConfig",
    "NotAServer",
    "Server",
    "open_node",
    "parse_blocks",
    "run_node",
    "serve",
]
