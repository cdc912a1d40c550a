"""Which servers a private route may use: the pure core.

A session with `route="trusted"` sends hidden states only to trusted
servers, for every hop, every failover and every spot-check. A server is
trusted when

- the user listed it (`trusted_servers=[peer ID or ledger account, ...]`), or
- its announcement carries a valid attestation: an `attest` ledger entry
  whose signature verifies, authored by a validator of the swarm's genesis,
  for this swarm, naming the server's own account, and not past its `until`
  (unix milliseconds; no `until`: no expiry), or
- it is a validator of the genesis (validators only check, they never serve
  route hops, but a private session's spot-checks go to them).

Attestations travel inside the server's signed `ServerInfo`, so a client
needs no ledger replica to check them: a server cannot attest itself (it
holds no validator key) and cannot alter an attestation (the validator's
signature covers the whole entry). A revoked trust shows only when the
attestation expires; validators choose `until` accordingly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from potluck.errors import InvalidSignature, LedgerError
from potluck.ledger.entry import decode_wire, verify_entry
from potluck.p2p.announce import account_of_peer
from potluck.wire import ServerInfo

__all__ = ["TrustPolicy", "valid_attestation"]


def valid_attestation(
    wire: tuple[str, str],
    *,
    peer_id: str,
    validators: frozenset[str],
    swarm_id: str,
    now_ms: int,
) -> bool:
    """Whether `wire` is a validator's unexpired attestation of `peer_id` for this swarm."""
    try:
        entry = decode_wire(wire)
        account = account_of_peer(peer_id)
        verify_entry(entry)
    except (LedgerError, InvalidSignature):
        return False
    if entry.kind != "attest" or entry.swarm != swarm_id or entry.author not in validators:
        return False
    if entry.body.get("server") != account:
        return False
    until = entry.body.get("until")
    return until is None or until > now_ms


@dataclass(frozen=True)
class TrustPolicy:
    """The servers a client trusts with its hidden states."""

    #: Validator accounts of the genesis (empty without one: only listed servers).
    validators: frozenset[str] = frozenset()
    #: The swarm attestations must be for.
    swarm_id: str = ""
    #: Peer IDs or ledger accounts the user trusts whatever the ledger says.
    listed: frozenset[str] = frozenset()

    def trusts(self, server: ServerInfo, now_ms: int) -> bool:
        if server.peer_id in self.listed:
            return True
        try:
            account = account_of_peer(server.peer_id)
        except InvalidSignature:
            return False
        if account in self.listed or account in self.validators:
            return True
        if not self.validators or not self.swarm_id:
            return False
        return any(
            valid_attestation(
                wire,
                peer_id=server.peer_id,
                validators=self.validators,
                swarm_id=self.swarm_id,
                now_ms=now_ms,
            )
            for wire in server.attestations
        )

    def trusted(self, servers: Iterable[ServerInfo], now_ms: int) -> frozenset[str]:
        """The peer IDs among `servers` that this policy trusts."""
        return frozenset(s.peer_id for s in servers if self.trusts(s, now_ms))
