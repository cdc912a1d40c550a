"""Wallets over a replica in this process (`LocalReplica`) and over libp2p
(`RemoteReplica`): writes, local refusals, and the rules that keep a wallet from
forking its own chain (lost acknowledgements, lagging replicas, the state file)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from potluck.errors import (
    AccountFrozen,
    InsufficientBalance,
    MissingDependency,
    NetworkError,
    NotValidator,
    SeqGap,
)
from potluck.ledger.core import AccountState, Ledger
from potluck.ledger.entry import Entry
from potluck.ledger.replica import PROTOCOL_LEDGER, Replica, ReplicaConfig
from potluck.ledger.wallet import AccountView, LocalReplica, RemoteReplica, ReplicaAccess, Wallet
from potluck.p2p.host import open_host
from potluck.p2p.identity import Identity
from potluck.testing.aio import run_bounded
from potluck.testing.ledger import LedgerWorkload, make_ledger, seeded_identity

KINDS = ("local", "remote")
TIMEOUT = 20.0
CONFIG = ReplicaConfig(request_timeout=10.0)

pytestmark = pytest.mark.parametrize("kind", KINDS)


@dataclass
class Site:
    """A replica (not running: wallets only read and submit) and a wallet's way to it."""

    replica: Replica
    access: ReplicaAccess

    @property
    def ledger(self) -> Ledger:
        return self.replica.ledger

    def chain(self, account: str) -> list[Entry]:
        return self.ledger.backend.chain(account, 0, 1000)


@asynccontextmanager
async def sites(kind: str, work: LedgerWorkload, n: int = 1) -> AsyncIterator[list[Site]]:
    """`n` replicas of `work`'s swarm on their own hosts, reached in the way `kind` says."""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_host(Identity.generate(), timeout=10))
        made = []
        for _ in range(n):
            host = await stack.enter_async_context(open_host(Identity.generate(), timeout=10))
            replica = Replica(make_ledger(work.genesis), host, CONFIG)
            host.set_handler(PROTOCOL_LEDGER, replica.handle)
            access: ReplicaAccess = (
                LocalReplica(replica)
                if kind == "local"
                else RemoteReplica(client, host.peer_id, host.addrs, timeout=10)
            )
            made.append(Site(replica, access))
        yield made


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_bounded(test, TIMEOUT)


class Recorder:
    """A `ReplicaAccess` that forwards to `inner` and records every submit.

    `lose_acks` submits that follow are stored (or, with `store_lost` false,
    never arrive) and then fail with `NetworkError`, as when a node dies
    before its acknowledgement reaches the wallet.
    """

    def __init__(self, inner: ReplicaAccess) -> None:
        self.inner = inner
        self.submitted: list[list[Entry]] = []
        self.lose_acks = 0
        self.store_lost = True

    async def account(self, account: str, history: int = 0, before_seq: int = 0) -> AccountView:
        return await self.inner.account(account, history, before_seq)

    async def submit(self, entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
        self.submitted.append(list(entries))
        if self.lose_acks:
            self.lose_acks -= 1
            if self.store_lost:
                await self.inner.submit(entries)
            raise NetworkError("the node went away before it acknowledged")
        return await self.inner.submit(entries)


@dataclass
class Swarm:
    work: LedgerWorkload
    validator: Identity
    alice: Identity
    bob: Identity

    @property
    def genesis_validators(self) -> tuple[str, ...]:
        return self.work.genesis.validators

    def wallet(
        self,
        identity: Identity,
        access: ReplicaAccess,
        *,
        state_file: Path | None = None,
        remember: int = 1000,
    ) -> Wallet:
        """A wallet that knows the validators, with a clock that ticks a second per read."""
        clock = itertools.count(1_800_000_000)
        return Wallet(
            identity,
            self.work.swarm,
            access,
            validators=self.genesis_validators,
            state_file=state_file,
            clock=lambda: float(next(clock)),
            remember=remember,
        )


@pytest.fixture
def swarm() -> Swarm:
    work = LedgerWorkload(validators=1, accounts=0, seed="wallet")
    return Swarm(
        work,
        work.validators[0],
        seeded_identity("wallet", "alice"),
        seeded_identity("wallet", "bob"),
    )


def account_of(identity: Identity) -> str:
    return identity.public_bytes.hex()


async def fund(swarm: Swarm, site: Site, identity: Identity, amount: int) -> Entry:
    """A grant to `identity`, written by the validator through `site`."""
    return await swarm.wallet(swarm.validator, site.access).grant(account_of(identity), amount)


def assert_linear(site: Site, account: str) -> None:
    """One entry per seq, 1..top, and no fork anywhere."""
    assert [e.seq for e in site.chain(account)] == list(range(1, len(site.chain(account)) + 1))
    assert site.ledger.forks() == []


# ---- the ordinary life of a wallet ------------------------------------------------


def test_grant_receive_send_balance_and_history(kind: str, swarm: Swarm) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work) as (site,):
            alice = swarm.wallet(swarm.alice, site.access)
            bob = swarm.wallet(swarm.bob, site.access)
            grant = await fund(swarm, site, swarm.alice, 100)
            assert (grant.kind, grant.to, grant.amount, grant.seq) == (
                "grant",
                alice.account,
                100,
                1,
            )
            assert await alice.receivable() == [grant]
            assert await alice.balance() == 0

            (received,) = await alice.receive()
            assert (received.kind, received.source, received.balance) == (
                "receive",
                grant.hash,
                100,
            )
            assert await alice.receivable() == []
            assert await alice.receive() == []  # nothing left to take

            sent = await alice.send(bob.account, 30, memo="lunch")
            assert (sent.seq, sent.prev, sent.balance) == (2, received.hash, 70)
            assert sent.body == {"to": bob.account, "amount": 30, "memo": "lunch"}
            assert await alice.balance() == 70
            state = await alice.state()
            assert (state.seq, state.head, state.frozen) == (2, sent.hash, False)
            assert await alice.history() == [sent, received]
            assert await alice.history(limit=1) == [sent]
            assert await alice.history(before_seq=2) == [received]

            assert await bob.receivable() == [sent]
            await bob.receive()
            assert await bob.balance() == 30
            assert site.ledger.balances() == {
                swarm.work.genesis.validators[0]: 0,
                alice.account: 70,
                bob.account: 30,
            }
            assert_linear(site, alice.account)

    run(main)


# ---- refused before anything is signed or sent --------------------------------------


def test_an_overdraft_is_refused_before_anything_is_submitted(kind: str, swarm: Swarm) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work) as (site,):
            await fund(swarm, site, swarm.alice, 10)
            access = Recorder(site.access)
            alice = swarm.wallet(swarm.alice, access)
            await alice.receive()
            before, submits = site.ledger.state(), len(access.submitted)
            with pytest.raises(InsufficientBalance):
                await alice.send(account_of(swarm.bob), 11)
            assert len(access.submitted) == submits
            assert site.ledger.state() == before
            sent = await alice.send(account_of(swarm.bob), 10)  # all of it is fine
            assert sent.balance == 0

    run(main)


def test_only_a_validator_grants(kind: str, swarm: Swarm) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work) as (site,):
            access = Recorder(site.access)
            alice = swarm.wallet(swarm.alice, access)
            with pytest.raises(NotValidator):
                await alice.grant(account_of(swarm.bob), 5)
            assert access.submitted == []
            # a wallet that was not told the validators learns it from the replica
            unaware = Wallet(swarm.alice, swarm.work.swarm, access)
            with pytest.raises(NotValidator):
                await unaware.grant(account_of(swarm.bob), 5)
            assert len(access.submitted) == 1
            assert site.ledger.state().entries == frozenset()
            # refused for good: the next write is not held up by the refused grant
            await fund(swarm, site, swarm.alice, 5)
            assert len(await unaware.receive()) == 1
            assert len(access.submitted) == 2

    run(main)


def test_a_forked_account_cannot_send(kind: str) -> None:
    work = LedgerWorkload(validators=1, accounts=3, seed="frozen")
    a, b, c = work.accounts
    work.grant_all(100)
    work.send(a, b, 40)
    work.fork(a, to=c)
    work.grant(work.validators[0], a, 50)  # something it could still receive

    async def main() -> None:
        async with sites(kind, work) as (site,):
            site.ledger.ingest(work.entries)  # relayed: both branches are stored
            access = Recorder(site.access)
            wallet = Wallet(a, work.swarm, access, validators=work.genesis.validators)
            state = await wallet.state()
            assert state.frozen and (state.seq, state.balance) == (1, 100)
            with pytest.raises(AccountFrozen):
                await wallet.send(b.account, 1)
            with pytest.raises(AccountFrozen):
                await wallet.receive()
            assert access.submitted == []

    run(main)


# ---- never fork your own chain ----------------------------------------------------


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "never-arrived"])
def test_an_entry_whose_ack_was_lost_is_resubmitted_unchanged_first(
    kind: str, swarm: Swarm, stored: bool
) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work) as (site,):
            await fund(swarm, site, swarm.alice, 100)
            access = Recorder(site.access)
            alice = swarm.wallet(swarm.alice, access)
            await alice.receive()

            access.lose_acks, access.store_lost = 1, stored
            with pytest.raises(NetworkError):
                await alice.send(account_of(swarm.bob), 10)
            (lost,) = access.submitted[-1]
            assert lost.seq == 2
            assert (len(site.chain(alice.account)) == 2) == stored

            sent = await alice.send(account_of(swarm.bob), 20)
            assert access.submitted[-2:] == [[lost], [sent]]
            assert [e.raw for e in access.submitted[-2]] == [lost.raw]
            assert (sent.seq, sent.prev, sent.balance) == (3, lost.hash, 70)
            assert site.chain(alice.account)[1:] == [lost, sent]
            assert_linear(site, alice.account)
            assert await alice.balance() == 70

    run(main)


def test_writing_through_a_replica_that_is_behind_sends_the_missing_entries(
    kind: str, swarm: Swarm
) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work, 2) as (ahead, behind):
            grant = await fund(swarm, ahead, swarm.alice, 100)
            behind.ledger.ingest([grant])
            alice = swarm.wallet(swarm.alice, ahead.access)
            await alice.receive()
            first = await alice.send(account_of(swarm.bob), 10)
            assert behind.chain(alice.account) == []

            recorder = Recorder(behind.access)
            alice.access = recorder
            sent = await alice.send(account_of(swarm.bob), 5)
            assert (sent.seq, sent.prev, sent.balance) == (3, first.hash, 85)
            assert [e.seq for e in recorder.submitted[-1]] == [1, 2, 3]
            assert_linear(behind, alice.account)

            # once the replicas exchange what they hold, neither sees a fork
            behind.ledger.ingest(ahead.chain(alice.account), gossip=True)
            ahead.ledger.ingest(behind.chain(alice.account), gossip=True)
            assert ahead.ledger.state() == behind.ledger.state()
            assert_linear(ahead, alice.account)
            assert ahead.ledger.account(alice.account).balance == 85

    run(main)


def test_a_replica_behind_what_the_wallet_remembers_is_refused(kind: str, swarm: Swarm) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work, 2) as (ahead, behind):
            grant = await fund(swarm, ahead, swarm.alice, 100)
            behind.ledger.ingest([grant])
            alice = swarm.wallet(swarm.alice, ahead.access, remember=1)
            await alice.receive()
            await alice.send(account_of(swarm.bob), 10)
            alice.access = behind.access
            with pytest.raises(NetworkError, match="behind"):
                await alice.send(account_of(swarm.bob), 5)
            assert behind.chain(alice.account) == []

    run(main)


def test_a_missing_dependency_keeps_the_entry_unacknowledged(kind: str, swarm: Swarm) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work, 2) as (ahead, behind):
            grant = await fund(swarm, ahead, swarm.alice, 100)  # `behind` lacks even this
            alice = swarm.wallet(swarm.alice, ahead.access)
            await alice.receive()
            await alice.send(account_of(swarm.bob), 10)

            recorder = Recorder(behind.access)
            alice.access = recorder
            with pytest.raises(MissingDependency):
                await alice.send(account_of(swarm.bob), 5)
            *carried, pending = recorder.submitted[-1]
            assert [e.seq for e in carried] == [1, 2] and pending.seq == 3
            assert behind.chain(alice.account) == []  # held back, not stored

            # still missing: the same entry again, nothing new signed
            with pytest.raises(SeqGap):
                await alice.send(account_of(swarm.bob), 6)
            assert recorder.submitted[-1] == [*carried, pending]

            # the grant arrives: the held-back entries are stored; the wallet
            # resubmits its entry unchanged, then writes the new one after it
            behind.ledger.ingest([grant])
            assert behind.chain(alice.account)[-1] == pending
            sent = await alice.send(account_of(swarm.bob), 7)
            assert recorder.submitted[-2:] == [[pending], [sent]]
            assert (sent.seq, sent.prev, sent.balance) == (4, pending.hash, 78)
            assert_linear(behind, alice.account)

    run(main)


def test_the_state_file_refuses_a_replica_behind_the_last_write(
    kind: str, swarm: Swarm, tmp_path: Path
) -> None:
    state_file = tmp_path / "alice.json"

    async def main() -> None:
        async with sites(kind, swarm.work, 2) as (ahead, behind):
            grant = await fund(swarm, ahead, swarm.alice, 100)
            behind.ledger.ingest([grant])
            first = swarm.wallet(swarm.alice, ahead.access, state_file=state_file)
            await first.receive()
            last = await first.send(account_of(swarm.bob), 10)
            assert state_file.exists()

            # a new wallet process with the same state file
            again = swarm.wallet(swarm.alice, behind.access, state_file=state_file)
            assert await again.balance() == 0  # reading is fine
            with pytest.raises(NetworkError, match="behind"):
                await again.send(account_of(swarm.bob), 5)
            with pytest.raises(NetworkError, match="behind"):
                await again.receive()
            assert behind.chain(again.account) == []

            # through a replica that is up to date it writes after its last entry
            again.access = ahead.access
            sent = await again.send(account_of(swarm.bob), 5)
            assert (sent.seq, sent.prev) == (3, last.hash)
            assert_linear(ahead, again.account)
            # and the file now names that entry for the next process
            later = swarm.wallet(swarm.alice, behind.access, state_file=state_file)
            behind.ledger.ingest(ahead.chain(again.account)[:2], gossip=True)
            with pytest.raises(NetworkError, match="seq 3"):
                await later.send(account_of(swarm.bob), 1)

            # another account's state file does not hold this one back
            bob = swarm.wallet(swarm.bob, behind.access, state_file=state_file)
            await fund(swarm, behind, swarm.bob, 1)
            assert await bob.receive()

    run(main)


def test_watch_yields_the_state_and_each_change(kind: str, swarm: Swarm) -> None:
    async def main() -> None:
        async with sites(kind, swarm.work) as (site,):
            await fund(swarm, site, swarm.alice, 100)
            alice = swarm.wallet(swarm.alice, site.access)
            watching = cast(AsyncGenerator[AccountState, None], alice.watch(interval=0.01))
            async with aclosing(watching) as states:
                first = await anext(states)
                assert (first.seq, first.balance) == (0, 0)
                await alice.receive()
                second = await anext(states)
                assert (second.seq, second.balance) == (1, 100)
                await alice.send(account_of(swarm.bob), 1)
                third = await anext(states)
                assert (third.seq, third.balance) == (2, 99)

    run(main)
