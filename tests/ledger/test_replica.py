"""Replicas on real libp2p hosts (127.0.0.1, one trio run): push, gossip, sync, forks,
bad pushes and account queries over `/potluck/ledger/1.0.0`."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from potluck.ledger.core import Ledger, LedgerState
from potluck.ledger.entry import Entry, decode_wire
from potluck.ledger.genesis import Genesis
from potluck.ledger.replica import PROTOCOL_LEDGER, Replica, ReplicaConfig
from potluck.ledger.store import open_ledger
from potluck.p2p.host import PotluckHost, open_host
from potluck.p2p.identity import Identity
from potluck.p2p.pubsub import Topics, open_pubsub
from potluck.testing.aio import run_bounded
from potluck.testing.ledger import LedgerWorkload, make_ledger
from potluck.wire import (
    AccountReply,
    AccountRequest,
    ErrorReply,
    LedgerAck,
    LedgerPush,
    Message,
)

TIMEOUT = 20.0
"""Seconds any one test may take in trio (most take well under one)."""
CONFIG = ReplicaConfig(sync_interval=60.0, push_delay=0.01, request_timeout=10.0)
"""No periodic sync while a test runs: whatever arrives came by push, gossip or a sync the
test asked for."""


def wires(entries: Iterable[Entry]) -> tuple[tuple[str, str], ...]:
    return tuple((raw, sig) for raw, sig in (e.wire() for e in entries))


@dataclass
class Node:
    host: PotluckHost
    replica: Replica
    topics: Topics | None
    listed: bool = False

    @property
    def ledger(self) -> Ledger:
        return self.replica.ledger

    @property
    def peer(self) -> tuple[str, tuple[str, ...]]:
        return self.host.peer_id, tuple(self.host.addrs)

    async def state(self) -> LedgerState:
        """The replica's state, read on its database thread (never beside a write)."""
        return await self.replica.db(self.ledger.state)

    async def counters(self) -> dict[str, int]:
        return await self.replica.db(self.ledger.counters)


@dataclass
class Net:
    """Replicas that list every other listed replica as a peer.

    Each replica lives in its own task with its host (and pubsub), all in one
    nursery: when the test ends or fails, they are cancelled together and the
    test's own exception is never lost in a host's teardown.
    """

    nursery: trio.Nursery
    config: ReplicaConfig
    pubsub: bool
    nodes: list[Node] = field(default_factory=list)
    sqlite_ledgers: list[Ledger] = field(default_factory=list)

    def sqlite(self, genesis: Genesis, path: Path) -> Ledger:
        """A ledger in a SQLite file, closed once every replica and host has stopped."""
        ledger = open_ledger(path, genesis)
        self.sqlite_ledgers.append(ledger)
        return ledger

    async def add(self, ledger: Ledger, *, start: bool = True, listed: bool = True) -> Node:
        """A replica of `ledger` on a new host; `start` runs it (`Replica.run` catches up
        with the listed peers before it returns), `listed` makes it the others' peer."""
        node: Node = await self.nursery.start(self._serve, ledger, start, listed)
        return node

    async def _serve(self, ledger: Ledger, start: bool, listed: bool, *, task_status: Any) -> None:
        async with AsyncExitStack() as stack:
            host = await stack.enter_async_context(open_host(Identity.generate(), timeout=10))
            topics = await stack.enter_async_context(open_pubsub(host)) if self.pubsub else None

            def peers() -> list[tuple[str, tuple[str, ...]]]:
                return [n.peer for n in self.nodes if n.listed and n is not node]

            replica = Replica(ledger, host, self.config, peers=peers, topics=topics)
            host.set_handler(PROTOCOL_LEDGER, replica.handle)
            node = Node(host, replica, topics, listed)
            self.nodes.append(node)
            async with trio.open_nursery() as nursery:
                if start:
                    await nursery.start(replica.run)
                task_status.started(node)
                await trio.sleep_forever()


@asynccontextmanager
async def network(config: ReplicaConfig = CONFIG, *, pubsub: bool = False) -> AsyncIterator[Net]:
    sqlite_ledgers: list[Ledger] = []
    try:
        async with trio.open_nursery() as nursery:
            net = Net(nursery, config, pubsub, sqlite_ledgers=sqlite_ledgers)
            yield net
            nursery.cancel_scope.cancel()
    finally:
        for ledger in sqlite_ledgers:
            ledger.backend.close()  # type: ignore[attr-defined]


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_bounded(test, TIMEOUT)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not await check():
            await trio.sleep(0.02)


def activity(seed: str, n: int = 30) -> LedgerWorkload:
    work = LedgerWorkload(validators=2, accounts=4, seed=seed)
    work.grant_all(100)
    work.random_activity(n, random.Random(seed))
    return work


# ---- push and gossip ------------------------------------------------------------


def test_entries_submitted_at_one_replica_are_pushed_to_the_others(tmp_path: Path) -> None:
    work = activity("push")
    expected = {e.hash for e in work.entries}

    async def main() -> None:
        async with network() as net:
            ledgers = [
                make_ledger(work.genesis),
                net.sqlite(work.genesis, tmp_path / "b.db"),
                make_ledger(work.genesis),
            ]
            # started before they know each other: no sync can carry anything
            nodes = [await net.add(ledger, listed=False) for ledger in ledgers]
            for node in nodes:
                node.listed = True
            report = await nodes[0].replica.submit(work.entries)
            assert set(report.accepted) == set(work.entries) and not report.rejected

            async def everyone_has_it() -> bool:
                return all(s.entries == expected for s in [await n.state() for n in nodes])

            async def pushed_to_both() -> bool:
                return nodes[0].replica.stats["pushed"] == 2 * len(expected)

            await eventually(everyone_has_it)
            await eventually(pushed_to_both)
            for node in nodes:
                assert node.replica.stats["synced"] == 0
                assert "received.sync" not in await node.counters()
            states = [await n.state() for n in nodes]
            assert all(s == states[0] for s in states)

    run(main)


def test_entries_submitted_at_one_replica_are_gossiped_to_the_others() -> None:
    work = activity("gossip")
    first, later = work.entries[:8], work.entries[8:]
    expected = {e.hash for e in work.entries}

    async def main() -> None:
        async with network(pubsub=True) as net:
            # unlisted, so no sync can carry anything: the hosts only meet for pubsub
            nodes = [await net.add(make_ledger(work.genesis), listed=False) for _ in range(3)]
            for i, node in enumerate(nodes):
                for other in nodes[i + 1 :]:
                    await node.host.connect(other.host.addrs[0])
            topic = nodes[0].replica.topic

            async def meshed() -> bool:
                return all(n.topics is not None and n.topics.peers(topic) >= 1 for n in nodes)

            await eventually(meshed)
            await nodes[0].replica.submit(first)
            await eventually(lambda: has_all(nodes, {e.hash for e in first}))
            report = await nodes[0].replica.submit(later)
            assert len(report.accepted) == len(later)
            await eventually(lambda: has_all(nodes, expected))
            assert nodes[0].replica.stats["published"] == len(work.entries)
            assert nodes[0].replica.stats["pushed"] == 0  # with topics nothing is pushed
            for node in nodes[1:]:
                assert node.replica.stats["synced"] == 0
                assert node.replica.stats["gossiped"] == len(work.entries)
                assert (await node.counters())["received.gossip"] == len(work.entries)

    run(main)


async def has_all(nodes: list[Node], hashes: set[str]) -> bool:
    return all(hashes <= s.entries for s in [await n.state() for n in nodes])


# ---- sync -------------------------------------------------------------------------


def test_a_late_replica_catches_up_page_by_page_and_returns_what_it_wrote(
    tmp_path: Path,
) -> None:
    work = LedgerWorkload(validators=1, accounts=4, seed="late")
    a, b, c, d = work.accounts
    base = work.grant_all(100)
    online = [work.send(a, b, 1 + i) for i in range(6)] + [work.receive(b) for _ in range(6)]
    offline = [work.send(c, d, 1 + i) for i in range(5)] + [work.receive(d) for _ in range(5)]
    config = ReplicaConfig(sync_interval=60.0, push_delay=0.01, request_timeout=10.0, page_size=3)
    union = {e.hash for e in work.entries}

    async def main() -> None:
        async with network(config) as net:
            # two peers that only answer (not running: they never sync on their own, so
            # everything the late replica gains comes from its own sync)
            ledgers = [make_ledger(work.genesis), net.sqlite(work.genesis, tmp_path / "peer.db")]
            peers = []
            for ledger in ledgers:
                ledger.ingest(base + online)
                peers.append(await net.add(ledger, start=False))

            # the late replica has the base and entries written while it was away
            late_ledger = net.sqlite(work.genesis, tmp_path / "late.db")
            report = late_ledger.ingest(base + offline)
            assert len(report.accepted) == len(base + offline)
            late = await net.add(late_ledger)  # Replica.run syncs before it is started

            assert (await late.state()).entries == union
            assert late.replica.stats["synced"] == len(online) > config.page_size
            assert (await late.counters())["received.sync"] == len(online)
            # and it pushed back what it wrote, page by page, during the same sync
            for node in peers:
                assert (await node.state()).entries == union
            states = [await n.state() for n in net.nodes]
            assert all(s == states[0] for s in states)

            # syncing again changes nothing
            assert await late.replica.sync_with(*peers[0].peer) == 0
            assert await late.replica.sync_all() == 0

    run(main)


def test_a_fork_deeper_than_a_sync_page_reaches_both_replicas() -> None:
    work = LedgerWorkload(validators=1, accounts=3, seed="deep")
    x, y, z = work.accounts
    base = work.grant_all(1000)
    spends = [work.send(x, y, 1) for _ in range(9)]  # x: a receive, then seq 2..10
    _, double = work.fork(x, seq=6, to=z)
    chain = work.chains[x.account]
    config = ReplicaConfig(sync_interval=60.0, push_delay=0.01, request_timeout=10.0, page_size=3)

    async def main() -> None:
        async with network(config) as net:
            long_branch, short_branch = make_ledger(work.genesis), make_ledger(work.genesis)
            long_branch.ingest(base + spends)  # x's seq 1..10
            short_branch.ingest(base + chain[:5] + [double])  # seq 1..5, the double at 6
            one = await net.add(long_branch, listed=False)
            two = await net.add(short_branch, listed=False)
            for _ in range(3):
                await one.replica.sync_with(*two.peer)
                await two.replica.sync_with(*one.peer)
            for node in (one, two):
                state = await node.state()
                assert state.entries == {e.hash for e in work.entries}
                assert len(state.forks) == 1

    run(main)


def test_a_fork_written_at_two_replicas_is_found_by_all_after_sync(tmp_path: Path) -> None:
    work = LedgerWorkload(validators=1, accounts=3, seed="fork")
    a, b, c = work.accounts
    base = work.grant_all(100)
    spend = work.send(a, b, 60)
    original, double = work.fork(a, to=c)
    assert original == spend

    async def main() -> None:
        async with network() as net:
            nodes = [
                await net.add(make_ledger(work.genesis), listed=False),
                await net.add(net.sqlite(work.genesis, tmp_path / "two.db"), listed=False),
                await net.add(make_ledger(work.genesis), listed=False),
            ]
            for node in nodes:
                await node.replica.submit(base)
            # each branch is new where it is written: both are accepted
            assert (await nodes[0].replica.submit([original])).accepted == [original]
            assert (await nodes[1].replica.submit([double])).accepted == [double]
            for node in nodes:
                assert not (await node.state()).forks

            assert await nodes[0].replica.sync_with(*nodes[1].peer) == 1
            assert await nodes[2].replica.sync_with(*nodes[0].peer) == 2

            async def all_found_it() -> bool:
                return all(len(s.forks) == 1 for s in [await n.state() for n in nodes])

            await eventually(all_found_it)
            states = [await n.state() for n in nodes]
            assert all(s == states[0] for s in states)
            (fork,) = states[0].forks
            assert (fork.author, fork.seq) == (a.account, 2)
            assert {fork.first, fork.second} == {original.hash, double.hash}
            for node in nodes:
                account = await node.replica.db(node.ledger.account, a.account)
                assert account.frozen and (account.seq, account.balance) == (1, 100)

    run(main)


# ---- requests over the wire -------------------------------------------------------


def test_a_garbage_entry_is_rejected_and_the_replica_keeps_serving() -> None:
    work = activity("garbage", 10)
    garbage = ("{not an entry", "ab" * 64)

    async def main() -> None:
        async with open_host(Identity.generate(), timeout=10) as client, network() as net:
            node = await net.add(make_ledger(work.genesis))
            peer_id, addrs = node.peer

            async def ask(msg: Message) -> Message:
                return await client.request(peer_id, PROTOCOL_LEDGER, msg, addrs=addrs)

            reply = await ask(LedgerPush((garbage,)))
            assert isinstance(reply, LedgerAck)
            assert reply.accepted == 0
            ((entry_hash, code, message),) = reply.rejected
            assert (entry_hash, code) == ("", "malformed_entry")
            assert "JSON" in message

            # the good entries of a push are stored beside the bad one
            reply = await ask(LedgerPush((garbage, *wires(work.entries))))
            assert isinstance(reply, LedgerAck)
            assert reply.accepted == len(work.entries)
            assert [r[1] for r in reply.rejected] == ["malformed_entry"]

            # a message that is no ledger request, and bytes that are no message
            reply = await ask(LedgerAck(0, ()))
            assert isinstance(reply, ErrorReply) and reply.code == "bad_message"
            stream = await client.open_stream(peer_id, PROTOCOL_LEDGER, addrs=addrs)
            await stream.send_bytes(b"\x00\x00\x00\x05junk!")
            answer = await stream.receive()
            await stream.close()
            assert isinstance(answer, ErrorReply) and answer.code == "bad_message"

            # still serving
            reply = await ask(AccountRequest(work.key(0)))
            assert isinstance(reply, AccountReply) and reply.seq >= 1
            assert (await node.state()).entries == {e.hash for e in work.entries}
            assert (await node.counters())["rejected.malformed_entry"] == 2

    run(main)


def test_account_requests_match_the_ledger(tmp_path: Path) -> None:
    work = LedgerWorkload(validators=1, accounts=4, seed="account")
    a, b, c, d = work.accounts
    work.grant_all(100)
    for amount in (5, 6, 7, 8):
        work.send(a, b, amount)
    work.receive(b)
    work.send(c, a, 30)
    work.send(d, a, 40)  # two transfers A has not received
    work.send(d, b, 10)
    work.fork(d, to=c)  # D double spends: frozen

    async def main() -> None:
        async with open_host(Identity.generate(), timeout=10) as client, network() as net:
            ledger = net.sqlite(work.genesis, tmp_path / "ledger.db")
            ledger.ingest(work.entries)
            node = await net.add(ledger)
            peer_id, addrs = node.peer

            async def ask(account: str, history: int = 0, before_seq: int = 0) -> AccountReply:
                request = AccountRequest(account, history, before_seq)
                reply = await client.request(peer_id, PROTOCOL_LEDGER, request, addrs=addrs)
                assert isinstance(reply, AccountReply)
                return reply

            chain = work.chains[a.account]  # seq 1..5: a receive, four sends
            reply = await ask(a.account, history=3)
            assert (reply.account, reply.seq, reply.head) == (a.account, 5, chain[-1].hash)
            assert reply.balance == 100 - 5 - 6 - 7 - 8 and not reply.frozen
            receivable = [decode_wire(item) for item in reply.receivable]
            assert receivable == await node.replica.db(node.ledger.receivable, a.account)
            assert {e.author for e in receivable} == {c.account, d.account}
            history = [decode_wire(item) for item in reply.history]
            assert [e.seq for e in history] == [5, 4, 3]
            assert history == chain[2:][::-1]

            reply = await ask(a.account, history=10, before_seq=3)
            assert [decode_wire(item) for item in reply.history] == chain[:2][::-1]
            assert (await ask(a.account)).history == ()

            state = await node.replica.db(node.ledger.account, d.account)
            reply = await ask(d.account, history=5)
            assert reply.frozen and state.frozen
            assert (reply.seq, reply.head, reply.balance) == (state.seq, state.head, state.balance)
            assert len(reply.history) == 4  # both entries at the forked seq are history

            stranger = Identity.generate().public_bytes.hex()
            reply = await ask(stranger, history=5)
            assert (reply.seq, reply.balance, reply.frozen) == (0, 0, False)
            assert reply.receivable == reply.history == ()

    run(main)
