"""Every rule: a bad entry is rejected with its typed error, counted, and never stored.

Each test runs over both backends (`make_backend` in conftest): the engine
must behave the same over dictionaries and over SQLite.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from potluck.errors import (
    AlreadyReceived,
    ForgedEntry,
    InsufficientBalance,
    LedgerError,
    MalformedEntry,
    MissingDependency,
    NotReceivable,
    NotValidator,
    ReplayedEntry,
    SeqGap,
    UnknownSource,
    WrongBalance,
    WrongPrevHash,
    WrongSwarm,
)
from potluck.ledger.core import Backend, IngestReport, Ledger
from potluck.ledger.entry import VALIDATOR_KINDS, Entry, decode_entry
from potluck.testing.ledger import LedgerWorkload, make_ledger

from .conftest import MakeBackend

UNKNOWN = hashlib.sha256(b"an entry nobody wrote").hexdigest()


@pytest.fixture
def ledger(workload: LedgerWorkload, backend: Backend) -> Ledger:
    """The workload's grants and receives, all accepted."""
    ledger = make_ledger(workload.genesis, backend)
    ledger.ingest(workload.entries)
    assert ledger.state().entries == {e.hash for e in workload.entries}
    assert ledger.pending == 0
    return ledger


def rejects(ledger: Ledger, entry: Entry, error: type[LedgerError]) -> LedgerError:
    """Deliver `entry`; check it is rejected with `error`, counted, and nothing changes."""
    before, counts = ledger.state(), ledger.counters()
    report = ledger.ingest([entry])
    assert report.accepted == [] and report.forks == []
    assert [(e, type(err)) for e, err in report.rejected] == [(entry, error)]
    assert report.errors_for(entry.hash) == [report.rejected[0][1]]
    assert ledger.state() == before
    assert ledger.backend.get(entry.hash) is None or entry.hash in before.entries
    key = f"rejected.{error.code}"
    after = ledger.counters()
    assert after.get(key, 0) == counts.get(key, 0) + 1
    assert {k: v for k, v in after.items() if k != key} == {
        k: v for k, v in counts.items() if k != key
    }
    return report.rejected[0][1]


def accepts(ledger: Ledger, *entries: Entry) -> IngestReport:
    """Deliver `entries` one by one (causal order); check each is accepted."""
    report = IngestReport()
    for entry in entries:
        one = ledger.ingest([entry])
        assert entry in one.accepted and not one.rejected
        report.accepted.extend(one.accepted)
    return report


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


# ---- the list from the issue ---------------------------------------------------


def test_forged_signature(ledger: Ledger, workload: LedgerWorkload) -> None:
    a, b = workload.accounts[:2]
    good = workload.sign(a, "send", {"to": b.account, "amount": 5})
    for bad_signature in (flip(good.signature, 0), b.sign(b"anything"), bytes(64)):
        error = rejects(ledger, decode_entry(good.raw, bad_signature), ForgedEntry)
        assert error.code == "bad_signature"
    accepts(ledger, good)  # the genuine entry is still welcome


def test_entry_of_another_swarm(ledger: Ledger, workload: LedgerWorkload) -> None:
    other = LedgerWorkload(validators=3, accounts=4, seed="tests", name="elsewhere")
    assert other.key(0) == workload.key(0) and other.swarm != workload.swarm
    a, b = workload.accounts[:2]
    # validly signed by a key of this swarm, but for the other genesis
    send = workload.sign(a, "send", {"to": b.account, "amount": 5}, swarm=other.swarm)
    rejects(ledger, send, WrongSwarm)
    grant = other.grant(other.validators[0], other.accounts[0], 10)
    rejects(ledger, grant, WrongSwarm)


def test_seq_gap(ledger: Ledger, workload: LedgerWorkload) -> None:
    a, b = workload.accounts[:2]
    assert workload.head(a).seq == 1
    second = workload.send(a, b, 5)
    third = workload.send(a, b, 5)
    assert third.seq == 3
    rejects(ledger, third, SeqGap)
    assert isinstance(SeqGap("x"), MissingDependency)
    gap = workload.sign(a, "send", {"to": b.account, "amount": 5}, seq=3, prev=UNKNOWN)
    rejects(ledger, gap, SeqGap)
    assert ledger.pending == 2  # parked until what they follow arrives
    assert accepts(ledger, second).accepted == [second, third]
    assert ledger.account(a.account).seq == 3
    assert ledger.pending == 1  # the one after the unknown entry still waits


def test_wrong_prev_hash(ledger: Ledger, workload: LedgerWorkload) -> None:
    a, b = workload.accounts[:2]
    others_entry = workload.chains[b.account][0]
    body = {"to": b.account, "amount": 5}
    rejects(ledger, workload.sign(a, "send", body, prev=others_entry.hash), WrongPrevHash)
    grant = workload.chains[workload.validators[0].account][0]
    rejects(ledger, workload.sign(a, "send", body, prev=grant.hash), WrongPrevHash)
    # its own entry, but at the wrong seq
    own = workload.chains[a.account][0]
    rejects(ledger, workload.sign(a, "send", body, seq=3, prev=own.hash), WrongPrevHash)


def test_overdraft(ledger: Ledger, workload: LedgerWorkload) -> None:
    a, b = workload.accounts[:2]
    assert workload.head(a).balance == 1000
    rejects(
        ledger,
        workload.sign(a, "send", {"to": b.account, "amount": 1001}, balance=0),
        InsufficientBalance,
    )
    ticket = {"to": b.account, "amount": 1001, "session": "s", "expires": 1}
    rejects(ledger, workload.sign(a, "ticket", ticket, balance=0), InsufficientBalance)
    accepts(ledger, workload.send(a, b, 1000))  # all of it is fine
    rejects(
        ledger,
        workload.sign(a, "send", {"to": b.account, "amount": 1}, balance=0),
        InsufficientBalance,
    )


def test_second_receive_of_one_send(ledger: Ledger, workload: LedgerWorkload) -> None:
    a = workload.accounts[0]
    grant = workload.chains[a.account][0].source
    assert grant is not None
    again = workload.sign(a, "receive", {"source": grant})
    assert again.balance == 2000
    rejects(ledger, again, AlreadyReceived)
    # still refused further down the same chain
    accepts(ledger, workload.send(a, workload.accounts[1], 10))
    rejects(ledger, workload.sign(a, "receive", {"source": grant}), AlreadyReceived)


VALIDATOR_BODIES: dict[str, dict[str, Any]] = {
    "grant": {"amount": 10},
    "mint": {"amount": 10, "epoch": 1},
    "attest": {},
    "audit": {"result": "ok"},
    "slash": {"reason": "lied"},
    "checkpoint": {},
}


@pytest.mark.parametrize("kind", sorted(VALIDATOR_KINDS))
def test_validator_kinds_by_a_non_validator(
    ledger: Ledger, workload: LedgerWorkload, kind: str
) -> None:
    a, b = workload.accounts[:2]
    body = dict(VALIDATOR_BODIES[kind])
    if kind in ("grant", "mint"):
        body["to"] = b.account
    elif kind in ("attest", "audit"):
        body["server"] = b.account
    elif kind == "slash":
        body["account"] = b.account
    else:
        body["frontier"] = workload.frontier()
    rejects(ledger, workload.sign(a, kind, body), NotValidator)
    accepts(ledger, workload.append(workload.validators[0], kind, body))


def test_replayed_entry(ledger: Ledger, workload: LedgerWorkload) -> None:
    for entry in (workload.entries[0], workload.entries[-1]):
        rejects(ledger, entry, ReplayedEntry)
    rejects(
        ledger, decode_entry(workload.entries[0].raw, workload.entries[0].signature), ReplayedEntry
    )


def test_replay_within_one_batch(ledger: Ledger, workload: LedgerWorkload) -> None:
    send = workload.send(workload.accounts[0], workload.accounts[1], 5)
    report = ledger.ingest([send, send, workload.entries[0]])
    assert report.accepted == [send]
    assert [type(err) for _, err in report.rejected] == [ReplayedEntry, ReplayedEntry]
    assert ledger.counters()["rejected.replayed"] == 2


# ---- the other rules -------------------------------------------------------------


def test_wrong_balance(ledger: Ledger, workload: LedgerWorkload) -> None:
    a, b = workload.accounts[:2]
    body = {"to": b.account, "amount": 5}
    for balance in (994, 996, 1000, 0):
        rejects(ledger, workload.sign(a, "send", body, balance=balance), WrongBalance)
    accepts(ledger, workload.send(a, b, 5))
    source = workload.head(a).hash
    for balance in (1000, 1010, 1004):
        wrong = workload.sign(b, "receive", {"source": source}, balance=balance)
        rejects(ledger, wrong, WrongBalance)
    validator = workload.validators[0]
    checkpoint = {"frontier": workload.frontier()}
    rejects(ledger, workload.sign(validator, "checkpoint", checkpoint, balance=5), WrongBalance)
    rejects(
        ledger,
        workload.sign(validator, "grant", {"to": a.account, "amount": 5}, balance=5),
        WrongBalance,
    )


def test_receive_of_a_send_to_someone_else(ledger: Ledger, workload: LedgerWorkload) -> None:
    a, b, c = workload.accounts[:3]
    send = workload.send(a, b, 5)
    accepts(ledger, send)
    rejects(ledger, workload.sign(c, "receive", {"source": send.hash}), NotReceivable)
    rejects(ledger, workload.sign(a, "receive", {"source": send.hash}), NotReceivable)
    # an entry that moves no points is not receivable either
    not_a_transfer = workload.chains[c.account][0]
    rejects(
        ledger,
        workload.sign(c, "receive", {"source": not_a_transfer.hash}, balance=1000),
        NotReceivable,
    )
    accepts(ledger, workload.receive(b, send))


def test_receive_of_an_unknown_source_waits(ledger: Ledger, workload: LedgerWorkload) -> None:
    a = workload.accounts[0]
    rejects(ledger, workload.sign(a, "receive", {"source": UNKNOWN}, balance=1000), UnknownSource)
    assert ledger.pending == 1


def test_transfer_to_self(ledger: Ledger, workload: LedgerWorkload) -> None:
    a = workload.accounts[0]
    rejects(ledger, workload.sign(a, "send", {"to": a.account, "amount": 5}), MalformedEntry)
    ticket = {"to": a.account, "amount": 5, "session": "s", "expires": 1}
    rejects(ledger, workload.sign(a, "ticket", ticket), MalformedEntry)
    validator = workload.validators[0]
    grant = {"to": validator.account, "amount": 5}
    rejects(ledger, workload.sign(validator, "grant", grant), MalformedEntry)


# ---- parked entries ----------------------------------------------------------------


def test_parked_entries_apply_once_the_gap_is_filled(
    ledger: Ledger, workload: LedgerWorkload
) -> None:
    a, b = workload.accounts[:2]
    sends = [workload.send(a, b, 1) for _ in range(4)]  # seq 2..5
    for entry in reversed(sends[1:]):
        report = ledger.ingest([entry])
        assert isinstance(report.rejected[0][1], SeqGap)
    assert ledger.counters()["rejected.seq_gap"] == 3
    report = ledger.ingest([sends[2]])  # a parked entry delivered again is not parked twice
    assert not report.accepted
    assert all(isinstance(err, SeqGap) for _, err in report.rejected)
    assert ledger.pending == 3
    before = ledger.state().entries
    report = ledger.ingest([sends[0]])
    assert [e.hash for e in report.accepted] == [e.hash for e in sends]
    assert ledger.pending == 0
    assert ledger.state().entries == before | {e.hash for e in sends}
    assert ledger.account(a.account).balance == 996
    assert ledger.account(a.account).seq == 5


def test_parked_receive_applies_once_its_source_arrives(
    ledger: Ledger, workload: LedgerWorkload
) -> None:
    a = workload.accounts[0]
    grant = workload.grant(workload.validators[1], a, 50)
    receive = workload.receive(a, grant)
    spend = workload.send(a, workload.accounts[1], 1050)
    report = ledger.ingest([spend, receive])
    assert {type(err) for _, err in report.rejected} == {SeqGap, UnknownSource}
    assert ledger.pending == 2
    report = ledger.ingest([grant])
    assert [e.hash for e in report.accepted] == [grant.hash, receive.hash, spend.hash]
    assert ledger.pending == 0
    assert ledger.account(a.account).balance == 0


def test_pending_pool_is_bounded(workload: LedgerWorkload, make_backend: MakeBackend) -> None:
    a, b = workload.accounts[:2]
    ledger = make_ledger(workload.genesis, make_backend(), max_pending=2)
    accepts(ledger, *workload.entries)
    sends = [workload.send(a, b, 1) for _ in range(4)]  # seq 2..5
    ledger.ingest(sends[1:])
    assert ledger.pending == 2  # the oldest parked (seq 3) was evicted for seq 5
    assert ledger.counters()["pending_evicted"] == 1
    assert ledger.counters()["rejected.seq_gap"] == 3
    report = ledger.ingest(sends[:1])
    assert [e.hash for e in report.accepted] == [sends[0].hash]
    assert ledger.backend.get(sends[1].hash) is None  # evicted: it must come again
    assert ledger.pending == 2
    report = ledger.ingest(sends[1:2])  # ... as sync would bring it: the rest follows
    assert [e.hash for e in report.accepted] == [e.hash for e in sends[1:]]
    assert ledger.pending == 0


def test_pending_pool_is_bounded_in_bytes(
    workload: LedgerWorkload, make_backend: MakeBackend
) -> None:
    a, b = workload.accounts[:2]
    sends = [workload.send(a, b, 1) for _ in range(3)]
    limit = len(sends[1].raw) + len(sends[2].raw) - 1
    ledger = make_ledger(workload.genesis, make_backend(), max_pending_bytes=limit)
    accepts(ledger, *workload.entries[: -len(sends)])
    ledger.ingest(sends[1:])
    assert ledger.pending == 1
    assert ledger.counters()["pending_evicted"] == 1
