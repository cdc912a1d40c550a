"""Slashes: the points they take, `available` and debts, debits refused on
submission, order independence, wallets, and `audit_balances`."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from potluck.errors import InsufficientBalance, NotValidator
from potluck.ledger import store, tools
from potluck.ledger.core import AccountState, Ledger, MemoryBackend, slashed_points
from potluck.ledger.entry import Entry, make_entry
from potluck.ledger.replica import MAX_SLASHED, PROTOCOL_LEDGER, Replica, ReplicaConfig
from potluck.ledger.store import SqliteBackend, open_ledger
from potluck.ledger.wallet import LocalReplica, RemoteReplica, ReplicaAccess, Wallet, author_entry
from potluck.p2p.host import open_host
from potluck.p2p.identity import Identity
from potluck.testing.aio import run_bounded
from potluck.testing.ledger import LedgerWorkload, make_ledger
from potluck.wire import AccountRequest

from .conftest import MakeBackend

CASE_X = "0a" * 32
CASE_Y = "0b" * 32


def slash(
    work: LedgerWorkload,
    validator: Identity,
    account: Identity | str,
    amount: int | None = None,
    case: str | None = CASE_X,
) -> Entry:
    target = account if isinstance(account, str) else account.public_bytes.hex()
    body: dict[str, Any] = {"account": target, "reason": "wrong_output"}
    if amount is not None:
        body["amount"] = amount
    if case is not None:
        body["evidence"] = {"case": case, "record": {"anything": [1, 2]}}
    return work.append(validator, "slash", body)


def ticket(work: LedgerWorkload, account: Identity, to: Identity, amount: int) -> Entry:
    body = {"to": to.public_bytes.hex(), "amount": amount, "session": "s", "expires": 9}
    return work.append(account, "ticket", body)


def loaded(work: LedgerWorkload, make_backend: MakeBackend) -> Ledger:
    ledger = make_ledger(work.genesis, make_backend())
    report = ledger.ingest(work.entries)
    assert set(report.accepted) == set(work.entries), report.rejected
    return ledger


@pytest.fixture
def work() -> LedgerWorkload:
    """2 validators and 3 accounts with 100 points each."""
    made = LedgerWorkload(validators=2, accounts=3, seed="slash")
    made.grant_all(100)
    return made


# ---- what slashes take --------------------------------------------------------------


def test_each_case_takes_its_amount(work: LedgerWorkload, make_backend: MakeBackend) -> None:
    v0, _ = work.validators
    a, b, _ = work.accounts
    slash(work, v0, a, 30, CASE_X)
    slash(work, v0, a, 20, CASE_Y)
    slash(work, v0, b, 5, CASE_X)  # a case names several guilty accounts
    ledger = loaded(work, make_backend)
    state = ledger.account(a.account)
    assert (state.balance, state.slashed, state.available) == (100, 50, 50)
    assert ledger.account(b.account).slashed == 5
    assert ledger.account(work.key(2)).slashed == 0
    assert ledger.slashed() == {a.account: 50, b.account: 5}
    assert ledger.state().slashed == {a.account: 50, b.account: 5}
    assert ledger.balances()[a.account] == 100  # the chain's balance is untouched


def test_validators_slashing_one_case_take_it_once(
    work: LedgerWorkload, make_backend: MakeBackend
) -> None:
    v0, v1 = work.validators
    a, b, c = work.accounts
    slash(work, v0, a, 30, CASE_X)
    slash(work, v1, a, 40, CASE_X)  # the same case: the largest amount, once
    slash(work, v1, a, 40, CASE_X)  # even twice by one validator
    slash(work, v0, b, 7, case=None)  # no case: each slash is its own
    slash(work, v1, b, 7, case=None)
    slash(work, v0, c, None, CASE_Y)  # no amount: slashed, for 0 points
    ledger = loaded(work, make_backend)
    assert ledger.account(a.account).slashed == 40
    assert ledger.account(b.account).slashed == 14
    assert ledger.slashed() == {a.account: 40, b.account: 14, c.account: 0}
    assert [e.author for e in ledger.backend.slashes_of(a.account)] == [
        v0.account,
        v1.account,
        v1.account,
    ]


def test_slashed_points_count_only_genesis_validators(work: LedgerWorkload) -> None:
    v0, _ = work.validators
    a, b, _ = work.accounts
    by_validator = slash(work, v0, a, 30, CASE_X)
    by_account = work.sign(
        b,
        "slash",
        {"account": a.account, "reason": "spite", "amount": 99, "evidence": {"case": CASE_Y}},
    )
    assert slashed_points([by_validator, by_account], frozenset({v0.account})) == 30
    assert slashed_points([by_account], frozenset({v0.account})) == 0


def test_a_slash_by_an_account_that_is_not_a_validator_is_rejected(
    work: LedgerWorkload, make_backend: MakeBackend
) -> None:
    a, b, _ = work.accounts
    ledger = loaded(work, make_backend)
    forged = work.sign(
        b, "slash", {"account": a.account, "reason": "spite", "amount": 99}
    )  # signed by b, a valid entry in form
    report = ledger.ingest([forged])
    assert report.accepted == []
    assert isinstance(report.rejected[0][1], NotValidator)
    assert ledger.account(a.account).slashed == 0
    assert ledger.slashed() == {}


def test_a_slash_over_the_balance_is_a_debt(
    work: LedgerWorkload, make_backend: MakeBackend
) -> None:
    v0, _ = work.validators
    a, _, _ = work.accounts
    stranger = Identity.generate().public_bytes.hex()
    slash(work, v0, a, 150)
    slash(work, v0, stranger, 25)  # an account with no entries at all
    ledger = loaded(work, make_backend)
    state = ledger.account(a.account)
    assert (state.balance, state.slashed, state.available) == (100, 150, -50)
    other = ledger.account(stranger)
    assert (other.seq, other.balance, other.slashed, other.available) == (0, 0, 25, -25)
    assert AccountState("aa" * 32, 10, 1, "bb" * 32, False).available == 10


def test_slashes_of_and_by_kind_agree_on_both_backends(
    work: LedgerWorkload, make_backend: MakeBackend
) -> None:
    v0, v1 = work.validators
    a, b, _ = work.accounts
    made = [slash(work, v0, a, 1), slash(work, v1, b, 2), slash(work, v1, a, 3, CASE_Y)]
    ledger = loaded(work, make_backend)
    backend = ledger.backend
    assert backend.slashes_of(a.account) == [made[0], made[2]]
    assert backend.slashes_of(b.account) == [made[1]]
    assert backend.slashes_of(work.key(2)) == []
    assert backend.by_kind("slash") == made
    assert backend.by_kind("slash", made[1].time) == made[1:]
    assert backend.by_kind("slash", made[2].time + 1) == []
    grants = [e for e in work.entries if e.kind == "grant"]
    assert backend.by_kind("grant") == sorted(grants, key=lambda e: (e.time, e.hash))
    assert backend.by_kind("mint") == []


def test_by_kind_orders_equal_times_by_hash(make_backend: MakeBackend) -> None:
    work = LedgerWorkload(validators=3, accounts=1, seed="same-time")
    same = [
        make_entry(
            v,
            swarm=work.swarm,
            seq=1,
            prev="0" * 64,
            time=5,
            kind="attest",
            body={"server": work.key(0)},
            balance=0,
        )
        for v in work.validators
    ]
    ledger = make_ledger(work.genesis, make_backend())
    ledger.ingest(same)
    assert ledger.backend.by_kind("attest") == sorted(same, key=lambda e: e.hash)


# ---- debits over `available` --------------------------------------------------------


@pytest.mark.parametrize("kind", ["send", "ticket"])
def test_a_submitted_debit_over_available_is_refused(
    work: LedgerWorkload, make_backend: MakeBackend, kind: str
) -> None:
    v0, _ = work.validators
    a, b, _ = work.accounts
    slash(work, v0, a, 60)
    ledger = loaded(work, make_backend)
    before = ledger.state()
    over = work.sign(a, kind, _debit_body(kind, b, 41))
    report = ledger.ingest([over], submitted=True)
    assert report.accepted == []
    ((entry, error),) = report.rejected
    assert entry == over and isinstance(error, InsufficientBalance)
    assert "slashed 60 points" in str(error) and "40 of its balance of 100" in str(error)
    assert ledger.state() == before  # nothing stored
    assert ledger.counters()["rejected.overdraft"] == 1
    within = work.sign(a, kind, _debit_body(kind, b, 40))
    assert ledger.ingest([within], submitted=True).accepted == [within]
    assert ledger.account(a.account).available == 0


def _debit_body(kind: str, to: Identity, amount: int) -> dict[str, Any]:
    body: dict[str, Any] = {"to": to.public_bytes.hex(), "amount": amount}
    if kind == "ticket":
        body.update(session="s", expires=9)
    return body


def test_a_relayed_debit_over_available_is_stored(
    work: LedgerWorkload, make_backend: MakeBackend
) -> None:
    v0, _ = work.validators
    a, b, _ = work.accounts
    slash(work, v0, a, 60)
    ledger = loaded(work, make_backend)
    spent = work.send(a, b, 90)  # signed before its author heard of the slash, say
    report = ledger.ingest([spent], gossip=True)  # as a replica relays it
    assert report.accepted == [spent]
    state = ledger.account(a.account)
    assert (state.balance, state.slashed, state.available) == (10, 60, -50)


def test_a_debit_within_the_balance_of_an_unslashed_account_is_untouched(
    work: LedgerWorkload, make_backend: MakeBackend
) -> None:
    a, b, _ = work.accounts
    ledger = loaded(work, make_backend)
    spend = work.sign(a, "send", {"to": b.account, "amount": 100})
    assert ledger.ingest([spend], submitted=True).accepted == [spend]


# ---- order independence -------------------------------------------------------------


def test_any_delivery_order_gives_the_same_slashes(make_backend: MakeBackend) -> None:
    work = LedgerWorkload(validators=3, accounts=4, seed="slash-order")
    work.grant_all(100)
    rng = random.Random(11)
    for i in range(12):
        work.random_activity(3, rng)
        validator = rng.choice(work.validators)
        case = rng.choice([CASE_X, CASE_Y, None])
        slash(work, validator, rng.choice(work.accounts), rng.randint(0, 80), case)
        if i % 4 == 0:
            account = rng.choice(work.accounts)
            if work.head(account).balance:
                work.send(account, rng.choice([x for x in work.accounts if x != account]), 1)
    reference = make_ledger(work.genesis)
    for entry in work.entries:
        assert reference.ingest([entry]).accepted == [entry]
    expected = reference.state()
    assert expected.slashed and any(v > 0 for v in expected.slashed.values())
    for seed in range(3):
        order = list(work.entries)
        random.Random(seed).shuffle(order)
        replica = make_ledger(work.genesis, make_backend())
        for start in range(0, len(order), 7):
            replica.ingest(order[start : start + 7], gossip=True)
        assert replica.pending == 0
        assert replica.state() == expected
        for account in work.accounts:
            assert replica.account(account.account) == reference.account(account.account)


# ---- wallets ------------------------------------------------------------------------


def test_author_entry_refuses_a_debit_over_available() -> None:
    me = Identity.generate()
    state = AccountState(me.public_bytes.hex(), 100, 3, "cd" * 32, False, slashed=70)
    to = "ef" * 32
    with pytest.raises(InsufficientBalance, match="was slashed 70 points: 30 of its balance"):
        author_entry(me, "ab" * 32, state, "send", {"to": to, "amount": 31}, now_ms=1)
    with pytest.raises(InsufficientBalance, match="was slashed"):
        body = {"to": to, "amount": 31, "session": "s", "expires": 1}
        author_entry(me, "ab" * 32, state, "ticket", body, now_ms=1)
    sent = author_entry(me, "ab" * 32, state, "send", {"to": to, "amount": 30}, now_ms=1)
    assert sent.balance == 70
    # other kinds are written whatever the debt
    debt = AccountState(me.public_bytes.hex(), 0, 3, "cd" * 32, False, slashed=70)
    body = {"client": to, "session": "s", "tokens": 1, "blocks": 1}
    assert author_entry(me, "ab" * 32, debt, "receipt", body, now_ms=1).balance == 0


@asynccontextmanager
async def replica_access(kind: str, ledger: Ledger) -> AsyncIterator[ReplicaAccess]:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_host(Identity.generate(), timeout=10))
        host = await stack.enter_async_context(open_host(Identity.generate(), timeout=10))
        replica = Replica(ledger, host, ReplicaConfig(request_timeout=10.0))
        host.set_handler(PROTOCOL_LEDGER, replica.handle)
        if kind == "local":
            yield LocalReplica(replica)
        else:
            yield RemoteReplica(client, host.peer_id, host.addrs, timeout=10)


class Counting:
    """A `ReplicaAccess` that counts submits."""

    def __init__(self, inner: ReplicaAccess) -> None:
        self.inner = inner
        self.submits = 0

    async def account(self, account: str, history: int = 0, before_seq: int = 0) -> Any:
        return await self.inner.account(account, history, before_seq)

    async def submit(self, entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
        self.submits += 1
        return await self.inner.submit(entries)


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_a_wallet_sees_its_slashes_and_refuses_to_overspend(
    work: LedgerWorkload, kind: str
) -> None:
    v0, _ = work.validators
    a, b, _ = work.accounts
    slash(work, v0, a, 60)
    ledger = make_ledger(work.genesis)
    ledger.ingest(work.entries)

    async def main() -> None:
        async with replica_access(kind, ledger) as access:
            counting = Counting(access)
            clock = iter(range(1_900_000_000, 1_900_001_000))
            wallet = Wallet(
                a,
                work.swarm,
                counting,
                validators=work.genesis.validators,
                clock=lambda: float(next(clock)),
            )
            state = await wallet.state()
            assert (state.balance, state.slashed, state.available) == (100, 60, 40)
            with pytest.raises(InsufficientBalance, match="was slashed 60 points"):
                await wallet.send(b.account, 41)
            assert counting.submits == 0
            sent = await wallet.send(b.account, 40)
            assert sent.balance == 60
            state = await wallet.state()
            assert (state.balance, state.slashed, state.available) == (60, 60, 0)
            with pytest.raises(InsufficientBalance, match="was slashed"):
                await wallet.send(b.account, 1)
            assert counting.submits == 1

    run_bounded(main, 20.0)


def test_watch_yields_when_the_account_is_slashed(work: LedgerWorkload) -> None:
    v0, _ = work.validators
    a, _, _ = work.accounts
    ledger = make_ledger(work.genesis)
    ledger.ingest(work.entries)

    async def main() -> None:
        async with replica_access("local", ledger) as access:
            wallet = Wallet(a, work.swarm, access)
            watching = cast(AsyncGenerator[AccountState, None], wallet.watch(interval=0.01))
            async with aclosing(watching) as states:
                first = await anext(states)
                assert (first.balance, first.slashed) == (100, 0)
                ledger.ingest([slash(work, v0, a, 25)])
                second = await anext(states)
                assert (second.seq, second.balance, second.slashed) == (first.seq, 100, 25)
                assert second.available == 75

    run_bounded(main, 20.0)


def test_an_account_reply_carries_the_slashed_points(
    work: LedgerWorkload, monkeypatch: pytest.MonkeyPatch
) -> None:
    v0, _ = work.validators
    a, _, _ = work.accounts
    slash(work, v0, a, 60)
    ledger = make_ledger(work.genesis)
    ledger.ingest(work.entries)
    replica = Replica(ledger, cast(Any, None))  # account_reply needs no host
    reply = replica.account_reply(AccountRequest(a.account))
    assert (reply.balance, reply.slashed) == (100, 60)
    assert replica.account_reply(AccountRequest(work.key(1))).slashed == 0
    huge = dataclasses.replace(ledger.account(a.account), slashed=2**70)
    monkeypatch.setattr(ledger, "account", lambda account: huge)
    assert replica.account_reply(AccountRequest(a.account)).slashed == MAX_SLASHED == 2**63 - 1


# ---- audit_balances -----------------------------------------------------------------


def busy_workload() -> LedgerWorkload:
    """Grants, mints, sends, tickets, slashes, a fork whose branches were both received."""
    work = LedgerWorkload(validators=2, accounts=4, seed="audit")
    v0, v1 = work.validators
    a, b, c, d = work.accounts
    work.grant_all(100)
    work.mint(v1, a, 40, epoch=3)
    work.receive(a)
    ticket(work, a, b, 15)
    work.send(b, c, 30)
    work.random_activity(20, random.Random(5))
    work.send(d, a, 10)  # left unreceived
    work.mint(v0, c, 7)  # left unreceived
    original, double = work.fork(d, to=b)
    work.receive(work.identity(str(original.to)), original)
    work.receive(b, double)
    slash(work, v0, d, 200, CASE_X)
    slash(work, v1, d, 150, CASE_X)
    slash(work, v1, c, 5, CASE_Y)
    return work


def test_audit_passes_a_good_ledger(make_backend: MakeBackend) -> None:
    work = busy_workload()
    ledger = loaded(work, make_backend)
    audit = tools.audit_balances(ledger)
    assert audit.problems == [] and audit.ok
    rows = {row.account: row for row in audit.rows}
    a, _, c, d = (x.account for x in work.accounts)
    assert set(rows) == set(ledger.backend.tips())
    row = rows[a]
    assert (row.grants_received, row.mints_received) == (100, 40)
    assert row.balance == ledger.account(a).balance
    assert row.grants_received + row.mints_received + row.sends_received - row.spent == (
        row.balance
    )
    assert (rows[d].slashed, rows[d].available) == (200, rows[d].balance - 200)
    assert rows[c].slashed == 5
    assert (audit.granted, audit.minted) == (400, 47)  # written, received or not
    assert audit.unreceived >= 10 + 7
    assert audit.disputed > 0  # the fork's two payments were both received
    assert audit.balances + audit.unreceived == audit.granted + audit.minted + audit.disputed


def test_audit_on_a_ledger_without_forks_conserves_grants_and_mints() -> None:
    work = LedgerWorkload(validators=1, accounts=3, seed="plain")
    work.grant_all(50)
    work.mint(work.validators[0], work.accounts[0], 9)
    work.random_activity(15, random.Random(1))
    ledger = make_ledger(work.genesis)
    ledger.ingest(work.entries)
    audit = tools.audit_balances(ledger)
    assert audit.ok and audit.disputed == 0
    assert audit.balances + audit.unreceived == 150 + 9
    assert sum(ledger.balances().values()) == audit.balances


def tampered(work: LedgerWorkload, extra: Callable[[LedgerWorkload], list[Entry]]) -> Ledger:
    """A memory ledger of `work`'s entries plus `extra` entries stored without the rules."""
    ledger = make_ledger(work.genesis, MemoryBackend())
    ledger.ingest(work.entries)
    with ledger.backend.transaction():
        for entry in extra(work):
            ledger.backend.insert(entry)
    return ledger


def test_audit_finds_a_balance_that_does_not_add_up() -> None:
    work = LedgerWorkload(validators=1, accounts=2, seed="tamper-1")
    work.grant_all(50)
    a, b = work.accounts
    ledger = tampered(
        work, lambda w: [w.sign(a, "send", {"to": b.account, "amount": 5}, balance=48)]
    )
    audit = tools.audit_balances(ledger)
    assert any(a.account in p and "balance 48 is not" in p for p in audit.problems), audit
    assert any("not conserved" in p for p in audit.problems)


def test_audit_finds_a_transfer_received_twice() -> None:
    work = LedgerWorkload(validators=1, accounts=2, seed="tamper-2")
    work.grant_all(50)
    a, _ = work.accounts
    grant = work.chains[work.validators[0].account][0]
    ledger = tampered(work, lambda w: [w.sign(a, "receive", {"source": grant.hash})])
    audit = tools.audit_balances(ledger)
    assert any("more than once" in p for p in audit.problems), audit.problems
    assert any("not conserved" in p for p in audit.problems)


def test_audit_finds_a_receive_of_someone_elses_transfer() -> None:
    work = LedgerWorkload(validators=1, accounts=3, seed="tamper-3")
    work.grant_all(50)
    a, b, c = work.accounts
    to_b = work.send(a, b, 20)
    ledger = tampered(work, lambda w: [w.sign(c, "receive", {"source": to_b.hash})])
    audit = tools.audit_balances(ledger)
    assert any(c.account in p and "not a stored transfer to it" in p for p in audit.problems)
    assert any(c.account in p and "balance 70 is not" in p for p in audit.problems)


def test_audit_and_verify_find_a_slash_the_index_lost(tmp_path: Path) -> None:
    work = busy_workload()
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    ledger = open_ledger(data_dir / store.LEDGER_FILE, work.genesis)
    ledger.ingest(work.entries)
    assert tools.audit_balances(ledger).ok
    assert isinstance(ledger.backend, SqliteBackend)
    ledger.backend.close()
    assert tools.verify(data_dir, work.genesis).ok
    d = work.key(3)
    with sqlite3.connect(data_dir / store.LEDGER_FILE) as conn:
        changed = conn.execute(
            "UPDATE entries SET kind = 'audit' WHERE kind = 'slash' AND raw LIKE ?", (f"%{d}%",)
        ).rowcount
    conn.close()
    assert changed == 2
    with SqliteBackend(data_dir / store.LEDGER_FILE, readonly=True) as reader:
        audit = tools.audit_balances(Ledger(work.genesis, reader))
    assert any(f"account {d}: slashed 0 is not" in p for p in audit.problems), audit.problems
    report = tools.verify(data_dir, work.genesis)
    assert not report.ok
    assert any("slashes" in line and "differ from a rebuild" in line for line in report.bad)
    assert any("slashed 0 is not" in line for line in report.bad)


# ---- the migration ------------------------------------------------------------------


def test_the_migration_indexes_slashes_already_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, work: LedgerWorkload
) -> None:
    v0, _ = work.validators
    a, _, _ = work.accounts
    made = slash(work, v0, a, 12)
    path = tmp_path / "ledger.db"
    monkeypatch.setattr(store, "MIGRATIONS", store.MIGRATIONS[:1])  # an older Potluck
    with SqliteBackend(path) as old:
        Ledger(work.genesis, old).ingest(work.entries)
        assert old.applied_migrations == ["0001_entries"]
    monkeypatch.undo()
    with SqliteBackend(path) as new:
        assert new.applied_migrations == ["0002_kinds_and_slashes"]
        assert new.slashes_of(a.account) == [made]
        assert Ledger(work.genesis, new).account(a.account).slashed == 12
        indexes = {row[0] for row in new.db.execute("SELECT name FROM sqlite_master")}
        assert {"entries_kind_time", "entries_slash_account"} <= indexes
        assert "entries_kind" not in indexes
