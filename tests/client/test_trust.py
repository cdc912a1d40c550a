"""TrustPolicy: which servers a private route may use, from attestations alone."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from potluck.client.trust import TrustPolicy, valid_attestation
from potluck.ledger.entry import ZERO_HASH, Entry, make_entry
from potluck.p2p.identity import Identity
from potluck.wire import ServerInfo

SWARM = "ab" * 32
NOW = 1_700_000_000_000


def attest(
    validator: Identity, server: Identity, *, swarm: str = SWARM, kind: str = "attest", **body: Any
) -> Entry:
    return make_entry(
        validator,
        swarm=swarm,
        seq=1,
        prev=ZERO_HASH,
        time=NOW - 1000,
        kind=kind,
        body={"server": server.public_bytes.hex(), **body} if kind == "attest" else body,
        balance=0,
    )


def info(server: Identity, *attestations: Entry) -> ServerInfo:
    return ServerInfo(
        peer_id=server.peer_id,
        addrs=(),
        model="m",
        start=0,
        end=2,
        throughput=1.0,
        free_cache_tokens=10,
        version="v",
        expires_at=0.0,
        attestations=tuple((e.wire()[0], e.wire()[1]) for e in attestations),
    )


@pytest.fixture
def keys() -> dict[str, Identity]:
    return {name: Identity.generate() for name in ("validator", "server", "other", "stranger")}


def policy(keys: dict[str, Identity], **kw: Any) -> TrustPolicy:
    return TrustPolicy(
        validators=frozenset({keys["validator"].public_bytes.hex()}), swarm_id=SWARM, **kw
    )


def test_a_validators_attestation_makes_a_server_trusted(keys: dict[str, Identity]) -> None:
    server = keys["server"]
    entry = attest(keys["validator"], server)
    assert policy(keys).trusts(info(server, entry), NOW)
    assert policy(keys).trusted([info(server, entry), info(keys["other"])], NOW) == {server.peer_id}


def test_attestations_that_do_not_hold_are_ignored(keys: dict[str, Identity]) -> None:
    server = keys["server"]
    bad = {
        "by a non-validator": attest(keys["stranger"], server),
        "for another server": attest(keys["validator"], keys["other"]),
        "for another swarm": attest(keys["validator"], server, swarm="cd" * 32),
        "expired": attest(keys["validator"], server, until=NOW - 1),
        "another kind": attest(keys["validator"], server, kind="checkpoint", frontier={}),
    }
    for why, entry in bad.items():
        assert not policy(keys).trusts(info(server, entry), NOW), why
    good = attest(keys["validator"], server, until=NOW + 1)
    forged = dataclasses.replace(good, signature=keys["stranger"].sign(b"x"))
    assert not policy(keys).trusts(info(server, forged), NOW)
    assert policy(keys).trusts(info(server, good), NOW)
    # a good attestation copied into another server's announcement proves nothing
    assert not policy(keys).trusts(info(keys["other"], good), NOW)
    assert not valid_attestation(
        ("{}", "ab" * 64),
        peer_id=server.peer_id,
        validators=frozenset({keys["validator"].public_bytes.hex()}),
        swarm_id=SWARM,
        now_ms=NOW,
    )


def test_listed_servers_and_validators_are_trusted_without_attestation(
    keys: dict[str, Identity],
) -> None:
    by_peer = policy(keys, listed=frozenset({keys["server"].peer_id}))
    by_account = policy(keys, listed=frozenset({keys["other"].public_bytes.hex()}))
    assert by_peer.trusts(info(keys["server"]), NOW)
    assert by_account.trusts(info(keys["other"]), NOW)
    assert policy(keys).trusts(info(keys["validator"]), NOW)
    assert not policy(keys).trusts(info(keys["stranger"]), NOW)


def test_without_a_genesis_only_listed_servers_are_trusted(keys: dict[str, Identity]) -> None:
    entry = attest(keys["validator"], keys["server"])
    assert not TrustPolicy().trusts(info(keys["server"], entry), NOW)
    listed = TrustPolicy(listed=frozenset({keys["server"].peer_id}))
    assert listed.trusts(info(keys["server"]), NOW)


def test_routes_with_a_trust_policy_use_only_trusted_servers(keys: dict[str, Identity]) -> None:
    import time

    from potluck.client.session import SessionOptions
    from potluck.client.swarm import SwarmClient
    from potluck.errors import ConfigError, NoTrustedRouteError
    from potluck.p2p.announce import sign_announcement

    ghost = f"/ip4/127.0.0.1/tcp/1/p2p/{Identity.generate().peer_id}"
    swarm = SwarmClient([ghost], model_id="m", num_blocks=4)
    now = time.time()
    trusted = keys["server"]
    entry = attest(keys["validator"], trusted, until=int(now * 1000) + 60_000)

    def announce(who: Identity, start: int, end: int, *entries: Entry) -> None:
        base = dataclasses.replace(info(who, *entries), start=start, end=end, expires_at=now + 10)
        assert swarm.table.upsert(sign_announcement(base, who), now)

    announce(trusted, 0, 2, entry)
    announce(keys["other"], 0, 4)  # untrusted, one hop over everything
    trust = policy(keys)
    assert [h.peer_id for h in swarm.route()] == [keys["other"].peer_id]
    with pytest.raises(NoTrustedRouteError, match="block 2"):
        swarm.route(trust=trust)
    second = Identity.generate()
    announce(second, 2, 4)
    with pytest.raises(NoTrustedRouteError):
        swarm.route(trust=trust)
    trust = policy(keys, listed=frozenset({second.peer_id}))
    assert [h.peer_id for h in swarm.route(trust=trust)] == [trusted.peer_id, second.peer_id]

    assert SessionOptions().ticket_class is None
    assert SessionOptions(priority="high").ticket_class == "paid"
    assert SessionOptions(route="trusted").ticket_class == "private"
    assert SessionOptions(priority="high", route="trusted").ticket_class == "paid"
    for bad in ({"priority": "urgent"}, {"route": "secret"}):
        with pytest.raises(ConfigError):
            SessionOptions(**bad)
