"""The server process: serves a span of blocks and the swarm view.

`NodeConfig` imports without torch, so the CLI answers `--help` and reports
a bad flag at once; the server itself is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from potluck.node.config import NodeConfig, parse_blocks

if TYPE_CHECKING:
    from potluck.node.run import READY_FILE, run_node, serve
    from potluck.node.server import NotAServer, Server, open_node

_LAZY = {
    "READY_FILE": "potluck.node.run",
    "run_node": "potluck.node.run",
    "serve": "potluck.node.run",
    "NotAServer": "potluck.node.server",
    "Server": "potluck.node.server",
    "open_node": "potluck.node.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'potluck.node' has no attribute {name!r}")


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
