"""Sync planning: every row of `plan_send`'s table, and two replicas that plan
against each other until both hold the union of their entries."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from potluck.errors import MissingDependency
from potluck.ledger.core import AuthorSummary, Ledger, xor_hex
from potluck.ledger.entry import ZERO_HASH, Entry
from potluck.ledger.sync import (
    SummaryRow,
    missing_estimate,
    plan_send,
    rows_from_wire,
    summary_rows,
)
from potluck.testing.ledger import LedgerWorkload, make_ledger

MAX_ROUNDS = 2
"""Rounds (a plan each way) two replicas need at most: a replica whose shorter chain
ends on the other branch of a fork gets the longer one in the first round, and only
then, forked, sends its own branch back (`test_a_diverged_shorter_chain_...`)."""


def ledger_of(work: LedgerWorkload, entries: Iterable[Entry]) -> Ledger:
    """A replica holding exactly `entries` (each stored on arrival, nothing parked)."""
    ledger = make_ledger(work.genesis)
    for entry in entries:
        report = ledger.ingest([entry])
        assert report.accepted == [entry], report.rejected
    return ledger


def rows(ledger: Ledger) -> dict[str, SummaryRow]:
    """A replica's summary rows, with the head a `Replica` reports (the smallest hash)."""
    backend = ledger.backend
    return summary_rows(backend.summary(), lambda a, top: min(backend.hashes_at(a, top)))


def plan(mine: Ledger, theirs: Ledger) -> list[tuple[str, int]]:
    return plan_send(rows(mine), rows(theirs), lambda h: mine.backend.get(h) is not None)


# ---- the table, row by row ----------------------------------------------------


@dataclass
class Chains:
    """Account A's chain (receive, then three sends) and a double spend at seq 2."""

    work: LedgerWorkload
    base: list[Entry]  # every grant (the validator's chain) and the other accounts' receives
    chain: list[Entry]  # A's entries at seq 1..4
    double: Entry  # A's second entry at seq 2

    @property
    def author(self) -> str:
        return self.work.key(0)

    def holding(self, *entries: Entry) -> Ledger:
        return ledger_of(self.work, [*self.base, *entries])

    def upto(self, seq: int, *extra: Entry) -> Ledger:
        return self.holding(*self.chain[:seq], *extra)


@pytest.fixture(scope="module")
def chains() -> Chains:
    work = LedgerWorkload(validators=1, accounts=3, seed="sync")
    a, b, _ = work.accounts
    work.grant_all(100)
    chain = [work.chains[a.account][0]]
    base = [e for e in work.entries if e not in chain]
    chain += [work.send(a, b, 10), work.send(a, b, 20), work.send(a, b, 30)]
    _, double = work.fork(a, seq=2)
    assert (double.seq, double.prev) == (2, chain[0].hash)
    return Chains(work, base, chain, double)


def test_an_author_the_peer_lacks_is_sent_whole(chains: Chains) -> None:
    mine, theirs = chains.upto(4), chains.upto(0)
    assert chains.author not in rows(theirs)
    assert plan(mine, theirs) == [(chains.author, 0)]
    assert missing_estimate(rows(theirs), rows(mine)) == 4


def test_the_same_entries_send_nothing(chains: Chains) -> None:
    mine, theirs = chains.upto(3), chains.upto(3)
    assert rows(mine) == rows(theirs)
    assert plan(mine, theirs) == []
    assert missing_estimate(rows(mine), rows(theirs)) == 0


def test_a_longer_chain_holding_the_peers_head_sends_what_follows(chains: Chains) -> None:
    mine, theirs = chains.upto(4), chains.upto(2)
    assert plan(mine, theirs) == [(chains.author, 2)]
    assert missing_estimate(rows(theirs), rows(mine)) == 2
    # what the plan names is exactly what the peer lacks
    (author, after), *_ = plan(mine, theirs)
    assert mine.backend.chain(author, after, 100) == chains.chain[2:]


def test_a_longer_chain_without_the_peers_head_sends_everything(chains: Chains) -> None:
    mine, theirs = chains.upto(4), chains.upto(1, chains.double)
    assert not rows(mine)[chains.author].forked and not rows(theirs)[chains.author].forked
    assert plan(mine, theirs) == [(chains.author, 0)]


def test_equally_long_chains_that_differ_send_everything(chains: Chains) -> None:
    mine, theirs = chains.upto(2), chains.upto(1, chains.double)
    own, other = rows(mine)[chains.author], rows(theirs)[chains.author]
    assert (own.top, own.count) == (other.top, other.count) == (2, 2)
    assert own.digest != other.digest
    assert plan(mine, theirs) == [(chains.author, 0)]
    assert plan(theirs, mine) == [(chains.author, 0)]


@pytest.mark.parametrize("diverged", [False, True], ids=["linear", "diverged"])
def test_the_peers_longer_chain_sends_nothing_from_here(chains: Chains, diverged: bool) -> None:
    mine = chains.upto(1, chains.double) if diverged else chains.upto(2)
    theirs = chains.upto(4)
    assert plan(mine, theirs) == []  # the peer's plan against ours covers the author
    assert plan(theirs, mine) == [(chains.author, 0 if diverged else 2)]
    assert missing_estimate(rows(mine), rows(theirs)) == 2


def test_a_diverged_shorter_chain_returns_its_branch_a_round_later(chains: Chains) -> None:
    a, b = chains.upto(1, chains.double), chains.upto(4)
    assert exchange(a, b) == 0  # b is longer: a leaves the author to b's plan
    assert exchange(b, a) == 1  # b lacks a's head: it sends its whole chain
    assert a.forks() and not b.forks()
    assert exchange(a, b) == 1  # now forked, a sends its whole chain, the double with it
    assert exchange(b, a) == 0
    assert a.state() == b.state() and len(b.forks()) == 1
    assert exchange(a, b) + exchange(b, a) == 0


def test_a_fork_here_sends_everything_even_past_the_peers_head(chains: Chains) -> None:
    mine, theirs = chains.upto(4, chains.double), chains.upto(2)
    own = rows(mine)[chains.author]
    assert own.forked and (own.top, own.count) == (4, 5)
    assert plan(mine, theirs) == [(chains.author, 0)]  # not after seq 2: it holds that head


@pytest.mark.parametrize("mine_seq", [1, 4], ids=["shorter", "longer"])
def test_a_fork_at_the_peer_sends_everything(chains: Chains, mine_seq: int) -> None:
    mine, theirs = chains.upto(mine_seq), chains.upto(2, chains.double)
    assert rows(theirs)[chains.author].forked
    assert plan(mine, theirs) == [(chains.author, 0)]


def test_plans_list_authors_in_order_and_only_those_that_differ(chains: Chains) -> None:
    mine, theirs = chains.upto(4), ledger_of(chains.work, [])
    planned = plan(mine, theirs)
    assert planned == sorted((author, 0) for author in rows(mine))
    assert len(planned) == 4  # the validator and the three accounts


# ---- the pieces the table is computed from ------------------------------------


def test_summary_rows_ask_for_the_head_at_each_top() -> None:
    summary = {"a" * 64: AuthorSummary(3, 3, "1" * 64), "b" * 64: AuthorSummary(2, 3, "2" * 64)}
    asked: list[tuple[str, int]] = []

    def head_of(author: str, top: int) -> str:
        asked.append((author, top))
        return author[0] * 63 + str(top)

    got = summary_rows(summary, head_of)
    assert sorted(asked) == [("a" * 64, 3), ("b" * 64, 2)]
    assert got == {
        "a" * 64: SummaryRow(3, 3, "1" * 64, "a" * 63 + "3"),
        "b" * 64: SummaryRow(2, 3, "2" * 64, "b" * 63 + "2"),
    }
    assert not got["a" * 64].forked and got["b" * 64].forked
    wire = [row.wire(author) for author, row in got.items()]
    assert rows_from_wire(wire) == got


def test_rows_hold_the_xor_of_the_authors_hashes(chains: Chains) -> None:
    row = rows(chains.upto(3))[chains.author]
    digest = ZERO_HASH
    for entry in chains.chain[:3]:
        digest = xor_hex(digest, entry.hash)
    assert row == SummaryRow(3, 3, digest, chains.chain[2].hash)


def test_missing_estimate_counts_only_what_the_peer_has_more_of() -> None:
    row = SummaryRow(5, 5, "1" * 64, "2" * 64)
    small = SummaryRow(2, 2, "3" * 64, "4" * 64)
    mine = {"a" * 64: row, "b" * 64: small}
    theirs = {"a" * 64: small, "b" * 64: row, "c" * 64: row}
    assert missing_estimate(mine, theirs) == 0 + 3 + 5
    assert missing_estimate(theirs, mine) == 3
    assert missing_estimate({}, {}) == 0


# ---- the property: planning both ways reaches the union -----------------------


@lru_cache(maxsize=16)
def workload(seed: int, fork: bool) -> LedgerWorkload:
    """Grants, random activity and maybe a double spend its payee takes, from the seed."""
    rng = random.Random(seed)
    work = LedgerWorkload(validators=2, accounts=4, seed=f"sync-{seed}")
    work.grant_all(100)
    work.random_activity(12, rng)
    if fork:
        account = rng.choice(work.accounts)
        chain = work.chains[account.account]
        seqs = [s for s in range(2, len(chain) + 1) if chain[s - 2].balance > 0]
        if seqs:
            _, double = work.fork(account, seq=rng.choice(seqs))
            work.receive(work.identity(str(double.to)), double)
    work.random_activity(12, rng)
    return work


def closed_subset(
    work: LedgerWorkload, keep: float, rng: random.Random, branch: int | None
) -> list[Entry]:
    """What a replica ends up storing (the entries it can apply) when given each
    entry of the workload with probability `keep`.

    With a fork, `branch` 0 or 1 leaves out the other side of the double spend,
    so that the two replicas often saw different branches."""
    dropped = {pair[1 - branch].hash for pair in work.forks} if branch is not None else set()
    trial = make_ledger(work.genesis)
    trial.ingest([e for e in work.entries if rng.random() < keep and e.hash not in dropped])
    held = trial.backend.all_hashes()
    return [e for e in work.entries if e.hash in held]


def exchange(src: Ledger, dst: Ledger) -> int:
    """Send `dst` what `src` plans to send it; returns how many ranges were planned."""
    planned = plan(src, dst)
    entries = [e for author, after in planned for e in src.backend.chain(author, after, 10**6)]
    report = dst.ingest(entries, gossip=True)
    assert all(isinstance(err, MissingDependency) for _, err in report.rejected), report.rejected
    return len(planned)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 7),
    fork=st.booleans(),
    keep=st.tuples(*[st.sampled_from([1.0, 0.97, 0.9, 0.6])] * 2),
    branches=st.sampled_from([(None, None), (0, 1), (1, 0), (None, 1), (0, None)]),
    subset_seed=st.integers(0, 2**32),
)
def test_plans_reach_the_union(
    seed: int,
    fork: bool,
    keep: tuple[float, float],
    branches: tuple[int | None, int | None],
    subset_seed: int,
) -> None:
    work = workload(seed, fork)
    rng = random.Random(subset_seed)
    held_a = closed_subset(work, keep[0], rng, branches[0])
    held_b = closed_subset(work, keep[1], rng, branches[1])
    a, b = ledger_of(work, held_a), ledger_of(work, held_b)
    union = {e.hash for e in held_a} | {e.hash for e in held_b}

    rounds = 0
    while exchange(a, b) + exchange(b, a):
        rounds += 1
        assert rounds <= MAX_ROUNDS, f"no agreement after {MAX_ROUNDS} rounds"
    event("rounds", rounds)
    event("forked", bool(a.forks()))

    assert a.pending == b.pending == 0
    assert a.state() == b.state()
    assert a.state().entries == union
    # the same state as a replica given the union directly, forks included
    reference = ledger_of(work, [e for e in work.entries if e.hash in union])
    assert a.state() == reference.state()
