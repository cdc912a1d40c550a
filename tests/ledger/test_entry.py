"""Entries: one canonical byte form, signatures over DOMAIN + hash, fraud proofs."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potluck.errors import (
    ForgedEntry,
    InvalidFraudProof,
    InvalidSignature,
    LedgerError,
    MalformedEntry,
)
from potluck.ledger.entry import (
    BODY_SCHEMAS,
    DEFAULT_MAX_ENTRY_BYTES,
    DOMAIN,
    KINDS,
    MAX_AMOUNT,
    MAX_TEXT,
    ZERO_HASH,
    Entry,
    canonical,
    decode_entry,
    decode_wire,
    make_entry,
    signature_ok,
    verify_batch,
    verify_entry,
    verify_fraud_proof,
)
from potluck.testing.ledger import LedgerWorkload, seeded_identity

ALICE = seeded_identity("entry", "alice")
BOB = seeded_identity("entry", "bob")
A = ALICE.account
B = BOB.account
SWARM = hashlib.sha256(b"swarm").hexdigest()
OTHER_SWARM = hashlib.sha256(b"other swarm").hexdigest()
PREV = hashlib.sha256(b"prev").hexdigest()
T = 1_795_830_000_000
SIG = bytes(64)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_BODIES: dict[str, dict[str, Any]] = {
    "grant": {"to": B, "amount": 10, "memo": "welcome"},
    "mint": {"to": B, "amount": 10, "epoch": 3, "details": {"blocks": [0, 1], "ok": True}},
    "send": {"to": B, "amount": 10},
    "ticket": {"to": B, "amount": 10, "session": "s1", "expires": T, "details": {}},
    "receive": {"source": PREV},
    "receipt": {"client": B, "session": "s1", "tokens": 12, "blocks": 4},
    "attest": {"server": B, "until": T, "memo": "trusted"},
    "audit": {"server": B, "result": "ok", "details": {"n": None}},
    "slash": {"account": B, "reason": "lied", "amount": 0, "evidence": {"step": 3}},
    "checkpoint": {"frontier": {A: [2, PREV], B: [1, PREV]}},
}


def content(**changes: Any) -> dict[str, Any]:
    """A valid send's fields, with `changes` applied."""
    base: dict[str, Any] = {
        "author": A,
        "balance": 990,
        "body": {"amount": 10, "to": B},
        "kind": "send",
        "prev": PREV,
        "seq": 2,
        "swarm": SWARM,
        "time": T,
    }
    base.update(changes)
    return base


def sign(fields: dict[str, Any]) -> Entry:
    return make_entry(
        ALICE,
        swarm=fields["swarm"],
        seq=fields["seq"],
        prev=fields["prev"],
        time=fields["time"],
        kind=fields["kind"],
        body=fields["body"],
        balance=fields["balance"],
    )


def assert_same(a: Entry, b: Entry) -> None:
    assert a == b
    for name in ("swarm", "author", "seq", "prev", "time", "kind", "body", "balance"):
        assert getattr(a, name) == getattr(b, name), name
    assert (a.raw, a.signature, a.hash) == (b.raw, b.signature, b.hash)


# ---- canonical encoding ----------------------------------------------------

hex_keys = st.binary(min_size=32, max_size=32).map(bytes.hex)
amounts = st.integers(1, MAX_AMOUNT)
naturals = st.integers(0, MAX_AMOUNT)
texts = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
objects = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
frontiers = st.dictionaries(
    hex_keys, st.tuples(st.integers(1, MAX_AMOUNT), hex_keys).map(list), max_size=3
)


def body_for(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(required, optional=optional)


BODIES: dict[str, st.SearchStrategy[Any]] = {
    "grant": body_for({"to": hex_keys, "amount": amounts}, {"memo": texts}),
    "mint": body_for({"to": hex_keys, "amount": amounts, "epoch": naturals}, {"details": objects}),
    "send": body_for({"to": hex_keys, "amount": amounts}, {"memo": texts}),
    "ticket": body_for(
        {"to": hex_keys, "amount": amounts, "session": texts, "expires": naturals},
        {"details": objects},
    ),
    "receive": body_for({"source": hex_keys}, {}),
    "receipt": body_for(
        {"client": hex_keys, "session": texts, "tokens": naturals, "blocks": naturals},
        {"details": objects},
    ),
    "attest": body_for({"server": hex_keys}, {"until": naturals, "memo": texts}),
    "audit": body_for({"server": hex_keys, "result": texts}, {"details": objects}),
    "slash": body_for(
        {"account": hex_keys, "reason": texts}, {"amount": naturals, "evidence": objects}
    ),
    "checkpoint": body_for({"frontier": frontiers}, {}),
}


def test_every_kind_has_a_body_strategy() -> None:
    assert set(BODIES) == set(KINDS) == set(BODY_SCHEMAS) == set(VALID_BODIES)


@st.composite
def valid_fields(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(KINDS))
    seq = draw(st.integers(1, MAX_AMOUNT))
    return content(
        kind=kind,
        body=draw(BODIES[kind]),
        seq=seq,
        prev=ZERO_HASH if seq == 1 else draw(hex_keys),
        swarm=draw(hex_keys),
        time=draw(naturals),
        balance=draw(naturals),
    )


@settings(max_examples=100, deadline=None)
@given(valid_fields())
def test_round_trip_through_bytes_and_wire(fields: dict[str, Any]) -> None:
    entry = sign(fields)
    assert entry.raw == canonical(fields)
    assert entry.hash == hashlib.sha256(entry.raw).hexdigest()
    assert_same(decode_entry(entry.raw, entry.signature), entry)
    wire = json.loads(json.dumps(entry.wire()))
    assert wire == [entry.raw.decode("ascii"), entry.signature.hex()]
    assert_same(decode_wire(wire), entry)
    assert signature_ok(entry)


def test_example_layout_from_the_docstring() -> None:
    entry = sign(content())
    assert entry.raw == (
        b'{"author":"' + A.encode() + b'","balance":990,"body":{"amount":10,"to":"'
        b"" + B.encode() + b'"},"kind":"send","prev":"' + PREV.encode() + b'","seq":2,'
        b'"swarm":"' + SWARM.encode() + b'","time":1795830000000}'
    )
    assert (entry.amount, entry.to, entry.source) == (10, B, None)
    receive = sign(content(kind="receive", body={"source": PREV}, balance=1000))
    assert (receive.amount, receive.to, receive.source) == (0, None, PREV)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_with_a_valid_body_decodes(kind: str) -> None:
    entry = sign(content(kind=kind, body=VALID_BODIES[kind]))
    assert_same(decode_entry(entry.raw, entry.signature), entry)


def raw_of(fields: dict[str, Any]) -> bytes:
    return canonical(fields)


def replace(old: bytes, new: bytes) -> Callable[[], bytes]:
    def build() -> bytes:
        raw = raw_of(content())
        assert old in raw
        return raw.replace(old, new, 1)

    return build


NON_CANONICAL: dict[str, Callable[[], bytes]] = {
    "whitespace": lambda: json.dumps(content(), sort_keys=True).encode(),
    "indent": lambda: json.dumps(content(), sort_keys=True, indent=1).encode(),
    "leading space": lambda: b" " + raw_of(content()),
    "trailing newline": lambda: raw_of(content()) + b"\n",
    "key order": lambda: json.dumps(
        dict(reversed(sorted(content().items()))), separators=(",", ":")
    ).encode(),
    "body key order": replace(
        b'{"amount":10,"to":"' + B.encode() + b'"}', b'{"to":"' + B.encode() + b'","amount":10}'
    ),
    "duplicate key": lambda: raw_of(content())[:-1] + b',"time":' + str(T).encode() + b"}",
    "float balance": replace(b'"balance":990', b'"balance":990.0'),
    "exponent balance": replace(b'"balance":990', b'"balance":9.9e2'),
    "float amount": replace(b'"amount":10', b'"amount":10.0'),
    "float seq": replace(b'"seq":2', b'"seq":2.0'),
    "NaN balance": replace(b'"balance":990', b'"balance":NaN'),
    "float in details": lambda: raw_of(
        content(kind="mint", body={"amount": 1, "details": {"x": 0.5}, "epoch": 0, "to": B})
    ),
    "escaped ascii": replace(b'"kind":"send"', b'"kind":"\\u0073end"'),
    "raw non-ascii": lambda: json.dumps(
        content(body={"amount": 10, "memo": "caf\u00e9", "to": B}),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode(),
    "extra field": lambda: raw_of(content(extra=1)),
    "extra body field": lambda: raw_of(content(body={"amount": 10, "to": B, "x": 1})),
    "uppercase author": lambda: raw_of(content(author=A.upper())),
    "uppercase prev": lambda: raw_of(content(prev=PREV.upper())),
    "uppercase swarm": lambda: raw_of(content(swarm=SWARM.upper())),
    "uppercase body.to": lambda: raw_of(content(body={"amount": 10, "to": B.upper()})),
    "short author": lambda: raw_of(content(author=A[:-2])),
    "prefixed hex": lambda: raw_of(content(prev="0x" + PREV[2:])),
    "seq 0": lambda: raw_of(content(seq=0)),
    "seq -1": lambda: raw_of(content(seq=-1)),
    "seq true": lambda: raw_of(content(seq=True)),
    "seq string": lambda: raw_of(content(seq="2")),
    "seq too big": lambda: raw_of(content(seq=MAX_AMOUNT + 1)),
    "seq 1 with nonzero prev": lambda: raw_of(content(seq=1)),
    "negative balance": lambda: raw_of(content(balance=-1)),
    "balance true": lambda: raw_of(content(balance=True)),
    "balance too big": lambda: raw_of(content(balance=MAX_AMOUNT + 1)),
    "negative time": lambda: raw_of(content(time=-1)),
    "time null": lambda: raw_of(content(time=None)),
    "unknown kind": lambda: raw_of(content(kind="steal")),
    "kind not a string": lambda: raw_of(content(kind=["send"])),
    "body not an object": lambda: raw_of(content(body=[10, B])),
    "nested too deep": lambda: raw_of(
        content(kind="audit", body={"server": B, "result": "x", "details": _nested(20)})
    ),
    "array": lambda: b"[]",
    "null": lambda: b"null",
    "string": lambda: b'"entry"',
    "empty": lambda: b"",
    "truncated": lambda: raw_of(content())[:-1],
    "not utf-8": lambda: b"\xff\xfe{}",
    "deeply nested arrays": lambda: b"[" * 100_000 + b"]" * 100_000,
    "deeply nested objects": lambda: b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
}


def _missing(name: str) -> Callable[[], bytes]:
    return lambda: raw_of(_without(name))


NON_CANONICAL.update({f"missing {name}": _missing(name) for name in content()})


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _without(name: str) -> dict[str, Any]:
    fields = content()
    del fields[name]
    return fields


def test_the_base_of_the_non_canonical_cases_is_canonical() -> None:
    entry = decode_entry(raw_of(content()), SIG)
    assert entry.raw == raw_of(content())


@pytest.mark.parametrize("case", sorted(NON_CANONICAL))
def test_non_canonical_or_invalid_bytes_are_malformed(case: str) -> None:
    raw = NON_CANONICAL[case]()
    with pytest.raises(MalformedEntry):
        decode_entry(raw, SIG)
    with pytest.raises(MalformedEntry):
        decode_wire([raw.decode("latin-1"), SIG.hex()])


BAD_FIELD_VALUES: dict[str, list[Any]] = {
    "account": ["AB" * 32, "ab" * 31, "zz" * 32, 5, None],
    "amount": [0, -1, 1.5, True, "10", MAX_AMOUNT + 1, None],
    "natural": [-1, 1.5, True, "1", MAX_AMOUNT + 1, None],
    "text": [5, "x" * (MAX_TEXT + 1), None, ["x"]],
    "object": [[], "x", 5, None],
    "frontier": [
        [],
        {A: [0, PREV]},
        {A: [1]},
        {A: [1, PREV, 3]},
        {A: [1, "x"]},
        {A: [True, PREV]},
        {"x": [1, PREV]},
        {A: "1"},
    ],
}
FIELD_TYPES = {
    "to": "account",
    "source": "account",
    "client": "account",
    "server": "account",
    "account": "account",
    "amount": "amount",
    "epoch": "natural",
    "expires": "natural",
    "tokens": "natural",
    "blocks": "natural",
    "until": "natural",
    "memo": "text",
    "session": "text",
    "result": "text",
    "reason": "text",
    "details": "object",
    "evidence": "object",
    "frontier": "frontier",
}


def bad_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for kind, (required, optional) in BODY_SCHEMAS.items():
        valid = VALID_BODIES[kind]
        for name in required:
            body = dict(valid)
            del body[name]
            cases.append((kind, f"missing {name}", body))
        for name in (*required, *optional):
            bad = BAD_FIELD_VALUES[FIELD_TYPES[name]]
            if kind == "slash" and name == "amount":
                bad = BAD_FIELD_VALUES["natural"]  # a slash may take 0 points
            for value in bad:
                cases.append((kind, f"{name}={value!r:.20}", {**valid, name: value}))
        cases.append((kind, "unknown field", {**valid, "surprise": 1}))
    return cases


@pytest.mark.parametrize(
    ("kind", "body"),
    [pytest.param(k, b, id=f"{k}-{why}") for k, why, b in bad_bodies()],
)
def test_bad_body_per_kind_is_malformed(kind: str, body: dict[str, Any]) -> None:
    with pytest.raises(MalformedEntry):
        decode_entry(raw_of(content(kind=kind, body=body)), SIG)
    with pytest.raises(MalformedEntry):
        sign(content(kind=kind, body=body))


def test_oversized_entries_are_malformed() -> None:
    raw = raw_of(content())
    assert decode_entry(raw, SIG, max_bytes=len(raw)).raw == raw
    with pytest.raises(MalformedEntry, match="limit"):
        decode_entry(raw, SIG, max_bytes=len(raw) - 1)
    with pytest.raises(MalformedEntry, match="limit"):
        decode_wire([raw.decode(), SIG.hex()], max_bytes=len(raw) - 1)
    big = {"server": B, "result": "x", "details": {"blob": "x" * DEFAULT_MAX_ENTRY_BYTES}}
    huge = raw_of(content(kind="audit", body=big))
    with pytest.raises(MalformedEntry, match="limit"):
        decode_entry(huge, SIG)


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_signature_of_the_wrong_length_is_malformed(length: int) -> None:
    with pytest.raises(MalformedEntry):
        decode_entry(raw_of(content()), bytes(length))


@pytest.mark.parametrize(
    "item",
    [
        None,
        "x",
        [],
        ["{}"],
        ["{}", "00" * 64, "x"],
        [b"{}", "00" * 64],
        ["{}", 5],
        ["{}", "zz" * 64],
        ["{}", "0" * 127],
        ["{\u00e9}", "00" * 64],
        {"raw": "{}"},
    ],
)
def test_bad_wire_forms_are_malformed(item: Any) -> None:
    with pytest.raises(MalformedEntry):
        decode_wire(item)


# ---- fuzz: untrusted bytes never raise anything but MalformedEntry -----------


def decode_or_malformed(raw: bytes, signature: bytes = SIG) -> Entry | None:
    """Decode, or None on MalformedEntry; any other exception fails the test."""
    try:
        entry = decode_entry(raw, signature)
    except MalformedEntry:
        return None
    assert entry.raw == raw == canonical(json.loads(raw))
    return entry


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_only_ever_malformed(raw: bytes) -> None:
    decode_or_malformed(raw)


MUTATION_BYTES = b'{}[]",:0123456789abcdefABCDEF-.eE \\nultrsfa\x00\xff'


@FUZZ
@given(
    st.sampled_from(KINDS),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "replace"]),
            st.integers(0, 10_000),
            st.sampled_from(list(MUTATION_BYTES)),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_entries_are_only_ever_malformed(
    kind: str, mutations: list[tuple[str, int, int]]
) -> None:
    raw = bytearray(raw_of(content(kind=kind, body=VALID_BODIES[kind])))
    for op, position, byte in mutations:
        at = position % (len(raw) + 1)
        if op == "insert":
            raw.insert(at, byte)
        elif at == len(raw):
            continue
        elif op == "flip":
            raw[at] ^= 1 << (byte % 8)
        elif op == "delete":
            del raw[at]
        else:
            raw[at] = byte
    decode_or_malformed(bytes(raw))


any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | hex_keys
    | st.sampled_from(KINDS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@FUZZ
@given(st.sampled_from(sorted(content())), any_json, st.booleans())
def test_any_value_in_any_field_is_valid_or_malformed(name: str, value: Any, pretty: bool) -> None:
    fields = content(**{name: value})
    raw = json.dumps(fields, sort_keys=True, separators=None if pretty else (",", ":"))
    decode_or_malformed(raw.encode())


@FUZZ
@given(any_json)
def test_any_json_document_is_valid_or_malformed(value: Any) -> None:
    decode_or_malformed(json.dumps(value, separators=(",", ":")).encode())


@FUZZ
@given(any_json | st.tuples(any_json, any_json) | st.binary())
def test_any_wire_item_is_valid_or_malformed(item: Any) -> None:
    with contextlib.suppress(MalformedEntry):
        decode_wire(item)


# ---- signatures --------------------------------------------------------------


def test_signature_is_the_authors_over_domain_and_hash() -> None:
    entry = sign(content())
    key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry.author))
    key.verify(entry.signature, DOMAIN + bytes.fromhex(entry.hash))
    assert entry.hash == hashlib.sha256(entry.raw).hexdigest()
    assert DOMAIN.endswith(b"\x00")
    verify_entry(entry)


def forged(entry: Entry, signature: bytes) -> Entry:
    return decode_entry(entry.raw, signature)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def forgeries() -> dict[str, Entry]:
    entry = sign(content())
    digest = bytes.fromhex(entry.hash)
    twin = sign(content(balance=980, body={"amount": 20, "to": B}))
    return {
        "flipped first byte": forged(entry, flip(entry.signature, 0)),
        "flipped middle byte": forged(entry, flip(entry.signature, 31)),
        "flipped last byte": forged(entry, flip(entry.signature, 63)),
        "zeros": forged(entry, SIG),
        "other key": forged(entry, BOB.sign(DOMAIN + digest)),
        "no domain": forged(entry, ALICE.sign(digest)),
        "over the raw bytes": forged(entry, ALICE.sign(DOMAIN + entry.raw)),
        "another entry's": forged(entry, twin.signature),
        "other domain": forged(entry, ALICE.sign(b"potluck/other/v1\x00" + digest)),
    }


@pytest.mark.parametrize("case", sorted(forgeries()))
def test_forged_signatures_raise_forged_entry(case: str) -> None:
    entry = forgeries()[case]
    assert not signature_ok(entry)
    with pytest.raises(ForgedEntry) as info:
        verify_entry(entry)
    assert isinstance(info.value, InvalidSignature)
    assert isinstance(info.value, LedgerError)
    assert info.value.code == "bad_signature"


def test_an_author_that_is_no_key_fails_verification() -> None:
    entry = sign(content())
    for author in ("00" * 32, "ff" * 32):
        fake = decode_entry(raw_of(content(author=author)), entry.signature)
        assert not signature_ok(fake)
        with pytest.raises(ForgedEntry):
            verify_entry(fake)


@pytest.mark.parametrize("count", [0, 5, 63, 64, 200])
def test_verify_batch_agrees_with_signature_ok(count: int) -> None:
    entries = []
    for i in range(count):
        entry = sign(content(time=T + i))
        if i % 3 == 1:
            entry = forged(entry, flip(entry.signature, i % 64))
        elif i % 7 == 2:
            entry = forged(entry, BOB.sign(DOMAIN + bytes.fromhex(entry.hash)))
        entries.append(entry)
    expected = [signature_ok(e) for e in entries]
    assert expected == [not (i % 3 == 1 or i % 7 == 2) for i in range(count)]
    assert verify_batch(entries) == expected
    with ThreadPoolExecutor(max_workers=2) as executor:
        assert verify_batch(entries, executor) == expected
        assert verify_batch(tuple(entries), executor) == expected


# ---- fraud proofs --------------------------------------------------------------


@pytest.fixture(scope="module")
def forked() -> LedgerWorkload:
    work = LedgerWorkload(validators=1, accounts=3, seed="fraud")
    work.grant_all(100)
    work.send(work.accounts[0], work.accounts[1], 100)
    work.fork(work.accounts[0])
    return work


def test_fraud_proof_from_the_two_entries_alone(forked: LedgerWorkload) -> None:
    original, double = forked.forks[0]
    # what a third party holds: the two entries as they travelled
    first, second = (decode_wire(json.loads(json.dumps(e.wire()))) for e in (original, double))
    assert verify_fraud_proof(first, second) == forked.key(0)
    assert verify_fraud_proof(second, first, forked.swarm) == forked.key(0)
    assert (first.seq, first.prev) == (second.seq, second.prev)
    assert first.to != second.to


def test_fraud_proof_rejects_one_entry_twice(forked: LedgerWorkload) -> None:
    original, _ = forked.forks[0]
    copy = decode_wire(original.wire())
    for second in (original, copy):
        with pytest.raises(InvalidFraudProof, match="same"):
            verify_fraud_proof(original, second)


def test_fraud_proof_rejects_different_seqs(forked: LedgerWorkload) -> None:
    original, _ = forked.forks[0]
    earlier = forked.chains[forked.key(0)][original.seq - 2]
    with pytest.raises(InvalidFraudProof, match="seq"):
        verify_fraud_proof(earlier, original)


def test_fraud_proof_rejects_different_authors(forked: LedgerWorkload) -> None:
    a = forked.chains[forked.key(0)][0]
    b = forked.chains[forked.key(1)][0]
    assert a.seq == b.seq
    with pytest.raises(InvalidFraudProof, match="authors"):
        verify_fraud_proof(a, b)


def test_fraud_proof_rejects_different_swarms(forked: LedgerWorkload) -> None:
    here = sign(content(seq=1, prev=ZERO_HASH))
    there = sign(content(seq=1, prev=ZERO_HASH, swarm=OTHER_SWARM, balance=980))
    with pytest.raises(InvalidFraudProof, match="swarm"):
        verify_fraud_proof(here, there)
    original, double = forked.forks[0]
    with pytest.raises(InvalidFraudProof, match="swarm"):
        verify_fraud_proof(original, double, OTHER_SWARM)


@pytest.mark.parametrize("which", [0, 1])
def test_fraud_proof_rejects_a_forged_entry(forked: LedgerWorkload, which: int) -> None:
    pair = list(forked.forks[0])
    pair[which] = forged(pair[which], flip(pair[which].signature, 5))
    with pytest.raises(InvalidFraudProof, match="signed"):
        verify_fraud_proof(pair[0], pair[1])
    # a forged "double" made by someone else's key proves nothing either
    original = forked.forks[0][0]
    fake = make_entry(
        BOB,
        swarm=original.swarm,
        seq=original.seq,
        prev=original.prev,
        time=original.time + 1,
        kind="send",
        body={"to": B, "amount": 1},
        balance=0,
    )
    imposter = decode_entry(
        raw_of({**json.loads(fake.raw), "author": original.author}), fake.signature
    )
    with pytest.raises(InvalidFraudProof):
        verify_fraud_proof(original, imposter)
