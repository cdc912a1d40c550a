"""The swarm view: which servers exist, what they serve, until when.

Announcements are `ServerInfo` messages that carry their own expiry time.
Every node keeps a `PeerTable`; a server pushes its own `ServerInfo` to the
peers it knows on the rpc protocol and gets their whole view back in the same
round trip (push-pull), and a client pulls a view on start. Because views are
merged by taking, per peer, the announcement that expires last, the order in
which they arrive does not matter, and a dead server leaves every view once
its last announcement expires.

Announcements are signed by the server they describe
(`potluck.p2p.announce`); a table built with `verify` rejects any whose
signature does not check, and any that claims to stay valid for more than
`max_ttl` seconds, so a forged or everlasting entry never enters a view.
Rejections are counted in `rejected`. When two announcements of one peer
expire at the same instant, the one with the greater encoding wins, so the
result is the same in any order of arrival.

Pure and synchronous: time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from potluck.errors import PotluckError
from potluck.wire import ServerInfo, encode_message

Verify = Callable[[ServerInfo], None]

#: Longest validity an announcement may claim, in seconds from now.
DEFAULT_MAX_TTL = 300.0


def _rank(info: ServerInfo) -> tuple[float, bytes]:
    return info.expires_at, encode_message(info)


class PeerTable:
    """Announcements by peer ID, newest expiry wins, expired ones dropped."""

    def __init__(
        self,
        *,
        max_peers: int = 4096,
        verify: Verify | None = None,
        max_ttl: float = DEFAULT_MAX_TTL,
    ) -> None:
        self._infos: dict[str, ServerInfo] = {}
        self.max_peers = max_peers
        self.verify = verify
        self.max_ttl = max_ttl
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._infos)

    def upsert(self, info: ServerInfo, now: float) -> bool:
        """Record `info` unless it expired or an announcement that lasts longer is known.

        Returns True if the table changed.
        """
        if info.expires_at <= now:
            return False
        if info.expires_at > now + self.max_ttl:
            self.rejected += 1
            return False
        known = self._infos.get(info.peer_id)
        if known is not None and _rank(known) >= _rank(info):
            return False
        if self.verify is not None:
            try:
                self.verify(info)
            except PotluckError:
                self.rejected += 1
                return False
        if known is None and len(self._infos) >= self.max_peers:
            self.prune(now)
            if len(self._infos) >= self.max_peers:
                return False
        self._infos[info.peer_id] = info
        return True

    def merge(self, infos: Iterable[ServerInfo], now: float) -> int:
        """Upsert each; returns how many changed the table."""
        return sum(self.upsert(info, now) for info in infos)

    def remove(self, peer_id: str) -> None:
        self._infos.pop(peer_id, None)

    def prune(self, now: float) -> list[str]:
        """Drop expired announcements; returns the peer IDs dropped."""
        dead = [pid for pid, info in self._infos.items() if info.expires_at <= now]
        for pid in dead:
            del self._infos[pid]
        return dead

    def live(self, now: float) -> list[ServerInfo]:
        """Unexpired announcements, sorted by peer ID."""
        return sorted(
            (info for info in self._infos.values() if info.expires_at > now),
            key=lambda info: info.peer_id,
        )

    def get(self, peer_id: str) -> ServerInfo | None:
        return self._infos.get(peer_id)
