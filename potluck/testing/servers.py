"""`ServerInfo` announcements for tests of routing and block choice (no network)."""

from __future__ import annotations

from potluck.wire import ServerInfo


def fake_server(
    name: str, start: int, end: int, throughput: float = 10.0, model: str = "smollm2"
) -> ServerInfo:
    """An unsigned announcement of peer `12D3KooW<name>` serving `[start, end)`."""
    return ServerInfo(
        peer_id=f"12D3KooW{name}",
        addrs=(),
        model=model,
        start=start,
        end=end,
        throughput=throughput,
        free_cache_tokens=1000,
        version="0.1.0",
        expires_at=1e9,
    )
