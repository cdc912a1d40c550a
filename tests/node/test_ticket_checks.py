"""Tickets between real node processes: good ones buy `paid`, bad ones are caught.

A bootstrap keeping the ledger and two servers of a 6-block tiny Llama: `lax`
runs a session with a bad ticket at normal priority (saying why), `strict`
(`--bad-ticket refuse`) refuses it with the ticket's typed error. The client
speaks the inference protocol directly, so every kind of bad ticket can be
sent: used twice, expired, unfunded, forged, and for another server. No bad
ticket moves a point: the server's chain gains no entry for it.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from potluck.client.runtime import ClientRuntime
from potluck.errors import InsufficientBalance
from potluck.ledger.core import Ledger
from potluck.ledger.entry import Entry, make_entry
from potluck.ledger.genesis import Genesis, load_key
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.ledger.tickets import ticket_body, ticket_price
from potluck.ledger.wallet import RemoteReplica, Wallet
from potluck.p2p.announce import account_of_peer
from potluck.p2p.host import PotluckHost, parse_multiaddr
from potluck.p2p.identity import Identity
from potluck.p2p.protocols import PROTOCOL_INFERENCE
from potluck.testing.swarm import LocalSwarm, NodeProcess, ledger_genesis, with_wallet
from potluck.wire import (
    CloseSession,
    ErrorReply,
    InferenceStep,
    Message,
    OpenSession,
    SessionClosed,
    SessionOpened,
    StepResult,
)

pytestmark = pytest.mark.slow

FAST = ["--announce-interval", "0.5", "--announce-ttl", "3", "--ledger-sync-interval", "1"]
MAX_LENGTH = 32
HIDDEN = 64  # the tiny Llama's hidden size
PRICE = 7  # points per 1,000 token x blocks: 32 tokens x 6 blocks cost 2 points


@dataclasses.dataclass
class Setup:
    local: LocalSwarm
    genesis: Genesis
    boot: NodeProcess
    lax: NodeProcess
    strict: NodeProcess
    runtime: ClientRuntime
    wallet: Wallet


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("tickets")
    genesis_path, key = ledger_genesis(
        folder / "swarm", tiny_model, "tickets", spot_check_rate=0.0, priority_price=PRICE
    )
    genesis = Genesis.load(genesis_path)
    with LocalSwarm(folder / "nodes") as local:
        flags = ["--genesis", str(genesis_path), *FAST]
        boot = local.start_node("boot", extra=flags)
        lax = local.start_node("lax", model=str(tiny_model), blocks="0:6", wait=False, extra=flags)
        strict = local.start_node(
            "strict",
            model=str(tiny_model),
            blocks="0:6",
            wait=False,
            extra=[*flags, "--bad-ticket", "refuse", "--session-idle-timeout", "3"],
        )
        local.wait_ready(lax)
        local.wait_ready(strict)
        client = Identity.generate()
        with_wallet(
            boot.addr,
            genesis,
            load_key(key),
            lambda validator: validator.grant(client.public_bytes.hex(), 100),
        )
        runtime = ClientRuntime(client)
        try:
            wallet = _wallet(runtime.host, genesis, boot, client)
            runtime.run(wallet.receive)
            yield Setup(local, genesis, boot, lax, strict, runtime, wallet)
        finally:
            runtime.close()


def _wallet(host: PotluckHost, genesis: Genesis, node: NodeProcess, identity: Identity) -> Wallet:
    peer = str(parse_multiaddr(node.addr).get_peer_id())
    access = RemoteReplica(host, peer, [node.addr])
    return Wallet(identity, genesis.swarm_id, access, validators=genesis.validators)


def _run(setup: Setup, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return setup.runtime.run(fn, *args)


def buy(
    setup: Setup,
    server: NodeProcess,
    session: str,
    *,
    expires_in: float = 600.0,
    amount: int | None = None,
) -> Entry:
    price = ticket_price(PRICE, MAX_LENGTH, 6)
    expires = int((time.time() + expires_in) * 1000)
    body = ticket_body(
        server=account_of_peer(server.peer_id),
        session=session,
        start=0,
        end=6,
        tokens=MAX_LENGTH,
        cls="paid",
        amount=amount or price,
        expires_ms=expires,
    )

    async def write() -> Entry:
        return await setup.wallet.ticket(
            body["to"], body["amount"], session=session, expires_ms=expires, details=body["details"]
        )

    entry: Entry = _run(setup, write)
    return entry


async def _open(host: PotluckHost, server: NodeProcess, session: str, ticket: Entry) -> Message:
    """Open a session with `ticket`, close it at once; the server's answer to the open."""
    stream = await host.open_stream(server.peer_id, PROTOCOL_INFERENCE, addrs=[server.addr])
    try:
        await stream.send(OpenSession(session, 0, 6, MAX_LENGTH, tuple(ticket.wire())))
        reply = await stream.receive()
        assert reply is not None
        if isinstance(reply, SessionOpened):
            await stream.send(CloseSession(session))
            assert isinstance(await stream.receive(), SessionClosed)
        return reply
    finally:
        await stream.close()


def open_with(setup: Setup, server: NodeProcess, session: str, ticket: Entry) -> Message:
    reply: Message = _run(setup, _open, setup.runtime.host, server, session, ticket)
    return reply


def chain_of(node: NodeProcess, genesis: Genesis, account: str) -> list[Entry]:
    with SqliteBackend(node.data_dir / LEDGER_FILE, readonly=True) as backend:
        return Ledger(genesis, backend).backend.chain(account, 0, 10_000)


def server_chain(setup: Setup, node: NodeProcess) -> list[Entry]:
    return chain_of(node, setup.genesis, account_of_peer(node.peer_id))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


Maker = Callable[[NodeProcess, str], Entry]
"""Builds the bad ticket to show `server` for a session id."""


def about(setup: Setup, server: NodeProcess, ticket: Entry) -> list[Entry]:
    """`server`'s entries that take or refund `ticket`."""
    return [
        e
        for e in server_chain(setup, server)
        if e.body.get("source") == ticket.hash or ticket.hash in str(e.body.get("memo", ""))
    ]


def assert_refused(setup: Setup, make: Maker, code: str, *, refunded: bool = False) -> None:
    """`lax` runs the session at normal priority saying why, `strict` refuses it with
    `code`; no points move: neither server redeems the ticket. With `refunded`, the
    ledger holds the ticket but it can never be used (expired): the server takes it
    back and refunds all of it, and nothing else."""
    shown = []
    for server in (setup.lax, setup.strict):
        session = secrets.token_hex(16)
        ticket = make(server, session)
        before = about(setup, server, ticket)  # a ticket used before has its entries
        reply = open_with(setup, server, session, ticket)
        if server is setup.lax:
            assert isinstance(reply, SessionOpened), reply
            assert reply.priority == "normal" and code in reply.note, reply.note
        else:
            assert isinstance(reply, ErrorReply) and reply.code == code, reply
        shown.append((server, ticket, before))
    for server, ticket, before in shown:
        if refunded:
            wait_for(
                lambda s=server, t=ticket: len(about(setup, s, t)) == 2,  # type: ignore[misc]
                20,
                "the refund",
            )
            take, refund = about(setup, server, ticket)
            assert take.kind == "receive" and refund.kind == "send"
            assert refund.body["amount"] == ticket.body["amount"]
            assert refund.body["to"] == setup.wallet.account
        else:
            time.sleep(0.5)  # anything a server wrote would be in its own replica by now
            assert about(setup, server, ticket) == before


def test_a_good_ticket_buys_paid_priority_and_unused_points_come_back(setup: Setup) -> None:
    session = secrets.token_hex(16)
    ticket = buy(setup, setup.lax, session)
    reply = open_with(setup, setup.lax, session, ticket)
    assert isinstance(reply, SessionOpened) and reply.priority == "paid", reply
    assert reply.note == ""

    def refund() -> Entry | None:
        return next(
            (
                e
                for e in server_chain(setup, setup.lax)
                if e.kind == "send" and ticket.hash in str(e.body.get("memo"))
            ),
            None,
        )

    # redeemed: the server received the ticket; closed without a step: all of it refunded
    wait_for(lambda: refund() is not None, 20, "the refund")
    chain = server_chain(setup, setup.lax)
    assert [e.kind for e in chain if e.body.get("source") == ticket.hash] == ["receive"]
    sent = refund()
    assert sent is not None
    assert sent.body["amount"] == ticket.body["amount"] and sent.body["to"] == setup.wallet.account


def test_a_ticket_used_twice_is_refused(setup: Setup) -> None:
    def used(server: NodeProcess, session: str) -> Entry:
        ticket = buy(setup, server, session)
        first = open_with(setup, server, session, ticket)
        assert isinstance(first, SessionOpened) and first.priority == "paid", first
        wait_for(  # the first session's refund, before the second try is watched
            lambda: any(
                ticket.hash in str(e.body.get("memo")) for e in server_chain(setup, server)
            ),
            20,
            "the first session's refund",
        )
        return ticket

    assert_refused(setup, used, "ticket_used")


def test_an_expired_ticket_is_refused(setup: Setup) -> None:
    assert_refused(
        setup,
        lambda server, session: buy(setup, server, session, expires_in=-5),
        "ticket_expired",
        refunded=True,
    )


def test_a_ticket_for_another_server_is_refused(setup: Setup) -> None:
    # paid to the bootstrap, shown to the servers
    assert_refused(
        setup, lambda server, session: buy(setup, setup.boot, session), "ticket_wrong_server"
    )


def test_an_unfunded_ticket_is_refused(setup: Setup) -> None:
    def unfunded(server: NodeProcess, session: str) -> Entry:
        state = _run(setup, setup.wallet.state)
        amount = state.balance + 50
        body = ticket_body(
            server=account_of_peer(server.peer_id),
            session=session,
            start=0,
            end=6,
            tokens=MAX_LENGTH,
            cls="paid",
            amount=amount,
            expires_ms=int((time.time() + 600) * 1000),
        )
        return make_entry(
            setup.runtime.identity,
            swarm=setup.genesis.swarm_id,
            seq=state.seq + 1,
            prev=state.head,
            time=int(time.time() * 1000),
            kind="ticket",
            body=body,
            balance=0,  # the ledger finds it would go below zero: no replica stores it
        )

    assert_refused(setup, unfunded, "ticket_unfunded")


def test_a_forged_ticket_is_refused(setup: Setup) -> None:
    def forged(server: NodeProcess, session: str) -> Entry:
        good = buy(setup, server, session)
        # the client's ticket with a signature by someone else's key
        thief = Identity.generate()
        signature = thief.sign(b"potluck/ledger/entry/v1\x00" + bytes.fromhex(good.hash))
        bad = dataclasses.replace(good, signature=signature)
        assert bad.wire()[0] == good.wire()[0] and bad.wire()[1] != good.wire()[1]
        return bad

    assert_refused(setup, forged, "ticket_forged")


def refund_of(setup: Setup, server: NodeProcess, ticket: Entry) -> Entry | None:
    return next((e for e in about(setup, server, ticket) if e.kind == "send"), None)


def test_a_dropped_session_gets_back_what_it_did_not_use(setup: Setup) -> None:
    session = secrets.token_hex(16)
    ticket = buy(setup, setup.lax, session)
    served = torch.randn(1, 1, HIDDEN)

    async def one_step_then_drop() -> None:
        host = setup.runtime.host
        lax = setup.lax
        stream = await host.open_stream(lax.peer_id, PROTOCOL_INFERENCE, addrs=[lax.addr])
        await stream.send(OpenSession(session, 0, 6, MAX_LENGTH, tuple(ticket.wire())))
        opened = await stream.receive()
        assert isinstance(opened, SessionOpened) and opened.priority == "paid"
        await stream.send(InferenceStep(session, 0, 0, served))
        assert isinstance(await stream.receive(), StepResult)
        await stream.reset()  # no CloseSession: the connection just goes

    _run(setup, one_step_then_drop)
    wait_for(lambda: refund_of(setup, setup.lax, ticket) is not None, 20, "the refund")
    refund = refund_of(setup, setup.lax, ticket)
    assert refund is not None
    used = ticket_price(PRICE, 1, 6)  # one token through six blocks
    assert refund.body["amount"] == ticket.body["amount"] - used == 1


def test_an_idle_session_expires_and_its_ticket_is_refunded(setup: Setup) -> None:
    session = secrets.token_hex(16)
    ticket = buy(setup, setup.strict, session)

    async def open_and_idle() -> None:
        host = setup.runtime.host
        strict = setup.strict
        stream = await host.open_stream(strict.peer_id, PROTOCOL_INFERENCE, addrs=[strict.addr])
        await stream.send(OpenSession(session, 0, 6, MAX_LENGTH, tuple(ticket.wire())))
        opened = await stream.receive()
        assert isinstance(opened, SessionOpened) and opened.priority == "paid"
        await trio.sleep(6)  # past --session-idle-timeout 3: the server drops it
        await stream.close()

    _run(setup, open_and_idle)
    wait_for(lambda: refund_of(setup, setup.strict, ticket) is not None, 20, "the refund")
    refund = refund_of(setup, setup.strict, ticket)
    assert refund is not None and refund.body["amount"] == ticket.body["amount"]


def test_a_client_without_points_cannot_buy_priority(setup: Setup, tiny_model: Path) -> None:
    from potluck.client import AutoDistributedModelForCausalLM

    genesis_path = setup.local.workdir.parent / "swarm" / "genesis.json"
    model = AutoDistributedModelForCausalLM.from_pretrained(
        tiny_model, initial_peers=[setup.boot.addr], genesis=genesis_path, route_timeout=20
    )
    try:
        assert model.wallet.balance() == 0
        prompt = torch.tensor([[1, 2, 3]])
        with pytest.raises(InsufficientBalance, match="costs"):
            model.generate(prompt, max_new_tokens=2, priority="high")
        out = model.generate(prompt, max_new_tokens=2)  # normal use stays free
        assert out.shape == (1, 5)
    finally:
        model.close()
