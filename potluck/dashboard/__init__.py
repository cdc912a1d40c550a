"""The dashboard: balances and swarm health in a browser, a JSON API, Prometheus metrics.

A FastAPI app (`create_app`) over a `DashboardSource`: inside a node
(`potluck node start --dashboard 127.0.0.1:8000`, or `potluck dashboard`) the
source is the node's swarm view and a read-only connection to its ledger
replica (`NodeSource`); in tests, a ledger file and a list of servers
(`LedgerFileSource`). What the pages and the API show is computed by the pure
functions of `potluck.dashboard.data`; charts are SVG drawn on the server
(`potluck.dashboard.svg`); nothing is loaded from outside the package.
"""

from potluck.dashboard.app import ApiError, create_app
from potluck.dashboard.source import (
    DashboardSource,
    LedgerFileSource,
    NodeSource,
    NoLedger,
    SwarmSnapshot,
    open_node_source,
)

__all__ = [
    "ApiError",
    "DashboardSource",
    "LedgerFileSource",
    "NoLedger",
    "NodeSource",
    "SwarmSnapshot",
    "create_app",
    "open_node_source",
]
