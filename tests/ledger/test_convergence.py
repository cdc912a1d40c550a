"""Convergence: any order, duplication and batching of delivery gives the same state
(balances, frontier, forks and slashed points).

A replica that ingests the workload in causal order is the reference; every
other replica gets the same entries permuted, partly duplicated and cut into
batches, and must end with exactly the reference's `Ledger.state()`.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from potluck.ledger.core import Ledger, LedgerState
from potluck.ledger.entry import Entry
from potluck.testing.ledger import LedgerWorkload, make_ledger

from .conftest import close_backend, open_backend


@dataclass(frozen=True)
class Scenario:
    validators: int
    accounts: int
    seed: int
    activity: int
    forks: int
    checkpoints: int
    slashes: int = 0


def build(scenario: Scenario) -> LedgerWorkload:
    """Grants, random activity, double spends and checkpoints, all from the seed."""
    rng = random.Random(scenario.seed)
    work = LedgerWorkload(
        validators=scenario.validators, accounts=scenario.accounts, seed=scenario.seed
    )
    work.grant_all(100)
    work.random_activity(scenario.activity // 2, rng)
    for _ in range(scenario.forks):
        account = rng.choice(work.accounts)
        chain = work.chains[account.account]
        # a seq whose balance before it can pay for a double spend
        seqs = [s for s in range(2, len(chain) + 1) if chain[s - 2].balance > 0]
        if not seqs:
            continue
        seq = rng.choice(seqs)
        recipients = [a for a in work.accounts if a != account]
        _, double = work.fork(account, seq=seq, to=rng.choice(recipients))
        if rng.random() < 0.5:  # its payee takes the forked payment too
            work.receive(work.identity(str(double.to)), double)
    if scenario.checkpoints:
        work.checkpoint(work.validators[0])
    work.random_activity(scenario.activity - scenario.activity // 2, rng)
    for validator in work.validators[1 : scenario.checkpoints]:
        work.checkpoint(validator)
    for _ in range(scenario.slashes):  # validators often judge the same case
        body: dict[str, Any] = {
            "account": rng.choice(work.accounts).account,
            "reason": "wrong_output",
            "amount": rng.randint(0, 60),
        }
        case = rng.choice(CASES)
        if case is not None:
            body["evidence"] = {"case": case}
        work.append(rng.choice(work.validators), "slash", body)
    return work


CASES = ("0a" * 32, "0b" * 32, None)


def expected_slashed(work: LedgerWorkload) -> dict[str, int]:
    """Per slashed account: each case's largest amount, summed; a slash without a case alone."""
    cases: dict[str, dict[str, int]] = {}
    for entry in work.entries:
        if entry.kind != "slash":
            continue
        case = entry.body.get("evidence", {}).get("case", entry.hash)
        taken = cases.setdefault(entry.body["account"], {})
        taken[case] = max(taken.get(case, 0), entry.body["amount"])
    return {account: sum(taken.values()) for account, taken in cases.items()}


def reference(work: LedgerWorkload) -> Ledger:
    """A replica fed one entry at a time in causal order: nothing is ever refused."""
    ledger = make_ledger(work.genesis)
    for entry in work.entries:
        report = ledger.ingest([entry])
        assert report.accepted == [entry], report.rejected
    state = ledger.state()
    assert state.entries == {e.hash for e in work.entries}
    counters = ledger.counters()
    assert counters.pop("accepted") == len(work.entries)
    assert counters.pop("forks", 0) == len(work.forks)
    assert not counters
    check_balances(work, ledger)
    return ledger


def check_balances(work: LedgerWorkload, ledger: Ledger) -> None:
    forked: dict[str, int] = {}
    for fork in ledger.forks():
        forked[fork.author] = min(fork.seq, forked.get(fork.author, fork.seq))
    for account in work.accounts:
        state = ledger.account(account.account)
        chain = work.chains[account.account]
        if account.account in forked:
            seq = forked[account.account]
            assert state.frozen
            assert state.seq == seq - 1
            assert state.balance == (chain[seq - 2].balance if seq > 1 else 0)
        else:
            assert not state.frozen
            assert (state.seq, state.head, state.balance) == (
                len(chain),
                chain[-1].hash,
                chain[-1].balance,
            )
    slashed = expected_slashed(work)
    assert ledger.slashed() == slashed
    for account in work.accounts:
        state = ledger.account(account.account)
        assert state.slashed == slashed.get(account.account, 0)
        assert state.available == state.balance - state.slashed
    if not forked:
        granted = 100 * len(work.accounts)
        unreceived = sum(e.amount for a in work.accounts for e in work.pending[a.account])
        assert sum(ledger.balances().values()) + unreceived == granted


def deliver(ledger: Ledger, batches: list[list[Entry]], *, gossip: bool = False) -> LedgerState:
    for batch in batches:
        ledger.ingest(batch, gossip=gossip)
    assert ledger.pending == 0
    return ledger.state()


scenarios = st.builds(
    Scenario,
    validators=st.integers(1, 3),
    accounts=st.integers(2, 5),
    seed=st.integers(0, 2**32),
    activity=st.integers(0, 40),
    forks=st.integers(0, 2),
    checkpoints=st.integers(0, 3),
    slashes=st.integers(0, 6),
)


@st.composite
def deliveries(draw: st.DrawFn, entries: list[Entry]) -> list[list[Entry]]:
    """Every entry at least once, some twice or more, in any order, in any batches."""
    n = len(entries)
    extra = draw(st.lists(st.integers(0, n - 1), max_size=n // 2)) if n else []
    order = draw(st.permutations(list(range(n)) + extra))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1)))) if len(order) > 1 else []
    bounds = [0, *cuts, len(order)]
    return [[entries[i] for i in order[a:b]] for a, b in itertools.pairwise(bounds)]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios, st.data())
def test_any_delivery_gives_the_reference_state(scenario: Scenario, data: st.DataObject) -> None:
    work = build(scenario)
    expected = reference(work).state()
    assert len(expected.forks) == len({(a.author, a.seq) for a, _ in work.forks})
    assert expected.slashed == expected_slashed(work)
    event("forks", len(expected.forks))
    event("slashed accounts", len(expected.slashed))
    event("entries", len(work.entries) // 10 * 10)
    for _ in range(3):
        batches = data.draw(deliveries(work.entries), label="delivery")
        gossip = data.draw(st.booleans(), label="gossip")
        replica = make_ledger(work.genesis)
        assert deliver(replica, batches, gossip=gossip) == expected
        check_balances(work, replica)
    # delivering everything again to a converged replica changes nothing
    assert deliver(replica, [work.entries]) == expected


def test_workloads_are_deterministic() -> None:
    scenario = Scenario(validators=3, accounts=4, seed=11, activity=30, forks=2, checkpoints=2)
    first, second = build(scenario), build(scenario)
    assert [e.raw for e in first.entries] == [e.raw for e in second.entries]
    assert [e.signature for e in first.entries] == [e.signature for e in second.entries]
    assert len({e.hash for e in first.entries}) == len(first.entries)
    assert [e.time for e in first.entries] == sorted(e.time for e in first.entries)


def random_delivery(entries: list[Entry], rng: random.Random) -> list[list[Entry]]:
    order = entries + rng.sample(entries, len(entries) // 4)
    rng.shuffle(order)
    batches: list[list[Entry]] = []
    while order:
        size = rng.randint(1, 12)
        batches.append(order[:size])
        order = order[size:]
    return batches


def test_sqlite_replicas_converge_on_the_reference(tmp_path: Path) -> None:
    scenario = Scenario(
        validators=3, accounts=6, seed=5, activity=80, forks=2, checkpoints=3, slashes=8
    )
    work = build(scenario)
    assert work.forks
    assert any(e.kind == "slash" for e in work.entries)
    expected = reference(work).state()
    rng = random.Random(2024)
    for i in range(3):
        backend = open_backend("sqlite", tmp_path / f"replica-{i}.db")
        try:
            replica = make_ledger(work.genesis, backend)
            assert deliver(replica, random_delivery(work.entries, rng)) == expected
            check_balances(work, replica)
        finally:
            close_backend(backend)
