"""Signed announcements: nobody can speak for another server or extend its expiry."""

from __future__ import annotations

import dataclasses

import pytest

from potluck.errors import InvalidSignature
from potluck.p2p.announce import sign_announcement, verify_announcement
from potluck.p2p.discovery import PeerTable
from potluck.p2p.identity import Identity
from potluck.wire import ServerInfo, SwarmView, decode_message, encode_message

NOW = 1_000_000.0


def info_for(identity: Identity, **changes: object) -> ServerInfo:
    base = ServerInfo(
        peer_id=identity.peer_id,
        addrs=("/ip4/127.0.0.1/tcp/4001",),
        model="m",
        start=0,
        end=10,
        throughput=5.0,
        free_cache_tokens=100,
        version="0.1.0",
        expires_at=NOW + 20,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_signed_announcement_verifies_and_survives_the_wire() -> None:
    identity = Identity.generate()
    signed = sign_announcement(info_for(identity), identity)
    verify_announcement(signed)
    relayed = decode_message(encode_message(SwarmView((signed,))))
    assert isinstance(relayed, SwarmView)
    verify_announcement(relayed.servers[0])


@pytest.mark.parametrize(
    "change", [{"end": 30}, {"expires_at": NOW + 1e6}, {"addrs": ("/ip4/10.0.0.1/tcp/1",)}]
)
def test_any_change_to_a_signed_announcement_breaks_it(change: dict[str, object]) -> None:
    identity = Identity.generate()
    signed = sign_announcement(info_for(identity), identity)
    with pytest.raises(InvalidSignature):
        verify_announcement(dataclasses.replace(signed, **change))  # type: ignore[arg-type]


def test_nobody_can_sign_for_another_peer() -> None:
    victim, forger = Identity.generate(), Identity.generate()
    with pytest.raises(InvalidSignature):
        sign_announcement(info_for(victim), forger)
    forged_sig = forger.sign(b"anything").hex()
    with pytest.raises(InvalidSignature):
        verify_announcement(info_for(victim, signature=forged_sig))
    with pytest.raises(InvalidSignature, match="not signed"):
        verify_announcement(info_for(victim))


def test_a_verifying_table_rejects_and_counts_forged_and_everlasting_entries() -> None:
    honest, forger = Identity.generate(), Identity.generate()
    table = PeerTable(verify=verify_announcement, max_ttl=60)
    good = sign_announcement(info_for(honest), honest)
    forged = info_for(honest, end=30, expires_at=NOW + 50, signature=forger.sign(b"x").hex())
    everlasting = sign_announcement(info_for(forger, expires_at=1e300), forger)
    assert table.upsert(good, NOW) is True
    assert table.upsert(forged, NOW) is False
    assert table.upsert(everlasting, NOW) is False
    assert table.rejected == 2
    assert table.live(NOW) == [good]
