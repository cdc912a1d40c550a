"""A server node's tickets over a real `Replica` and SQLite: redeeming good tickets,
refusing bad ones without moving a point, settling the unused part, and sending
back tickets that expired unused, once, across restarts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from potluck.errors import (
    InsufficientBalance,
    NetworkError,
    TicketError,
    TicketExpired,
    TicketForged,
    TicketMismatch,
    TicketUnfunded,
    TicketUsed,
    TicketWrongServer,
)
from potluck.ledger.core import IngestReport, Ledger
from potluck.ledger.entry import DOMAIN, ZERO_HASH, Entry, canonical, make_entry
from potluck.ledger.genesis import Economy, Genesis
from potluck.ledger.replica import Replica, ReplicaConfig
from potluck.ledger.store import SqliteBackend, open_ledger
from potluck.ledger.tickets import Ticket, refund_memo, ticket_body
from potluck.ledger.wallet import AccountView, LocalReplica, ReplicaAccess, Wallet, author_entry
from potluck.node.ledger import NodeLedger
from potluck.p2p.identity import Identity
from potluck.testing.aio import run_bounded
from potluck.testing.ledger import make_genesis, seeded_identity

VALIDATOR = seeded_identity("node-tickets", "validator")
CLIENT = seeded_identity("node-tickets", "client")
SERVER = seeded_identity("node-tickets", "server")
OTHER = seeded_identity("node-tickets", "other")
ECONOMY = Economy(priority_price=10, private_price=25, ticket_seconds=600)
START = 1_900_000_000.0
"""The fake clock's start (seconds since the epoch)."""
SESSION = "session-1"
SPAN = (2, 6)
TOKENS = 100
PRICE = 4
"""100 tokens x 4 blocks at 10 points per 1,000 token x blocks."""
TIMEOUT = 20.0


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)


@dataclass
class Site:
    """One server's replica (SQLite) and its `NodeLedger`, a client with 1000 points."""

    replica: Replica
    node: NodeLedger
    client: Wallet
    validator: Wallet
    clock: Clock
    genesis: Genesis
    data_dir: Path

    @property
    def ledger(self) -> Ledger:
        return self.replica.ledger

    def restart(self) -> NodeLedger:
        """A new `NodeLedger` for the same account and replica, as after a restart."""
        self.node = NodeLedger(self.replica, SERVER, self.data_dir, clock=self.clock)
        return self.node

    async def balance(self, account: str) -> int:
        return (await self.replica.db(self.ledger.account, account)).balance

    async def snapshot(self) -> tuple[int, int, int]:
        """The client's and the server's balances, and how many entries are stored."""
        entries = await self.replica.db(self.ledger.backend.all_hashes)
        return await self.balance(CLIENT.account), await self.balance(SERVER.account), len(entries)

    def body(self, **changes: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "server": SERVER.account,
            "session": SESSION,
            "start": SPAN[0],
            "end": SPAN[1],
            "tokens": TOKENS,
            "cls": "paid",
            "amount": 10,
            "expires_ms": self.clock.ms() + 60_000,
        }
        fields.update(changes)
        return ticket_body(**fields)

    async def buy(self, **changes: Any) -> Entry:
        """A ticket the client writes through this replica (stored at once)."""
        made = self.body(**changes)
        return await self.client.ticket(
            made["to"],
            made["amount"],
            session=made["session"],
            expires_ms=made["expires"],
            details=made["details"],
        )

    async def sign(self, who: Identity = CLIENT, **changes: Any) -> Entry:
        """A ticket `who` signs and hands over, without writing it anywhere."""
        state = (await LocalReplica(self.replica).account(who.public_bytes.hex())).state
        made = self.body(**changes)
        return author_entry(
            who, self.genesis.swarm_id, state, "ticket", made, now_ms=self.clock.ms()
        )

    def forge(self, who: Identity, **changes: Any) -> Entry:
        """A ticket as `who`'s first entry, whatever `who` holds (so maybe unfunded)."""
        return make_entry(
            who,
            swarm=self.genesis.swarm_id,
            seq=1,
            prev=ZERO_HASH,
            time=self.clock.ms(),
            kind="ticket",
            body=self.body(**changes),
            balance=0,
        )

    async def collect(self) -> int:
        """The client takes what was sent back to it; returns its balance."""
        await self.client.receive()
        return await self.balance(CLIENT.account)

    async def redeem(self, ticket: Entry | tuple[str, str], **changes: Any) -> Ticket:
        wire = ticket if isinstance(ticket, tuple) else (ticket.wire()[0], ticket.wire()[1])
        args: dict[str, Any] = {
            "client": CLIENT.account,
            "session": SESSION,
            "start": SPAN[0],
            "end": SPAN[1],
            "max_length": TOKENS,
        }
        args.update(changes)
        return await self.node.redeem_ticket(wire, **args)


@asynccontextmanager
async def open_site(tmp_path: Path, economy: Economy = ECONOMY) -> AsyncIterator[Site]:
    genesis = dataclasses.replace(make_genesis([VALIDATOR]), economy=economy)
    ledger = open_ledger(tmp_path / "ledger.db", genesis)
    try:
        host = SimpleNamespace(peer_id="12D3KooWtickets", addrs=[])  # no peers: nothing to sync
        replica = Replica(ledger, cast(Any, host), ReplicaConfig())
        clock = Clock(START)
        node = NodeLedger(replica, SERVER, tmp_path, clock=clock)

        def wallet(who: Identity) -> Wallet:
            access = LocalReplica(replica)
            return Wallet(who, genesis.swarm_id, access, validators=genesis.validators, clock=clock)

        validator, client = wallet(VALIDATOR), wallet(CLIENT)
        await validator.grant(CLIENT.account, 1000)
        await client.receive()
        yield Site(replica, node, client, validator, clock, genesis, tmp_path)
    finally:
        cast(SqliteBackend, ledger.backend).close()


def run(tmp_path: Path, test: Callable[[Site], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_site(tmp_path) as site:
            await test(site)

    run_bounded(main, TIMEOUT)


def refunds(entries: Sequence[Entry], ticket: Entry) -> list[Entry]:
    return [
        e for e in entries if e.kind == "send" and e.body.get("memo") == refund_memo(ticket.hash)
    ]


async def server_chain(site: Site) -> list[Entry]:
    return await site.replica.db(site.ledger.backend.chain, SERVER.account, 0, 1000)


# ---- redeeming ------------------------------------------------------------------------


def test_a_good_ticket_is_redeemed_once(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy(amount=10)
        assert await site.snapshot() == (990, 0, 3)  # grant, receive, ticket
        ticket = await site.redeem(entry)
        assert ticket == Ticket.from_entry(entry)
        assert (ticket.client, ticket.server, ticket.amount) == (CLIENT.account, SERVER.account, 10)
        client, server, _ = await site.snapshot()
        assert (client, server) == (990, 10)
        (receive,) = await server_chain(site)
        assert (receive.kind, receive.source) == ("receive", entry.hash)
        assert await site.node.ticket_state(entry.hash) == "redeemed"
        before = await site.snapshot()
        with pytest.raises(TicketUsed):
            await site.redeem(entry)
        assert await site.snapshot() == before
        assert (site.node.tickets_redeemed, site.node.tickets_rejected) == (1, 1)
        # after a restart the ledger still says it was used
        site.restart()
        with pytest.raises(TicketUsed):
            await site.redeem(entry)
        assert await site.snapshot() == before

    run(tmp_path, test)


def test_a_ticket_the_replica_has_not_seen_is_stored_then_received(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.sign(cls="private", amount=PRICE * 25 // 10)  # 25 per 1,000: 10
        assert await site.snapshot() == (1000, 0, 2)  # grant, receive
        ticket = await site.redeem(entry)
        assert ticket.cls == "private"
        assert await site.snapshot() == (990, 10, 4)  # the ticket and the server's receive

    run(tmp_path, test)


def test_two_concurrent_opens_with_one_ticket_redeem_it_once(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.sign()
        outcomes: list[str] = []

        async def open_session() -> None:
            try:
                await site.redeem(entry)
                outcomes.append("redeemed")
            except TicketUsed:
                outcomes.append("used")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(open_session)
        assert sorted(outcomes) == ["redeemed", "used", "used"]
        assert (await site.snapshot())[:2] == (990, 10)

    run(tmp_path, test)


async def _expired(site: Site) -> tuple[Any, dict[str, Any]]:
    entry = await site.sign(expires_ms=site.clock.ms() + 60_000)
    site.clock.now += 60
    return entry, {}


async def _unfunded(site: Site) -> tuple[Any, dict[str, Any]]:
    state = await site.client.state()  # 1000 points
    body = site.body(amount=5000)
    entry = make_entry(
        CLIENT,
        swarm=site.genesis.swarm_id,
        seq=state.seq + 1,
        prev=state.head,
        time=site.clock.ms(),
        kind="ticket",
        body=body,
        balance=0,
    )
    return entry, {}


async def _unfunded_stranger(site: Site) -> tuple[Any, dict[str, Any]]:
    return site.forge(OTHER), {"client": OTHER.account}


async def _signed_by_another_key(site: Site) -> tuple[Any, dict[str, Any]]:
    entry = await site.sign()
    signature = OTHER.sign(DOMAIN + bytes.fromhex(entry.hash))
    return (entry.raw.decode(), signature.hex()), {}


async def _tampered(site: Site) -> tuple[Any, dict[str, Any]]:
    entry = await site.sign(amount=10)
    content = json.loads(entry.raw)
    content["body"]["amount"] = 20
    content["balance"] = 980
    return (canonical(content).decode(), entry.signature.hex()), {}


async def _another_author(site: Site) -> tuple[Any, dict[str, Any]]:
    return site.forge(OTHER), {}


async def _another_swarm(site: Site) -> tuple[Any, dict[str, Any]]:
    state = await site.client.state()
    other = make_genesis([VALIDATOR], name="elsewhere").swarm_id
    entry = author_entry(CLIENT, other, state, "ticket", site.body(), now_ms=site.clock.ms())
    return entry, {}


async def _another_server(site: Site) -> tuple[Any, dict[str, Any]]:
    return await site.sign(server=OTHER.account), {}


async def _another_session(site: Site) -> tuple[Any, dict[str, Any]]:
    return await site.sign(session="another"), {}


async def _longer_session(site: Site) -> tuple[Any, dict[str, Any]]:
    return await site.sign(), {"max_length": TOKENS + 1}


async def _underpaid(site: Site) -> tuple[Any, dict[str, Any]]:
    return await site.sign(amount=PRICE - 1), {}


async def _not_an_entry(site: Site) -> tuple[Any, dict[str, Any]]:
    return ("{not json", "00" * 64), {}


REFUSED: list[tuple[Callable[[Site], Awaitable[tuple[Any, dict[str, Any]]]], type[TicketError]]] = [
    (_expired, TicketExpired),
    (_unfunded, TicketUnfunded),
    (_unfunded_stranger, TicketUnfunded),
    (_signed_by_another_key, TicketForged),
    (_tampered, TicketForged),
    (_another_author, TicketForged),
    (_another_swarm, TicketForged),
    (_another_server, TicketWrongServer),
    (_another_session, TicketMismatch),
    (_longer_session, TicketMismatch),
    (_underpaid, TicketMismatch),
    (_not_an_entry, TicketMismatch),
]


@pytest.mark.parametrize(
    ("make", "error"), REFUSED, ids=[make.__name__.strip("_") for make, _ in REFUSED]
)
def test_a_refused_ticket_moves_no_points_and_writes_nothing(
    tmp_path: Path,
    make: Callable[[Site], Awaitable[tuple[Any, dict[str, Any]]]],
    error: type[TicketError],
) -> None:
    async def test(site: Site) -> None:
        ticket, changes = await make(site)
        before = await site.snapshot()
        other_before = await site.balance(OTHER.account)
        with pytest.raises(error):
            await site.redeem(ticket, **changes)
        assert await site.snapshot() == before
        assert await site.balance(OTHER.account) == other_before
        assert await server_chain(site) == []
        assert (site.node.tickets_redeemed, site.node.tickets_rejected) == (0, 1)

    run(tmp_path, test)


def test_a_ticket_written_through_another_node_is_placed_after_one_sync(
    tmp_path: Path,
) -> None:
    async def test(site: Site) -> None:
        # the client sent 5 points through another node: this replica lacks that entry,
        # which the ticket follows
        state = await site.client.state()
        body = {"to": OTHER.account, "amount": 5}
        elsewhere = author_entry(
            CLIENT, site.genesis.swarm_id, state, "send", body, now_ms=site.clock.ms()
        )
        after = dataclasses.replace(state, seq=elsewhere.seq, head=elsewhere.hash, balance=995)
        entry = author_entry(
            CLIENT, site.genesis.swarm_id, after, "ticket", site.body(), now_ms=site.clock.ms()
        )
        syncs: list[int] = []

        async def sync_all() -> int:
            syncs.append(1)
            report = await site.replica.db(lambda: site.ledger.ingest([elsewhere], gossip=True))
            return len(report.accepted)

        site.replica.sync_all = sync_all  # type: ignore[method-assign]
        await site.redeem(entry)
        assert syncs == [1]
        assert await site.snapshot() == (985, 10, 5)

    run(tmp_path, test)


def test_a_ticket_the_ledger_cannot_place_is_unfunded(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        state = await site.client.state()
        missing = dataclasses.replace(state, seq=state.seq + 1, head="ab" * 32)
        entry = author_entry(
            CLIENT, site.genesis.swarm_id, missing, "ticket", site.body(), now_ms=site.clock.ms()
        )
        syncs: list[int] = []

        async def sync_all() -> int:
            syncs.append(1)
            return 0

        site.replica.sync_all = sync_all  # type: ignore[method-assign]
        before = await site.snapshot()
        with pytest.raises(TicketUnfunded, match="cannot place"):
            await site.redeem(entry)
        assert syncs == [1]
        assert await site.snapshot() == before

    run(tmp_path, test)


def test_a_ticket_that_expires_while_it_is_redeemed_is_refused_and_sent_back(
    tmp_path: Path,
) -> None:
    async def test(site: Site) -> None:
        entry = await site.sign(expires_ms=site.clock.ms() + 1000)
        submit = site.replica.submit

        async def slow_submit(entries: Sequence[Entry]) -> IngestReport:
            report = await submit(entries)
            site.clock.now += 2  # the ticket expires before the node receives it
            return report

        site.replica.submit = slow_submit  # type: ignore[method-assign]
        with pytest.raises(TicketExpired, match="sent back"):
            await site.redeem(entry)
        site.replica.submit = submit  # type: ignore[method-assign]
        assert await site.node.ticket_state(entry.hash) == "rejected"
        assert await site.node.refund_expired() == 10
        assert await site.node.ticket_state(entry.hash) == "refunded"
        assert await site.collect() == 1000
        assert await site.balance(SERVER.account) == 0

    run(tmp_path, test)


def test_a_server_whose_wallet_fails_refuses_the_ticket_and_refunds_it_later(
    tmp_path: Path,
) -> None:
    async def test(site: Site) -> None:
        entry = await site.sign(expires_ms=site.clock.ms() + 60_000)

        async def broken(*args: Any, **kwargs: Any) -> list[Entry]:
            raise NetworkError("the replica went away")

        receive = site.node.wallet.receive
        site.node.wallet.receive = broken  # type: ignore[method-assign]
        with pytest.raises(TicketError, match="cannot take tickets now") as caught:
            await site.redeem(entry)
        assert caught.value.code == "bad_ticket"
        site.node.wallet.receive = receive  # type: ignore[method-assign]
        assert await server_chain(site) == []
        site.clock.now += 60
        assert await site.node.refund_expired() == 10
        assert await site.collect() == 1000

    run(tmp_path, test)


# ---- settling -------------------------------------------------------------------------


def test_settle_sends_back_the_unused_part_once(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy(amount=10)
        ticket = await site.redeem(entry)
        assert await site.node.settle_ticket(ticket, served_tokens=50) == 8  # 2 used
        assert await site.collect() == 998
        assert await site.balance(SERVER.account) == 2
        assert len(refunds(await server_chain(site), entry)) == 1
        assert await site.node.ticket_state(entry.hash) == "settled"
        with pytest.raises(TicketError, match="settled"):
            await site.node.settle_ticket(ticket, served_tokens=0)
        site.restart()
        assert await site.node.ticket_state(entry.hash) == "settled"  # read from the chain
        with pytest.raises(TicketError, match="settled"):
            await site.node.settle_ticket(ticket, served_tokens=0)
        assert len(refunds(await server_chain(site), entry)) == 1
        assert site.node.refunds_sent == 0  # the new process sent none
        # expiry sends nothing more back either
        site.clock.now += 3600
        assert await site.node.refund_expired() == 0
        assert (await site.snapshot())[:2] == (998, 2)

    run(tmp_path, test)


def test_settle_with_nothing_unused_writes_nothing(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        ticket = await site.redeem(await site.buy(amount=PRICE))
        before = await site.snapshot()
        assert await site.node.settle_ticket(ticket, served_tokens=TOKENS) == 0
        assert await site.snapshot() == before
        assert await site.node.ticket_state(ticket.hash) == "settled"
        assert site.node.refunds_sent == 0

    run(tmp_path, test)


def test_a_settle_that_cannot_pay_can_be_tried_again(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        ticket = await site.redeem(await site.buy(amount=10))
        slash = {"account": SERVER.account, "reason": "wrong_output", "amount": 100}
        await site.validator.write("slash", slash)
        with pytest.raises(InsufficientBalance):
            await site.node.settle_ticket(ticket, served_tokens=0)
        assert await site.node.ticket_state(ticket.hash) == "redeemed"
        await site.validator.grant(SERVER.account, 200)
        await site.node.wallet.receive(kinds={"grant"})
        assert await site.node.settle_ticket(ticket, served_tokens=0) == 10
        assert await site.node.ticket_state(ticket.hash) == "settled"
        assert await site.collect() == 1000

    run(tmp_path, test)


def test_settle_refuses_a_ticket_not_redeemed_here(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy()
        with pytest.raises(TicketError, match="offered"):
            await site.node.settle_ticket(Ticket.from_entry(entry), served_tokens=0)
        elsewhere = Ticket.from_entry(await site.sign(server=OTHER.account))
        with pytest.raises(TicketWrongServer):
            await site.node.settle_ticket(elsewhere, served_tokens=0)
        assert await server_chain(site) == []

    run(tmp_path, test)


# ---- refunds of tickets that expired unused ------------------------------------------


def test_an_expired_unredeemed_ticket_is_refunded_once_even_across_restarts(
    tmp_path: Path,
) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy(amount=10, expires_ms=site.clock.ms() + 60_000)
        assert await site.node.refund_expired() == 0  # not expired yet
        assert (await site.snapshot())[:2] == (990, 0)
        site.clock.now += 60
        assert await site.node.refund_expired() == 10
        assert await site.collect() == 1000
        assert await site.balance(SERVER.account) == 0
        assert await site.node.ticket_state(entry.hash) == "refunded"
        assert site.node.refunds_sent == 1
        assert await site.node.refund_expired() == 0
        site.restart()
        assert await site.node.refund_expired() == 0
        assert await site.node.ticket_state(entry.hash) == "refunded"
        assert len(refunds(await server_chain(site), entry)) == 1
        with pytest.raises(TicketExpired):
            await site.redeem(entry)

    run(tmp_path, test)


def test_a_redeemed_ticket_is_not_refunded_when_it_expires(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy(amount=10, expires_ms=site.clock.ms() + 60_000)
        await site.redeem(entry)
        site.clock.now += 3600
        assert await site.node.refund_expired() == 0
        site.restart()
        assert await site.node.refund_expired() == 0
        assert (await site.snapshot())[:2] == (990, 10)

    run(tmp_path, test)


def test_a_ticket_taken_back_but_not_refunded_is_refunded_after_a_restart(
    tmp_path: Path,
) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy(amount=10, expires_ms=site.clock.ms() + 60_000)
        site.clock.now += 60
        # the node took the expired ticket back, then stopped before sending it
        (taken,) = await site.node.wallet.receive(kinds=("ticket",))
        assert taken.source == entry.hash
        assert (await site.snapshot())[:2] == (990, 10)
        site.restart()
        assert await site.node.ticket_state(entry.hash) == "rejected"  # taken, not redeemed
        assert await site.node.refund_expired() == 10
        assert await site.collect() == 1000
        assert await site.balance(SERVER.account) == 0
        assert await site.node.refund_expired() == 0

    run(tmp_path, test)


def test_a_ticket_that_can_never_be_redeemed_is_sent_back_at_once(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        bad = site.body(amount=7)
        bad["details"] = {"class": "gold"}
        entry = await site.client.ticket(
            SERVER.account, 7, session=SESSION, expires_ms=bad["expires"], details=bad["details"]
        )
        underpaid = await site.buy(amount=PRICE - 1)
        good = await site.buy(amount=10)
        assert await site.node.refund_expired() == 7 + PRICE - 1
        assert await site.node.ticket_state(entry.hash) == "refunded"
        assert await site.node.ticket_state(underpaid.hash) == "refunded"
        assert await site.node.ticket_state(good.hash) == "offered"
        assert await site.collect() == 990
        assert await site.balance(SERVER.account) == 0

    run(tmp_path, test)


def test_a_slashed_server_short_of_points_refunds_once_it_has_them(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        entry = await site.buy(amount=10, expires_ms=site.clock.ms() + 60_000)
        slash = {"account": SERVER.account, "reason": "wrong_output", "amount": 100}
        await site.validator.write("slash", slash)
        site.clock.now += 60
        assert await site.node.refund_expired() == 0  # taken back, but 10 - 100 is not enough
        assert await site.node.ticket_state(entry.hash) == "rejected"
        await site.validator.grant(SERVER.account, 200)
        await site.node.wallet.receive(kinds={"grant"})
        assert await site.node.refund_expired() == 10
        assert await site.node.refund_expired() == 0
        assert await site.collect() == 1000
        assert len(refunds(await server_chain(site), entry)) == 1

    run(tmp_path, test)


def test_the_node_loops_take_transfers_and_refund_tickets_but_leave_live_ones(
    tmp_path: Path,
) -> None:
    async def test(site: Site) -> None:
        await site.validator.grant(SERVER.account, 50)
        live = await site.buy(amount=10, expires_ms=site.clock.ms() + 120_000)
        dead = await site.buy(amount=20, expires_ms=site.clock.ms() + 60_000)
        site.clock.now += 60
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: site.node.run(interval=0.01))
            while site.node.refunds_sent < 1 or await site.balance(SERVER.account) < 50:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert await site.snapshot() == (970, 50, 8)  # the refund is not collected yet
        assert await site.collect() == 990
        receivable = await site.node.wallet.receivable()
        assert [e.hash for e in receivable] == [live.hash]
        assert await site.node.ticket_state(dead.hash) == "refunded"
        assert (await site.redeem(live)).hash == live.hash

    run(tmp_path, test)


# ---- the wallet -----------------------------------------------------------------------


class Counting:
    """A `ReplicaAccess` that counts submits."""

    def __init__(self, inner: ReplicaAccess) -> None:
        self.inner = inner
        self.submits = 0

    async def account(self, account: str, history: int = 0, before_seq: int = 0) -> AccountView:
        return await self.inner.account(account, history, before_seq)

    async def submit(self, entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
        self.submits += 1
        return await self.inner.submit(entries)


def test_a_wallet_refuses_a_ticket_it_cannot_pay_before_signing(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        access = Counting(LocalReplica(site.replica))
        wallet = Wallet(CLIENT, site.genesis.swarm_id, access, clock=site.clock)
        made = site.body(amount=1001)
        with pytest.raises(InsufficientBalance, match="cannot ticket 1001 points"):
            await wallet.ticket(SERVER.account, 1001, session=SESSION, expires_ms=made["expires"])
        assert access.submits == 0
        entry = await wallet.ticket(SERVER.account, 1000, session="s", expires_ms=5)
        assert (entry.kind, entry.balance, access.submits) == ("ticket", 0, 1)
        assert dict(entry.body) == {
            "to": SERVER.account,
            "amount": 1000,
            "session": "s",
            "expires": 5,
        }

    run(tmp_path, test)


def test_a_wallet_receives_only_the_kinds_and_sources_asked(tmp_path: Path) -> None:
    async def test(site: Site) -> None:
        first = await site.validator.grant(SERVER.account, 1)
        second = await site.validator.grant(SERVER.account, 2)
        ticket = await site.buy()
        wallet = site.node.wallet
        assert [e.source for e in await wallet.receive(sources={second.hash})] == [second.hash]
        assert [e.source for e in await wallet.receive(kinds={"grant", "send"})] == [first.hash]
        assert await wallet.receive(kinds=("send",)) == []
        assert [e.source for e in await wallet.receive()] == [ticket.hash]
        assert await site.balance(SERVER.account) == 13

    run(tmp_path, test)
