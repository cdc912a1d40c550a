"""Points for serving: receipts, epochs, capacity audits and mint plans
(`potluck.ledger.economy`), including the property that fake clients earn a
server nothing beyond its verified capacity."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from potluck.errors import InvalidEvidence
from potluck.ledger.economy import (
    RECEIPT_DOMAIN,
    Capacity,
    MintPlan,
    capacity_audit_body,
    capacity_from_audit,
    epoch_of,
    mint_body,
    plan_mints,
    receipt_body,
    receipt_payload,
    scarcity_weights,
    sign_receipt,
    verify_receipt,
)
from potluck.ledger.entry import MAX_AMOUNT, ZERO_HASH, Entry, check_body, make_entry
from potluck.ledger.genesis import Economy
from potluck.p2p.identity import Identity
from potluck.testing.ledger import CachedIdentity, seeded_identity

SWARM = "5a" * 32
OTHER_SWARM = "a5" * 32
ECONOMY = Economy()  # epoch 600 s, mint_rate 100, scarcity_weight_max 2.0
EPOCH = 2_995_000  # an epoch in 2026
T0 = EPOCH * ECONOMY.epoch_seconds * 1000  # its first millisecond
_seq = itertools.count(1)


def ident(name: str) -> CachedIdentity:
    return seeded_identity("economy", name)


def hexkey(identity: Identity) -> str:
    return identity.public_bytes.hex()


def receipt(
    server: Identity,
    client: Identity,
    *,
    tokens: int,
    start: int = 0,
    end: int = 4,
    session: str = "s1",
    time: int = T0 + 1000,
    swarm: str = SWARM,
    signed_swarm: str | None = None,
    blocks: int | None = None,
    signed_tokens: int | None = None,
) -> Entry:
    """A receipt entry by `server` for `client`'s signed receipt; each keyword that
    differs from what was signed makes it invalid."""
    signature = sign_receipt(
        client,
        swarm=signed_swarm or swarm,
        session=session,
        server=hexkey(server),
        tokens=tokens if signed_tokens is None else signed_tokens,
        start=start,
        end=end,
    )
    body = receipt_body(
        client=hexkey(client),
        session=session,
        tokens=tokens,
        start=start,
        end=end,
        signature=signature,
    )
    if blocks is not None:
        body["blocks"] = blocks
    return make_entry(
        server,
        swarm=swarm,
        seq=next(_seq),
        prev=ZERO_HASH,
        time=time,
        kind="receipt",
        body=body,
        balance=0,
    )


# ---- receipts ---------------------------------------------------------------------


def test_the_payload_is_the_domain_and_canonical_json() -> None:
    payload = receipt_payload(
        swarm=SWARM, session="abc", server="11" * 32, client="22" * 32, tokens=7, start=2, end=5
    )
    assert RECEIPT_DOMAIN == b"potluck/receipt/v1\x00"
    assert payload.startswith(RECEIPT_DOMAIN)
    text = payload[len(RECEIPT_DOMAIN) :].decode("ascii")
    assert text == (
        '{"client":"' + "22" * 32 + '","end":5,"server":"' + "11" * 32 + '","session":"abc",'
        '"start":2,"swarm":"' + SWARM + '","tokens":7}'
    )
    assert json.loads(text)["tokens"] == 7


def test_a_signed_receipt_verifies_and_its_body_is_complete() -> None:
    server, client = ident("server"), ident("client")
    entry = receipt(server, client, tokens=12, start=1, end=4, session="sess")
    verify_receipt(entry, SWARM)
    assert entry.body["client"] == hexkey(client)
    assert (entry.body["session"], entry.body["tokens"], entry.body["blocks"]) == ("sess", 12, 3)
    details = entry.body["details"]
    assert (details["start"], details["end"]) == (1, 4)
    assert len(details["signature"]) == 128
    check_body("receipt", entry.body)  # the schema in entry.py accepts it


def test_a_forged_or_altered_receipt_is_refused() -> None:
    server, client, other = ident("server"), ident("client"), ident("other")
    # signed by another key than the client it names
    forged = receipt(server, other, tokens=5)
    body = dict(forged.body)
    body["client"] = hexkey(client)
    impostor = make_entry(
        server, swarm=SWARM, seq=1, prev=ZERO_HASH, time=T0, kind="receipt", body=body, balance=0
    )
    with pytest.raises(InvalidEvidence, match="not signed by its client"):
        verify_receipt(impostor, SWARM)
    # more tokens recorded than the client signed for
    with pytest.raises(InvalidEvidence, match="not signed by its client"):
        verify_receipt(receipt(server, client, tokens=500, signed_tokens=5), SWARM)
    # a signature that is not hex
    details = dict(forged.body["details"])
    details["signature"] = "zz"
    junk = make_entry(
        server,
        swarm=SWARM,
        seq=1,
        prev=ZERO_HASH,
        time=T0,
        kind="receipt",
        body={**forged.body, "details": details},
        balance=0,
    )
    with pytest.raises(InvalidEvidence, match="not signed by its client"):
        verify_receipt(junk, SWARM)


def test_a_receipt_signed_for_another_swarm_is_refused() -> None:
    server, client = ident("server"), ident("client")
    entry = receipt(server, client, tokens=5, signed_swarm=OTHER_SWARM)
    with pytest.raises(InvalidEvidence, match="not signed by its client"):
        verify_receipt(entry, SWARM)
    good = receipt(server, client, tokens=5)
    with pytest.raises(InvalidEvidence, match="another swarm"):
        verify_receipt(good, OTHER_SWARM)


def test_a_server_cannot_sign_its_own_receipts() -> None:
    server = ident("server")
    entry = receipt(server, server, tokens=5)  # a genuine signature, by the server's key
    with pytest.raises(InvalidEvidence, match="by the server itself"):
        verify_receipt(entry, SWARM)


def test_blocks_must_be_end_minus_start() -> None:
    server, client = ident("server"), ident("client")
    with pytest.raises(InvalidEvidence, match="not end - start"):
        verify_receipt(receipt(server, client, tokens=5, start=0, end=4, blocks=40), SWARM)


def test_other_entries_are_not_receipts() -> None:
    server, client = ident("server"), ident("client")
    send = make_entry(
        server,
        swarm=SWARM,
        seq=1,
        prev=ZERO_HASH,
        time=T0,
        kind="send",
        body={"to": hexkey(client), "amount": 1},
        balance=0,
    )
    with pytest.raises(InvalidEvidence, match="not a receipt"):
        verify_receipt(send, SWARM)
    bare = make_entry(
        server,
        swarm=SWARM,
        seq=1,
        prev=ZERO_HASH,
        time=T0,
        kind="receipt",
        body={"client": hexkey(client), "session": "s", "tokens": 1, "blocks": 1},
        balance=0,
    )
    with pytest.raises(InvalidEvidence, match="no details"):
        verify_receipt(bare, SWARM)
    no_end = make_entry(
        server,
        swarm=SWARM,
        seq=1,
        prev=ZERO_HASH,
        time=T0,
        kind="receipt",
        body={**bare.body, "details": {"start": 0, "signature": "00"}},
        balance=0,
    )
    with pytest.raises(InvalidEvidence, match="needs details"):
        verify_receipt(no_end, SWARM)


# ---- epochs and capacity ------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_ms", "seconds", "epoch"),
    [(0, 600, 0), (599_999, 600, 0), (600_000, 600, 1), (1_799_999, 600, 2), (4_500, 1, 4)],
)
def test_epoch_of(time_ms: int, seconds: int, epoch: int) -> None:
    assert epoch_of(time_ms, Economy(epoch_seconds=seconds)) == epoch


def audit(body: dict[str, object]) -> Entry:
    return make_entry(
        ident("validator"),
        swarm=SWARM,
        seq=next(_seq),
        prev=ZERO_HASH,
        time=T0,
        kind="audit",
        body=body,
        balance=0,
    )


def capacity_body(**changes: int) -> dict[str, object]:
    fields = {
        "server": "33" * 32,
        "epoch": EPOCH,
        "start": 2,
        "end": 6,
        "probes": 8,
        "answered": 6,
        "milli_tokens_per_s": 12_500,
        "mismatches": 0,
    }
    fields.update(changes)
    return capacity_audit_body(**fields)  # type: ignore[arg-type]


def test_a_capacity_audit_reads_back() -> None:
    body = capacity_body()
    assert body == {
        "server": "33" * 32,
        "result": "capacity",
        "details": {
            "epoch": EPOCH,
            "start": 2,
            "end": 6,
            "probes": 8,
            "answered": 6,
            "milli_tokens_per_s": 12_500,
            "mismatches": 0,
        },
    }
    check_body("audit", body)
    assert capacity_from_audit(audit(body)) == Capacity("33" * 32, 2, 6, 12.5, 0.75)


@pytest.mark.parametrize(
    "changes",
    [{"probes": 0, "answered": 0}, {"answered": 9}, {"start": 6}, {"end": 1}, {"start": -1}],
    ids=["no-probes", "more-answers-than-probes", "empty-span", "reversed-span", "negative"],
)
def test_a_capacity_audit_that_does_not_add_up_is_none(changes: dict[str, int]) -> None:
    assert capacity_from_audit(audit(capacity_body(**changes))) is None


def test_only_capacity_audits_have_a_capacity() -> None:
    other = audit({"server": "33" * 32, "result": "evidence", "details": {"case": "x"}})
    assert capacity_from_audit(other) is None
    assert capacity_from_audit(audit({"server": "33" * 32, "result": "capacity"})) is None
    missing = capacity_body()
    del missing["details"]["milli_tokens_per_s"]  # type: ignore[attr-defined]
    assert capacity_from_audit(audit(missing)) is None
    server, client = ident("server"), ident("client")
    assert capacity_from_audit(receipt(server, client, tokens=1)) is None


def test_token_blocks_is_a_whole_epoch_of_measured_throughput() -> None:
    cap = Capacity("33" * 32, 2, 6, tokens_per_s=12.5, uptime=0.75)
    assert cap.token_blocks(600) == math.floor(12.5 * 0.75 * 600) * 4 == 5625 * 4
    assert Capacity("33" * 32, 2, 6, 0.0, 1.0).token_blocks(600) == 0
    assert Capacity("33" * 32, 2, 6, 10.0, 0.0).token_blocks(600) == 0
    assert Capacity("33" * 32, 6, 6, 10.0, 1.0).token_blocks(600) == 0


# ---- mint plans ---------------------------------------------------------------------


def cap(server: Identity, start: int, end: int, tps: float = 10.0, uptime: float = 1.0) -> Capacity:
    return Capacity(hexkey(server), start, end, tps, uptime)


def plans(
    receipts: Sequence[Entry],
    capacities: Sequence[Capacity],
    *,
    excluded: Sequence[str] = (),
    num_blocks: int = 4,
    validators: int = 1,
    economy: Economy = ECONOMY,
) -> dict[str, MintPlan]:
    made = plan_mints(
        epoch=EPOCH,
        receipts=receipts,
        capacities={c.server: c for c in capacities},
        excluded=set(excluded),
        num_blocks=num_blocks,
        economy=economy,
        validators=validators,
        swarm=SWARM,
    )
    assert [p.server for p in made] == sorted(p.server for p in made)
    return {p.server: p for p in made}


def test_usage_is_capped_by_capacity() -> None:
    a, b = ident("a"), ident("b")
    client = ident("client")
    full = 10 * 600 * 4  # 10 tokens/s for a 600 s epoch over 4 blocks
    made = plans(
        [
            receipt(a, client, tokens=3 * 6000, start=0, end=4),  # three times its capacity
            receipt(b, client, tokens=1500, start=0, end=4),  # a quarter of it
        ],
        [cap(a, 0, 4), cap(b, 0, 4)],
    )
    pa, pb = made[hexkey(a)], made[hexkey(b)]
    assert (pa.usage, pa.capacity, pa.weight_milli) == (3 * full, full, 1000)
    assert pa.amount == 100 * full // 1000 == 2400
    assert (pb.usage, pb.capacity) == (full // 4, full)
    assert pb.amount == 100 * (full // 4) // 1000 == 600


def test_validators_share_the_mint_rate() -> None:
    a, client = ident("a"), ident("client")
    one = plans([receipt(a, client, tokens=1000)], [cap(a, 0, 4)])
    three = plans([receipt(a, client, tokens=1000)], [cap(a, 0, 4)], validators=3)
    assert one[hexkey(a)].amount == 400
    assert three[hexkey(a)].amount == 400 // 3
    with pytest.raises(ValueError, match="at least one validator"):
        plans([], [cap(a, 0, 4)], validators=0)


def test_a_block_only_one_server_covers_weighs_more() -> None:
    a, b, c = ident("a"), ident("b"), ident("c")
    client = ident("client")
    receipts = [
        receipt(a, client, tokens=6000, start=0, end=3),
        receipt(b, client, tokens=6000, start=0, end=3),
        receipt(c, client, tokens=6000, start=3, end=4),
    ]
    made = plans(receipts, [cap(a, 0, 3), cap(b, 0, 3), cap(c, 3, 4)])
    # cover = [2, 2, 2, 1], mean 7/4: A and B weigh 7/8, C weighs 7/4
    assert made[hexkey(a)].weight_milli == made[hexkey(b)].weight_milli == 875
    assert made[hexkey(c)].weight_milli == 1750
    assert made[hexkey(a)].amount == 100 * 6000 * 3 * 875 // 10**6 == 1575
    assert made[hexkey(c)].amount == 100 * 6000 * 1 * 1750 // 10**6 == 1050
    # per token x block served, the scarce block earns twice as much
    assert made[hexkey(c)].amount / 6000 == 2 * made[hexkey(a)].amount / (6000 * 3)


def test_the_weight_is_capped_at_scarcity_weight_max() -> None:
    servers = [ident(f"s{i}") for i in range(4)]
    spans = {hexkey(s): (0, 3) for s in servers[:3]} | {hexkey(servers[3]): (3, 4)}
    weights = scarcity_weights(spans, 4, 2.0)  # cover [3, 3, 3, 1], mean 5/2
    assert weights[hexkey(servers[3])] == 2  # 5/2 capped
    assert weights[hexkey(servers[0])] == Fraction(5, 6)
    assert scarcity_weights(spans, 4, 3.0)[hexkey(servers[3])] == 2.5
    assert scarcity_weights({"x": (5, 9)}, 4, 2.0) == {"x": 0}  # no block of the model
    assert scarcity_weights({}, 4, 2.0) == {}


def test_excluded_servers_get_nothing_and_cover_nothing() -> None:
    a, b, c = ident("a"), ident("b"), ident("c")
    client = ident("client")
    receipts = [
        receipt(a, client, tokens=6000, start=0, end=3),
        receipt(b, client, tokens=6000, start=0, end=3),
        receipt(c, client, tokens=6000, start=3, end=4),
    ]
    made = plans(receipts, [cap(a, 0, 3), cap(b, 0, 3), cap(c, 3, 4)], excluded=[hexkey(c)])
    assert hexkey(c) not in made
    # with C out, cover = [2, 2, 2, 0]: the blocks left are equally scarce
    assert made[hexkey(a)].weight_milli == 1000


def test_a_server_without_a_capacity_gets_nothing() -> None:
    a, b, client = ident("a"), ident("b"), ident("client")
    made = plans(
        [receipt(a, client, tokens=6000), receipt(b, client, tokens=6000)],
        [cap(a, 0, 4), cap(b, 0, 4, uptime=0.0)],
    )
    assert set(made) == {hexkey(a)}
    assert made[hexkey(a)].weight_milli == 1000  # B, measured at 0, covers nothing


def test_each_client_session_counts_once_at_its_largest() -> None:
    a, client, other = ident("a"), ident("client"), ident("other")
    made = plans(
        [
            receipt(a, client, tokens=10, session="one"),
            receipt(a, client, tokens=30, session="one"),
            receipt(a, client, tokens=20, session="one"),
            receipt(a, client, tokens=5, session="two"),
            receipt(a, other, tokens=7, session="one"),
        ],
        [cap(a, 0, 4)],
    )
    assert made[hexkey(a)].usage == (30 + 5 + 7) * 4


def test_only_verified_receipts_of_the_epoch_count() -> None:
    a, client = ident("a"), ident("client")
    epoch_ms = ECONOMY.epoch_seconds * 1000
    made = plans(
        [
            receipt(a, client, tokens=10, session="in"),
            receipt(a, client, tokens=1000, session="before", time=T0 - 1),
            receipt(a, client, tokens=1000, session="after", time=T0 + epoch_ms),
            receipt(a, client, tokens=1000, session="forged", signed_tokens=1),
            receipt(a, a, tokens=1000, session="self"),
            receipt(a, client, tokens=1000, session="swarm", signed_swarm=OTHER_SWARM),
        ],
        [cap(a, 0, 4)],
    )
    assert made[hexkey(a)].usage == 40


def test_nothing_served_mints_nothing() -> None:
    a, b, client = ident("a"), ident("b"), ident("client")
    made = plans([receipt(b, client, tokens=1)], [cap(a, 0, 4), cap(b, 0, 4)])
    assert hexkey(a) not in made  # no receipts: 0 points, no plan
    assert hexkey(b) not in made  # 100 x 4 x 1000 // 10**6 == 0
    assert plans([], []) == {}


def test_a_mint_body_says_how_it_was_computed() -> None:
    plan = MintPlan("44" * 32, amount=77, usage=2 * MAX_AMOUNT, capacity=900, weight_milli=1250)
    body = mint_body(plan, 12)
    assert body == {
        "to": "44" * 32,
        "amount": 77,
        "epoch": 12,
        "details": {"usage": MAX_AMOUNT, "capacity": 900, "weight_milli": 1250},
    }
    check_body("mint", body)


# ---- fake clients earn nothing beyond verified capacity -----------------------------


def honest_bound(plan_capacity: int, weight_milli: int, validators: int) -> int:
    return ECONOMY.mint_rate * plan_capacity * weight_milli // (10**6 * validators)


def test_a_server_feeding_itself_fake_clients_earns_no_more_than_honest_full_use() -> None:
    cheat, honest, client = ident("cheat"), ident("honest"), ident("client")
    capacities = [cap(cheat, 0, 4), cap(honest, 0, 4)]
    fakes = [
        receipt(cheat, Identity.generate(), tokens=10**12, session=f"fake-{i}", end=10**6)
        for i in range(20)
    ]
    for fake in fakes:
        verify_receipt(fake, SWARM)  # every fake receipt is genuinely signed
    full = [receipt(honest, client, tokens=6000), receipt(cheat, client, tokens=6000)]
    cheating = plans([*fakes, full[0]], capacities)
    honest_use = plans(full, capacities)
    assert cheating[hexkey(cheat)].usage > 10**17
    assert cheating[hexkey(cheat)].amount == honest_use[hexkey(cheat)].amount == 2400
    assert cheating[hexkey(cheat)].amount <= honest_bound(6000 * 4, 1000, 1)
    assert cheating[hexkey(honest)] == honest_use[hexkey(honest)]  # others lose nothing
    # with no measured capacity, the fakes earn nothing at all
    assert hexkey(cheat) not in plans(fakes, [cap(honest, 0, 4)])


@dataclass(frozen=True)
class Server:
    start: int
    end: int
    milli_tps: int
    probes: int
    answered: int


@st.composite
def servers(draw: st.DrawFn, num_blocks: int) -> Server:
    """A server with some measured capacity (zero capacity is a table test above)."""
    start = draw(st.integers(0, num_blocks - 1))
    end = draw(st.integers(start + 1, num_blocks))
    probes = draw(st.integers(1, 20))
    return Server(start, end, draw(st.integers(1, 200_000)), probes, draw(st.integers(1, probes)))


fake_receipts = st.lists(
    st.tuples(
        st.integers(0, 2**40),  # fresh key seed
        st.integers(0, MAX_AMOUNT),  # tokens
        st.integers(0, 64),  # start
        st.integers(0, 64),  # blocks
        st.integers(0, 3),  # session
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 8), st.integers(1, 3), fake_receipts)
def test_fake_clients_never_beat_honest_full_use(
    data: st.DataObject, num_blocks: int, validators: int, fakes: list[tuple[int, ...]]
) -> None:
    specs = data.draw(st.lists(servers(num_blocks), min_size=1, max_size=4), label="servers")
    ids = [ident(f"server-{i}") for i in range(len(specs))]
    capacities = [
        Capacity(
            hexkey(s), spec.start, spec.end, spec.milli_tps / 1000, spec.answered / spec.probes
        )
        for s, spec in zip(ids, specs, strict=True)
    ]
    cheat = data.draw(st.integers(0, len(ids) - 1), label="cheater")
    others_keys = [hexkey(s) for i, s in enumerate(ids) if i != cheat]
    excluded = (
        data.draw(st.sets(st.sampled_from(others_keys)), label="excluded") if others_keys else set()
    )
    client = ident("client")
    honest = []
    for i, (server, capacity) in enumerate(zip(ids, capacities, strict=True)):
        tokens = math.floor(capacity.tokens_per_s * capacity.uptime * ECONOMY.epoch_seconds)
        if i != cheat:
            tokens = data.draw(st.integers(0, tokens), label=f"tokens-{i}")
        honest.append(
            receipt(server, client, tokens=tokens, start=capacity.start, end=capacity.end)
        )
    fake = [
        receipt(
            ids[cheat],
            seeded_identity("fake", str(seed)),
            tokens=tokens,
            start=start,
            end=start + blocks,
            session=f"fake-{session}",
        )
        for seed, tokens, start, blocks, session in fakes
    ]
    others = [r for i, r in enumerate(honest) if i != cheat]

    def run(receipts: list[Entry]) -> dict[str, MintPlan]:
        return plans(
            receipts,
            capacities,
            excluded=sorted(excluded),
            num_blocks=num_blocks,
            validators=validators,
        )

    cheating = run([*others, *fake])
    full = run(honest)
    name = hexkey(ids[cheat])
    got = cheating[name].amount if name in cheating else 0
    honest_amount = full[name].amount if name in full else 0
    event("the cheater is minted points", str(got > 0))
    event(
        "fake usage beyond capacity",
        str(name in cheating and cheating[name].usage > cheating[name].capacity),
    )
    assert got <= honest_amount
    if name in cheating:
        plan = cheating[name]
        assert plan.amount <= honest_bound(plan.capacity, plan.weight_milli, validators)
        assert plan.capacity == capacities[cheat].token_blocks(ECONOMY.epoch_seconds)
    # what the cheater's receipts say never changes what anyone else earns
    assert {k: v for k, v in cheating.items() if k != name} == {
        k: v for k, v in full.items() if k != name
    }
