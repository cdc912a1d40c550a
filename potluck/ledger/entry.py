"""Ledger entries: canonical bytes, hash, signature, and the body of each kind.

An entry is canonical JSON (sorted keys, no whitespace, ASCII only, integers
only: no floats anywhere)::

    {"author": "<hex key>", "balance": 990, "body": {"amount": 10, "to": "<hex key>"},
     "kind": "send", "prev": "<hex hash>", "seq": 2, "swarm": "<swarm_id>",
     "time": 1795830000000}

- `author` is the author's raw Ed25519 public key in hex: the account.
- `seq` starts at 1 and goes up by one; `prev` is the hash of the author's
  entry at `seq - 1` (64 zeros for seq 1).
- `balance` is the author's balance after this entry.
- `hash` is the SHA-256 of the canonical bytes; the author signs
  ``DOMAIN + bytes.fromhex(hash)`` with Ed25519 (detached, 64 bytes).

Decoding refuses anything that is not exactly the canonical encoding of a
valid entry (`MalformedEntry`), so every entry has one byte form and one hash.
The body of each kind is checked here too (`BODY_SCHEMAS`); the rules that
need other entries (balances, predecessors, sources) live in
`potluck.ledger.rules`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from potluck.errors import ForgedEntry, InvalidFraudProof, MalformedEntry
from potluck.p2p.identity import Identity

DOMAIN = b"potluck/ledger/entry/v1\x00"
ZERO_HASH = "0" * 64
MAX_AMOUNT = 2**53 - 1
MAX_TEXT = 256
DEFAULT_MAX_ENTRY_BYTES = 256 * 1024
SIGNATURE_BYTES = 64

KINDS = (
    "grant",
    "mint",
    "send",
    "receive",
    "ticket",
    "receipt",
    "attest",
    "audit",
    "slash",
    "checkpoint",
)
VALIDATOR_KINDS = frozenset({"grant", "mint", "attest", "audit", "slash", "checkpoint"})
"""Kinds that only a validator listed in genesis may author."""
TRANSFER_KINDS = frozenset({"grant", "mint", "send", "ticket"})
"""Kinds that create points for `body.to`, which its owner takes with a `receive`."""
DEBIT_KINDS = frozenset({"send", "ticket"})
"""Kinds that lower the author's balance by `body.amount`."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"author", "balance", "body", "kind", "prev", "seq", "swarm", "time"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _account(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _amount(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= MAX_AMOUNT


def _natural(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= MAX_AMOUNT


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _frontier(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for account, head in value.items():
        if not _account(account) or not isinstance(head, list) or len(head) != 2:
            return False
        if not (_is_int(head[0]) and head[0] >= 1 and _account(head[1])):
            return False
    return True


_Check = Callable[[Any], bool]

BODY_SCHEMAS: dict[str, tuple[dict[str, _Check], dict[str, _Check]]] = {
    # kind: (required fields, optional fields)
    "grant": ({"to": _account, "amount": _amount}, {"memo": _text}),
    "mint": ({"to": _account, "amount": _amount, "epoch": _natural}, {"details": _object}),
    "send": ({"to": _account, "amount": _amount}, {"memo": _text}),
    "ticket": (
        {"to": _account, "amount": _amount, "session": _text, "expires": _natural},
        {"details": _object},
    ),
    "receive": ({"source": _account}, {}),
    "receipt": (
        {"client": _account, "session": _text, "tokens": _natural, "blocks": _natural},
        {"details": _object},
    ),
    "attest": ({"server": _account}, {"until": _natural, "memo": _text}),
    "audit": ({"server": _account, "result": _text}, {"details": _object}),
    "slash": ({"account": _account, "reason": _text}, {"amount": _natural, "evidence": _object}),
    "checkpoint": ({"frontier": _frontier}, {}),
}


def _check_json_values(value: Any, depth: int = 0) -> None:
    """Only objects with string keys, lists, strings, integers, booleans and null."""
    if depth > 16:
        raise MalformedEntry("entry body is nested too deeply")
    if isinstance(value, float):
        raise MalformedEntry("entries hold no floating-point numbers")
    if isinstance(value, dict):
        for item in value.values():
            _check_json_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_values(item, depth + 1)


def check_body(kind: str, body: Any) -> None:
    """Raise `MalformedEntry` unless `body` is a valid body for `kind`."""
    schema = BODY_SCHEMAS.get(kind)
    if schema is None:
        raise MalformedEntry(f"unknown entry kind {kind!r}")
    if not isinstance(body, dict):
        raise MalformedEntry(f"the body of a {kind} must be an object")
    required, optional = schema
    for name, check in required.items():
        if name not in body:
            raise MalformedEntry(f"a {kind} needs body.{name}")
        if not check(body[name]):
            raise MalformedEntry(f"{kind} body.{name} is not valid: {body[name]!r:.80}")
    for name, value in body.items():
        if name in required:
            continue
        optional_check = optional.get(name)
        if optional_check is None:
            raise MalformedEntry(f"a {kind} has no body.{name}")
        if not optional_check(value):
            raise MalformedEntry(f"{kind} body.{name} is not valid: {value!r:.80}")
    _check_json_values(body)


def canonical(content: Mapping[str, Any]) -> bytes:
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


@dataclass(frozen=True, eq=False)
class Entry:
    """One signed, well-formed entry. Build with `make_entry` or `decode_entry`."""

    swarm: str
    author: str
    seq: int
    prev: str
    time: int
    kind: str
    body: Mapping[str, Any]
    balance: int
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False)
    hash: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    @property
    def amount(self) -> int:
        """Points this entry transfers (0 for kinds that move none)."""
        return int(self.body["amount"]) if self.kind in TRANSFER_KINDS else 0

    @property
    def to(self) -> str | None:
        """The account a transfer is for, else None."""
        return str(self.body["to"]) if self.kind in TRANSFER_KINDS else None

    @property
    def source(self) -> str | None:
        """The hash of the transfer a receive takes, else None."""
        return str(self.body["source"]) if self.kind == "receive" else None

    def wire(self) -> list[str]:
        """`[canonical JSON, signature hex]`, the form entries travel in."""
        return [self.raw.decode("ascii"), self.signature.hex()]


def decode_entry(
    raw: bytes, signature: bytes, *, max_bytes: int = DEFAULT_MAX_ENTRY_BYTES
) -> Entry:
    """Parse untrusted bytes into an `Entry`, or raise `MalformedEntry`.

    The signature is only checked for length here; `verify_entry` checks it.
    """
    if len(raw) > max_bytes:
        raise MalformedEntry(f"entry of {len(raw)} bytes is over the {max_bytes}-byte limit")
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedEntry(f"a signature has {SIGNATURE_BYTES} bytes, not {len(signature)}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting deeper than Python's stack
        raise MalformedEntry("entry is not JSON") from None
    if not isinstance(data, dict) or data.keys() != _ENTRY_KEYS:
        raise MalformedEntry(f"an entry has exactly the fields {sorted(_ENTRY_KEYS)}")
    if not (_account(data["swarm"]) and _account(data["author"]) and _account(data["prev"])):
        raise MalformedEntry("swarm, author and prev must be 64 lowercase hex digits")
    seq, when, balance = data["seq"], data["time"], data["balance"]
    if not (_is_int(seq) and 1 <= seq <= MAX_AMOUNT):
        raise MalformedEntry(f"seq must be a whole number >= 1, not {seq!r:.40}")
    if not _natural(when):
        raise MalformedEntry("time must be milliseconds since the epoch")
    if not _natural(balance):
        raise MalformedEntry("balance must be a whole number of points >= 0")
    if not isinstance(data["kind"], str):
        raise MalformedEntry("kind must be a string")
    check_body(data["kind"], data["body"])
    if seq == 1 and data["prev"] != ZERO_HASH:
        raise MalformedEntry("the first entry of an account has prev = 64 zeros")
    if canonical(data) != raw:
        raise MalformedEntry("entry bytes are not in canonical form")
    return Entry(
        swarm=data["swarm"],
        author=data["author"],
        seq=seq,
        prev=data["prev"],
        time=when,
        kind=data["kind"],
        body=data["body"],
        balance=balance,
        signature=signature,
        raw=raw,
        hash=hashlib.sha256(raw).hexdigest(),
    )


def decode_wire(item: Any, *, max_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> Entry:
    """An entry from its `Entry.wire()` form, or `MalformedEntry`."""
    if not (isinstance(item, (list, tuple)) and len(item) == 2):
        raise MalformedEntry("an entry travels as [json, signature hex]")
    raw, sig = item
    if not isinstance(raw, str) or not isinstance(sig, str):
        raise MalformedEntry("an entry travels as [json, signature hex]")
    try:
        signature = bytes.fromhex(sig)
        data = raw.encode("ascii")
    except (ValueError, UnicodeEncodeError):
        raise MalformedEntry("entry is not ASCII JSON with a hex signature") from None
    return decode_entry(data, signature, max_bytes=max_bytes)


def make_entry(
    identity: Identity,
    *,
    swarm: str,
    seq: int,
    prev: str,
    time: int,
    kind: str,
    body: Mapping[str, Any],
    balance: int,
    max_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> Entry:
    """Build and sign an entry by `identity` (validated exactly as a received one,
    so an entry other replicas would refuse, e.g. over `max_bytes`, is never made)."""
    content = {
        "author": identity.public_bytes.hex(),
        "balance": balance,
        "body": dict(body),
        "kind": kind,
        "prev": prev,
        "seq": seq,
        "swarm": swarm,
        "time": time,
    }
    try:
        raw = canonical(content)
    except (TypeError, ValueError) as exc:
        raise MalformedEntry(f"entry content is not canonical JSON: {exc}") from None
    digest = hashlib.sha256(raw).digest()
    signature = identity.sign(DOMAIN + digest)
    return decode_entry(raw, signature, max_bytes=max_bytes)


@lru_cache(maxsize=4096)
def _public_key(author: str) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(author))


def signature_ok(entry: Entry) -> bool:
    """Whether the entry's signature is its author's, over DOMAIN + hash."""
    try:
        key = _public_key(entry.author)
        key.verify(entry.signature, DOMAIN + bytes.fromhex(entry.hash))
    except (_BadSignature, ValueError):
        return False
    return True


def verify_entry(entry: Entry) -> None:
    """Raise `ForgedEntry` unless the entry is signed by its author."""
    if not signature_ok(entry):
        raise ForgedEntry(f"entry {entry.hash[:12]} is not signed by {entry.author[:12]}")


def verify_batch(entries: Sequence[Entry], executor: Executor | None = None) -> list[bool]:
    """`signature_ok` for each entry, split over `executor`'s threads when given.

    OpenSSL releases the GIL while it verifies, so two threads verify about
    1.75 times as many signatures per second as one on a 2-core machine.
    """
    if executor is None or len(entries) < 64:
        return [signature_ok(e) for e in entries]
    chunks = 4
    size = -(-len(entries) // chunks)
    parts = [entries[i : i + size] for i in range(0, len(entries), size)]
    results: list[bool] = []
    for part in executor.map(lambda p: [signature_ok(e) for e in p], parts):
        results.extend(part)
    return results


def verify_fraud_proof(first: Entry, second: Entry, swarm: str | None = None) -> str:
    """Check that two entries prove their author equivocated; return the author.

    Needs nothing but the two entries: both signed by the same author, for
    the same swarm (and `swarm`, when given), at the same seq, and different.
    """
    for entry in (first, second):
        if not signature_ok(entry):
            raise InvalidFraudProof(f"entry {entry.hash[:12]} is not signed by its author")
    if first.author != second.author:
        raise InvalidFraudProof("the entries have different authors")
    if first.swarm != second.swarm or (swarm is not None and first.swarm != swarm):
        raise InvalidFraudProof("the entries are not of the same swarm")
    if first.seq != second.seq:
        raise InvalidFraudProof("the entries have different seq numbers")
    if first.hash == second.hash:
        raise InvalidFraudProof("the two entries are one and the same")
    return first.author
