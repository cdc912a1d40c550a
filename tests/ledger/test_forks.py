"""Double spends: every replica records the same fork and freezes the account;
anyone checks the fraud proof from the two entries alone; checkpoints make
one branch final only with a majority of validators.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest

from potluck.errors import AlreadyReceived, MissingDependency
from potluck.ledger.core import Backend, Fork, Ledger
from potluck.ledger.entry import Entry, decode_wire, verify_fraud_proof
from potluck.testing.ledger import LedgerWorkload, make_ledger

from .conftest import MakeBackend


@dataclass
class DoubleSpend:
    work: LedgerWorkload
    base: list[Entry]  # grants and receives before the fork
    to_b: list[Entry]  # A sends its whole balance to B at seq 2; B receives it
    to_c: list[Entry]  # A sends it all to C at seq 2 too; C receives it

    @property
    def account(self) -> str:
        return self.work.key(0)


@pytest.fixture
def double_spend() -> DoubleSpend:
    work = LedgerWorkload(validators=3, accounts=3, seed="forks")
    a, b, c = work.accounts
    work.grant_all(100)
    base = list(work.entries)
    spend = work.send(a, b, 100)
    original, double = work.fork(a, to=c)
    assert original == spend
    assert (double.seq, double.prev, double.to, double.amount) == (2, spend.prev, c.account, 100)
    to_b = [spend, work.receive(b, spend)]
    to_c = [double, work.receive(c, double)]
    return DoubleSpend(work, base, to_b, to_c)


def feed(ledger: Ledger, *batches: list[Entry]) -> list[Fork]:
    forks = []
    for batch in batches:
        report = ledger.ingest(batch)
        # a batch is applied by seq, so a receive may wait for its source a moment
        assert all(isinstance(err, MissingDependency) for _, err in report.rejected)
        forks.extend(report.forks)
    assert ledger.pending == 0
    return forks


def test_replicas_that_saw_different_branches_agree_on_the_fork(
    double_spend: DoubleSpend, make_backend: MakeBackend
) -> None:
    ds = double_spend
    genesis = ds.work.genesis
    first_b, first_c, both, reversed_all = (make_ledger(genesis, make_backend()) for _ in range(4))
    feed(first_b, ds.base, ds.to_b)
    feed(first_c, ds.base, ds.to_c)
    feed(both, ds.base)
    # before the branches meet, each replica believes its own branch
    assert first_b.forks() == [] and first_c.forks() == []
    for ledger in (first_b, first_c):
        state = ledger.account(ds.account)
        assert (state.frozen, state.seq, state.balance) == (False, 2, 0)
    assert ledger_balance(first_b, ds.work.key(1)) == 200
    assert ledger_balance(first_c, ds.work.key(2)) == 200

    # then they meet
    found_b = feed(first_b, ds.to_c)
    found_c = feed(first_c, ds.to_b)
    found_both = feed(both, ds.to_c[::-1] + ds.to_b[::-1])
    found_reversed = feed(reversed_all, (ds.base + ds.to_b + ds.to_c)[::-1])

    hashes = sorted([ds.to_b[0].hash, ds.to_c[0].hash])
    fork = Fork(ds.account, 2, hashes[0], hashes[1])
    for found in (found_b, found_c, found_both, found_reversed):
        assert found == [fork]
    replicas = (first_b, first_c, both, reversed_all)
    for ledger in replicas:
        assert ledger.forks() == [fork]
        state = ledger.account(ds.account)
        assert state.frozen
        assert (state.seq, state.head, state.balance) == (1, ds.base[-3].hash, 100)
        assert ledger.frontier()[ds.account] == (1, ds.base[-3].hash)
        assert ledger.counters()["forks"] == 1
    assert all(ledger.state() == first_b.state() for ledger in replicas)


def ledger_balance(ledger: Ledger, account: str) -> int:
    return ledger.account(account).balance


def test_a_third_party_checks_the_fraud_proof_from_two_entries(
    double_spend: DoubleSpend, backend: Backend
) -> None:
    ds = double_spend
    ledger = make_ledger(ds.work.genesis, backend)
    feed(ledger, ds.base, ds.to_b, ds.to_c)
    (fork,) = ledger.forks()
    first, second = ledger.fraud_proof(fork)
    assert {first.hash, second.hash} == {ds.to_b[0].hash, ds.to_c[0].hash}
    # what gossip carries: the two entries' wire forms, nothing else
    gossip = json.dumps([first.wire(), second.wire()])
    received = [decode_wire(item) for item in json.loads(gossip)]
    assert verify_fraud_proof(received[0], received[1]) == ds.account
    assert verify_fraud_proof(received[1], received[0], ds.work.swarm) == ds.account


def test_the_frozen_account_stays_at_its_pre_fork_state(
    double_spend: DoubleSpend, backend: Backend
) -> None:
    ds = double_spend
    work = ds.work
    a = work.accounts[0]
    more = work.grant(work.validators[1], a, 50)
    later = work.receive(a, more)  # A carries on along the branch to B
    ledger = make_ledger(work.genesis, backend)
    feed(ledger, work.entries[::-1])
    assert ledger.backend.get(later.hash) is not None  # stored: replicas hold the same set
    state = ledger.account(ds.account)
    assert (state.frozen, state.seq, state.balance) == (True, 1, 100)


def test_every_order_of_a_triple_spend_records_the_same_fork() -> None:
    work = LedgerWorkload(validators=1, accounts=4, seed="triple")
    a, b, c, d = work.accounts
    work.grant_all(100)
    spends = [work.send(a, b, 100)]
    spends += [work.fork(a, to=c)[1], work.fork(a, to=d, amount=40)[1]]
    low, high = sorted(e.hash for e in spends)[:2]
    for order in itertools.permutations(spends):
        ledger = make_ledger(work.genesis)
        feed(ledger, work.entries[: len(work.accounts) * 2])
        for entry in order:
            ledger.ingest([entry])
        assert ledger.forks() == [Fork(a.account, 2, low, high)]
        assert ledger.account(a.account).balance == 100


# ---- finality --------------------------------------------------------------------


def test_an_entry_is_final_once_a_majority_checkpoints_it(
    double_spend: DoubleSpend, backend: Backend
) -> None:
    ds = double_spend
    work = ds.work
    v1, v2, v3 = work.validators
    assert work.genesis.majority == 2
    ledger = make_ledger(work.genesis, backend)
    feed(ledger, ds.base, ds.to_b)
    spend, receive = ds.to_b
    assert not ledger.is_final(spend)
    feed(ledger, [work.checkpoint(v1)])
    assert not ledger.is_final(spend)
    feed(ledger, [work.checkpoint(v2)])
    assert ledger.is_final(spend) and ledger.is_final(receive)
    assert ledger.is_final(ds.base[0])  # earlier entries of a checkpointed chain too
    # an entry after both checkpoints is not final until they move on
    later = work.send(work.accounts[1], work.accounts[2], 5)
    feed(ledger, [later])
    assert not ledger.is_final(later)
    feed(ledger, [work.checkpoint(v3)])
    assert not ledger.is_final(later)
    feed(ledger, [work.checkpoint(v1)])
    assert ledger.is_final(later)


def test_only_the_latest_checkpoint_of_a_validator_counts(backend: Backend) -> None:
    work = LedgerWorkload(validators=3, accounts=2, seed="latest")
    v1, v2, _ = work.validators
    work.grant_all(10)
    send = work.send(work.accounts[0], work.accounts[1], 3)
    ledger = make_ledger(work.genesis, backend)
    feed(ledger, work.entries)
    feed(ledger, [work.checkpoint(v1)])
    before = {a: h for a, h in work.frontier().items() if a != send.author}
    feed(ledger, [work.checkpoint(v2, before)])  # v2 never saw the send
    assert not ledger.is_final(send)
    feed(ledger, [work.checkpoint(v2)])
    assert ledger.is_final(send)


def test_a_checkpoint_of_the_other_branch_does_not_make_a_branch_final(
    double_spend: DoubleSpend, backend: Backend
) -> None:
    ds = double_spend
    work = ds.work
    v1, v2, v3 = work.validators
    to_b, to_c = ds.to_b[0], ds.to_c[0]
    ledger = make_ledger(work.genesis, backend)
    feed(ledger, ds.base, ds.to_b, ds.to_c)
    on_b = work.frontier()
    on_c = {**on_b, ds.account: [to_c.seq, to_c.hash]}
    assert on_b[ds.account] == [to_b.seq, to_b.hash]

    feed(ledger, [work.checkpoint(v1, on_b)])
    feed(ledger, [work.checkpoint(v2, on_c)])
    assert not ledger.is_final(to_b) and not ledger.is_final(to_c)  # one vote each
    feed(ledger, [work.checkpoint(v3, on_c)])
    assert ledger.is_final(to_c)
    assert not ledger.is_final(to_b)
    assert ledger.is_final(ds.base[-3])  # A's entry before the fork is on both branches


def test_a_checkpoint_past_the_branch_counts_for_it(
    double_spend: DoubleSpend, backend: Backend
) -> None:
    ds = double_spend
    work = ds.work
    a = work.accounts[0]
    more = work.grant(work.validators[2], a, 5)
    after = work.receive(a, more)  # seq 3, on the branch to B
    ledger = make_ledger(work.genesis, backend)
    feed(ledger, work.entries)
    for validator in work.validators[:2]:
        feed(ledger, [work.checkpoint(validator)])
    assert work.frontier()[ds.account][1] == after.hash
    assert ledger.is_final(after) and ledger.is_final(ds.to_b[0])
    assert not ledger.is_final(ds.to_c[0])


def test_a_checkpoint_of_an_unknown_head_counts_for_nothing(backend: Backend) -> None:
    work = LedgerWorkload(validators=1, accounts=2, seed="unknown")
    work.grant_all(10)
    send = work.send(work.accounts[0], work.accounts[1], 3)
    ledger = make_ledger(work.genesis, backend)
    feed(ledger, work.entries[:-1])  # not the send
    unseen = {send.author: [send.seq, send.hash]}
    feed(ledger, [work.checkpoint(work.validators[0], unseen)])
    assert not ledger.is_final(send)
    feed(ledger, [send])
    assert ledger.is_final(send)


def test_each_branch_of_a_fork_may_receive_the_same_transfer_once() -> None:
    work = LedgerWorkload(validators=1, accounts=2, seed="branches")
    a, b = work.accounts
    work.grant_all(100)
    base = list(work.entries)
    grant = work.grant(work.validators[0], a, 50)
    on_x = work.receive(a, grant)  # seq 2 on branch X
    _, on_y = work.fork(a, seq=2, to=b)  # seq 2 on branch Y: a send of 100
    again_on_y = work.sign(a, "receive", {"source": grant.hash}, seq=3, prev=on_y.hash, balance=50)
    again_on_x = work.sign(a, "receive", {"source": grant.hash}, balance=200)  # seq 3 after X
    valid = [grant, on_x, on_y, again_on_y]
    states = set()
    for order in itertools.permutations(valid):
        ledger = make_ledger(work.genesis)
        feed(ledger, base)
        for entry in order:
            ledger.ingest([entry])
        assert ledger.pending == 0
        assert ledger.state().entries == {e.hash for e in base + valid}
        report = ledger.ingest([again_on_x])
        assert [type(err) for _, err in report.rejected] == [AlreadyReceived]
        states.add((ledger.state().entries, tuple(ledger.forks())))
    assert len(states) == 1
