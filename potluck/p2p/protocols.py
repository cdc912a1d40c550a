"""libp2p protocol IDs spoken by Potluck nodes (see potluck.node.server)."""

from __future__ import annotations

#: One request, one reply per stream: info, swarm view, announcements, stateless forward.
PROTOCOL_RPC = "/potluck/rpc/1.0.0"
#: A long-lived stream per client hop: open, steps, close.
PROTOCOL_INFERENCE = "/potluck/inference/1.0.0"
