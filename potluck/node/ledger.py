"""The node's ledger: its replica (genesis, SQLite store, replication) and its
own account on it.

`NodeLedger` is the node's one writer for its account: it records the usage
receipts clients sign when they close a session, receives the points sent to
the account (mints above all), and keeps the set of peers that a validator
convicted of a wrong output, which the node leaves out of the swarm views it
gives (a client fined for a false accusation is slashed, not convicted).

It also takes the tickets clients pay for priority or private routes
(`potluck.ledger.tickets`): `redeem_ticket` checks a ticket, stores it on the
replica and receives it (that receive marks it used), `settle_ticket` sends
back what a session did not use, and `refund_loop` sends back in full every
ticket to this node that expired unused. What was redeemed and refunded is
read back from the node's own chain, so a restart refunds nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from potluck.errors import (
    ConfigError,
    ForgedEntry,
    InsufficientBalance,
    InvalidEvidence,
    LedgerError,
    MalformedEntry,
    MissingDependency,
    NetworkError,
    NotValidator,
    ReplayedEntry,
    TicketError,
    TicketExpired,
    TicketForged,
    TicketMismatch,
    TicketUnfunded,
    TicketUsed,
    TicketWrongServer,
    WrongSwarm,
)
from potluck.ledger.core import Ledger
from potluck.ledger.economy import check_receipt_signature
from potluck.ledger.entry import TRANSFER_KINDS, Entry, decode_wire, signature_ok
from potluck.ledger.genesis import Genesis, load_key
from potluck.ledger.replica import PROTOCOL_LEDGER, Peer, Replica, ReplicaConfig
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.ledger.tickets import (
    Ticket,
    TicketLifecycle,
    check_ticket,
    refund_amount,
    refund_due,
    refund_memo,
    refunded_ticket,
)
from potluck.ledger.wallet import LocalReplica, Wallet
from potluck.node.config import NodeConfig
from potluck.p2p.announce import peer_id_of_account
from potluck.p2p.host import PotluckHost
from potluck.p2p.identity import Identity
from potluck.p2p.pubsub import Topics

log = logging.getLogger(__name__)

WALLET_FILE = "wallet.json"
MAX_QUEUED_RECEIPTS = 1000
RECEIVE_KINDS = TRANSFER_KINDS - {"ticket"}
"""What `receive_loop` takes: every transfer but tickets, which only `redeem_ticket`
(or a refund) takes."""
TICKET_SYNC_SECONDS = 5.0
"""How long `redeem_ticket` syncs with the replica's peers for a ticket whose
predecessor (or the client's grant) this replica does not hold yet."""
_SCAN_PAGE = 1000


class NodeLedger:
    """The node's account: receipts to record, transfers to receive, slashed peers,
    tickets to redeem, settle and refund.

    `clock` (seconds since the epoch) times the node's entries and ticket expiry."""

    def __init__(
        self,
        replica: Replica,
        identity: Identity,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replica = replica
        self.genesis = replica.ledger.genesis
        self.economy = self.genesis.economy
        self.swarm_id = replica.ledger.swarm_id
        self.identity = identity
        self.account = identity.public_bytes.hex()
        self.clock = clock
        self.wallet = Wallet(
            identity,
            self.swarm_id,
            LocalReplica(replica),
            validators=self.genesis.validators,
            state_file=data_dir / WALLET_FILE,
            clock=clock,
        )
        self._queue_in, self._queue_out = trio.open_memory_channel[dict[str, Any]](
            MAX_QUEUED_RECEIPTS
        )
        #: Accounts slashed on this replica, by points taken.
        self.slashed: dict[str, int] = {}
        #: Accounts a validator slashed for a wrong output, and their peer IDs.
        self.convicted: frozenset[str] = frozenset()
        self.convicted_peers: frozenset[str] = frozenset()
        self.receipts_recorded = 0
        self.receipts_refused = 0
        self.tickets_redeemed = 0
        self.tickets_rejected = 0
        self.refunds_sent = 0
        #: Tickets this process redeemed, rejected after receiving, settled or refunded.
        self.tickets: dict[str, TicketLifecycle] = {}
        self._redeeming: set[str] = set()  # being redeemed or refunded right now
        self._redeem_lock = trio.Lock()
        self._refund_lock = trio.Lock()
        # read from the node's own chain by `_scan`:
        self._scan_lock = trio.Lock()
        self._scanned = 0  # the seq read up to
        self._taken: dict[str, bool] = {}  # tickets received: was it a redemption?
        self._refunded: set[str] = set()  # tickets a refund send names
        self._owed: dict[str, Entry] = {}  # received to be refunded in full, not refunded yet

    def take_receipt(
        self,
        *,
        session: str,
        client: str,
        tokens: int,
        start: int,
        end: int,
        signature: str,
        claimed: int,
    ) -> bool:
        """Queue a client's receipt for recording if its signature is good and it
        claims no more tokens than were served; whether it was taken."""
        try:
            check_receipt_signature(
                signature,
                swarm=self.swarm_id,
                session=session,
                server=self.account,
                client=client,
                tokens=claimed,
                start=start,
                end=end,
            )
        except InvalidEvidence as exc:
            log.info("receipt not recorded: %s", exc)
            self.receipts_refused += 1
            return False
        if tokens != claimed or client == self.account or tokens == 0:
            self.receipts_refused += 1
            return False
        body = {
            "client": client,
            "session": session,
            "tokens": tokens,
            "blocks": end - start,
            "details": {"start": start, "end": end, "signature": signature},
        }
        try:
            self._queue_in.send_nowait(body)
        except trio.WouldBlock:
            self.receipts_refused += 1
            return False
        return True

    async def receipt_loop(self) -> None:
        """Write queued receipts into the node's chain, one at a time."""
        async for body in self._queue_out:
            try:
                await self.wallet.write("receipt", body)
                self.receipts_recorded += 1
            except (LedgerError, NetworkError, InvalidEvidence) as exc:
                self.receipts_refused += 1
                log.warning("could not record a receipt: %s", exc)

    async def receive_loop(self, interval: float) -> None:
        """Take every transfer (mints above all) waiting for the node's account, except
        tickets: `redeem_ticket` and `refund_expired` take those."""
        while True:
            try:
                taken = await self.wallet.receive(kinds=RECEIVE_KINDS)
                if taken:
                    log.info("received %d transfers", len(taken))
            except (LedgerError, NetworkError) as exc:
                log.info("receiving failed: %s", exc)
            await trio.sleep(interval)

    async def refresh_slashed(self) -> None:
        ledger = self.replica.ledger

        def read() -> tuple[dict[str, int], frozenset[str]]:
            convicted = frozenset(
                str(e.body["account"])
                for e in ledger.backend.by_kind("slash")
                if e.author in ledger.validators and e.body.get("reason") == "wrong_output"
            )
            return ledger.slashed(), convicted

        self.slashed, self.convicted = await self.replica.db(read)
        self.convicted_peers = frozenset(peer_id_of_account(a) for a in self.convicted)

    async def slashed_loop(self, interval: float) -> None:
        while True:
            await self.refresh_slashed()
            await trio.sleep(interval)

    # ---- tickets ----------------------------------------------------------

    async def redeem_ticket(
        self,
        wire: tuple[str, str],
        *,
        client: str,
        session: str,
        start: int,
        end: int,
        max_length: int,
    ) -> Ticket:
        """Take the ticket `wire` (an entry in wire form) that `client` shows to open
        `session` on blocks `[start, end)` for up to `max_length` tokens.

        In order: the entry must decode (`TicketMismatch`), be of this swarm
        and carry its author's signature (`TicketForged`) and pass
        `check_ticket` (against the tickets this account received and those
        being redeemed right now, so one ticket opens one session). Then it is
        submitted to the replica, which checks that it is funded
        (`TicketUnfunded`; a ticket whose predecessor is missing waits for one
        bounded sync with the peers), and received by the node's wallet: that
        receive is the durable mark that the ticket was used. A refused
        ticket writes nothing. A ticket that expired while it was being
        received is refused (`TicketExpired`) and sent back in full by
        `refund_expired`."""
        try:
            ticket = await self._redeem(
                wire, client=client, session=session, start=start, end=end, max_length=max_length
            )
        except TicketError as exc:
            self.tickets_rejected += 1
            log.info("ticket refused: %s", exc)
            raise
        self.tickets_redeemed += 1
        return ticket

    async def _redeem(
        self,
        wire: tuple[str, str],
        *,
        client: str,
        session: str,
        start: int,
        end: int,
        max_length: int,
    ) -> Ticket:
        ledger = self.replica.ledger
        try:
            entry = decode_wire(wire, max_bytes=self.replica.config.max_entry_bytes)
        except MalformedEntry as exc:
            raise TicketMismatch(f"the ticket is not a well-formed ledger entry: {exc}") from None
        if entry.swarm != self.swarm_id:
            raise TicketForged(f"ticket {entry.hash[:12]} was signed for another swarm")
        if not signature_ok(entry):
            raise TicketForged(f"ticket {entry.hash[:12]} is not signed by {entry.author[:12]}")
        async with self._redeem_lock:
            received = await self.replica.db(ledger.backend.receives_of, self.account, entry.hash)
            redeemed = self._redeeming | ({entry.hash} if received else set())
            ticket = check_ticket(
                entry,
                economy=self.economy,
                client=client,
                server=self.account,
                session=session,
                start=start,
                end=end,
                max_length=max_length,
                now_ms=self._now_ms(),
                redeemed=redeemed,
            )
            self._redeeming.add(ticket.hash)
        lifecycle = TicketLifecycle()  # offered
        try:
            try:
                await self._place(entry)
                taken = await self.wallet.receive(1, kinds=("ticket",), sources=(ticket.hash,))
            except (LedgerError, NetworkError) as exc:
                # the node's own ledger failed (not the ticket): refuse it, nothing was taken
                raise TicketError(f"this server cannot take tickets now: {exc}") from exc
            if not taken:
                if await self.replica.db(ledger.backend.receives_of, self.account, entry.hash):
                    raise TicketUsed(f"ticket {ticket.hash[:12]} was already used")
                raise TicketUnfunded(
                    f"the ledger holds ticket {ticket.hash[:12]}, but this node cannot receive"
                    " it yet; try again"
                )
            if refund_due(entry, self.economy, taken[0].time):
                self._taken[ticket.hash] = False
                self._owed[ticket.hash] = entry
                lifecycle.apply("reject")
                self.tickets[ticket.hash] = lifecycle
                raise TicketExpired(
                    f"ticket {ticket.hash[:12]} expired while it was redeemed; it is sent back"
                )
            self._taken[ticket.hash] = True
            lifecycle.apply("redeem")
            self.tickets[ticket.hash] = lifecycle
            return ticket
        finally:
            self._redeeming.discard(ticket.hash)

    async def _place(self, entry: Entry) -> None:
        """Store ticket `entry` on the replica, or raise the `TicketError` for why not."""
        for attempt in range(2):
            report = await self.replica.submit([entry])
            errors = [e for e in report.errors_for(entry.hash) if not isinstance(e, ReplayedEntry)]
            if not errors:
                return  # stored now, or held already: signed and funded either way
            error = errors[0]
            if isinstance(error, MissingDependency) and attempt == 0:
                # the client wrote through another node: catch up once, then look again
                with trio.move_on_after(TICKET_SYNC_SECONDS):
                    await self.replica.sync_all()
                continue
            raise _ticket_error(entry, error)

    async def settle_ticket(self, ticket: Ticket, served_tokens: int) -> int:
        """The session that `ticket` (redeemed here) bought ended after `served_tokens`:
        send the client back what it did not use (`refund_amount`) with the memo
        `refund <ticket hash>`. Returns the points sent back (0: nothing written).
        A ticket that is not redeemed here, or settled already, is a `TicketError`.
        If the send fails (a slashed server short of points), its error is raised
        and the ticket stays redeemed, so settling it may be tried again."""
        if ticket.server != self.account:
            raise TicketWrongServer(f"ticket {ticket.hash[:12]} pays another server")
        async with self._refund_lock:
            await self._scan()
            lifecycle = self.tickets.get(ticket.hash) or TicketLifecycle(
                self._state_on_chain(ticket.hash)
            )
            if not lifecycle.can("settle"):
                raise TicketError(
                    f"ticket {ticket.hash[:12]} is {lifecycle.state} here: it cannot be settled"
                )
            amount = refund_amount(ticket, self.economy, served_tokens)
            if amount and ticket.hash not in self._refunded:
                await self.wallet.send(ticket.client, amount, memo=refund_memo(ticket.hash))
                self._refunded.add(ticket.hash)
                self.refunds_sent += 1
            lifecycle.apply("settle")
            self.tickets[ticket.hash] = lifecycle
            return amount

    async def ticket_state(self, ticket_hash: str) -> str:
        """A ticket's state on this node (`TICKET_STATES`): what this process did with
        it, else what the node's chain says (a ticket never received is `offered`)."""
        await self._scan()
        known = self.tickets.get(ticket_hash)
        return known.state if known is not None else self._state_on_chain(ticket_hash)

    def _state_on_chain(self, ticket_hash: str) -> str:
        """A ticket's state as the node's own chain (read by `_scan`) tells it."""
        taken = self._taken.get(ticket_hash)
        if taken is None:
            return "offered"
        if ticket_hash in self._refunded:
            return "settled" if taken else "refunded"
        return "redeemed" if taken else "rejected"

    async def refund_expired(self) -> int:
        """Send back, in full, every ticket to this node that can no longer be redeemed
        (`refund_due`: it expired, or its terms can never pass), first receiving
        it; also any ticket received for that but not sent back yet (the node
        stopped in between). Returns the points sent back."""
        now = self._now_ms()
        receivable = await self.wallet.receivable()
        async with self._redeem_lock:
            due = {
                e.hash
                for e in receivable
                if refund_due(e, self.economy, now) and e.hash not in self._redeeming
            }
            self._redeeming |= due
        try:
            if due:
                await self.wallet.receive(len(due), kinds=("ticket",), sources=due)
        finally:
            self._redeeming -= due
        return await self._pay_owed()

    async def _pay_owed(self) -> int:
        paid = 0
        async with self._refund_lock:
            await self._scan()
            for ticket_hash, entry in list(self._owed.items()):
                if ticket_hash in self._refunded:
                    del self._owed[ticket_hash]
                    continue
                try:
                    await self.wallet.send(
                        entry.author, entry.amount, memo=refund_memo(ticket_hash)
                    )
                except (LedgerError, NetworkError) as exc:
                    log.warning("could not refund ticket %s: %s", ticket_hash[:12], exc)
                    continue
                del self._owed[ticket_hash]
                self._refunded.add(ticket_hash)
                self.refunds_sent += 1
                paid += entry.amount
                lifecycle = self.tickets.get(ticket_hash) or TicketLifecycle()
                if lifecycle.can("refund"):
                    lifecycle.apply("refund")
                self.tickets[ticket_hash] = lifecycle
        return paid

    async def refund_loop(self, interval: float) -> None:
        """Run `refund_expired` every `interval` seconds."""
        while True:
            try:
                await self.refund_expired()
            except (LedgerError, NetworkError) as exc:
                log.info("refunding tickets failed: %s", exc)
            await trio.sleep(interval)

    async def _scan(self) -> None:
        """Read the node's chain since the last scan: the tickets it received (and
        whether each receive was a redemption) and the refunds it sent."""
        backend = self.replica.ledger.backend

        def read(after: int) -> tuple[list[tuple[Entry, Entry | None]], int]:
            found: list[tuple[Entry, Entry | None]] = []
            while page := backend.chain(self.account, after, _SCAN_PAGE):
                for entry in page:
                    if entry.kind == "send":
                        found.append((entry, None))
                    elif entry.kind == "receive" and entry.source is not None:
                        source = backend.get(entry.source)
                        if source is not None and source.kind == "ticket":
                            found.append((entry, source))
                after = page[-1].seq
            return found, after

        async with self._scan_lock:
            found, self._scanned = await self.replica.db(read, self._scanned)
            for entry, source in found:
                if source is None:
                    named = refunded_ticket(entry)
                    if named is not None:
                        self._refunded.add(named)
                        self._owed.pop(named, None)
                    continue
                redeemed = not refund_due(source, self.economy, entry.time)
                self._taken[source.hash] = redeemed
                if not redeemed and source.hash not in self._refunded:
                    self._owed[source.hash] = source

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self, *, interval: float = 2.0) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.receipt_loop)
            nursery.start_soon(self.receive_loop, interval)
            nursery.start_soon(self.refund_loop, interval)
            nursery.start_soon(self.slashed_loop, interval)


def _ticket_error(entry: Entry, error: LedgerError) -> TicketError:
    """The ticket error for the replica's refusal of ticket `entry`."""
    name = f"ticket {entry.hash[:12]}"
    if isinstance(error, (ForgedEntry, WrongSwarm, MalformedEntry, NotValidator)):
        return TicketForged(f"the ledger refuses {name}: {error}")
    if isinstance(error, MissingDependency):
        return TicketUnfunded(
            f"the ledger cannot place {name} yet: this node lacks an entry it follows ({error})"
        )
    if isinstance(error, InsufficientBalance):
        return TicketUnfunded(f"{name} pays more than its client holds: {error}")
    return TicketUnfunded(f"the ledger refuses {name}: {error}")


@asynccontextmanager
async def open_replica(
    config: NodeConfig,
    host: PotluckHost,
    peers: Callable[[], Iterable[Peer]],
    *,
    topics: Topics | None = None,
    model_identity: str | None = None,
) -> AsyncIterator[Replica]:
    """Open the node's ledger, catch up with its peers, then replicate until closed.

    `topics` is the node's pubsub (started before its first connection), which
    carries new entries; without it entries are pushed over the ledger protocol.
    """
    assert config.genesis is not None
    genesis = Genesis.load(config.genesis)
    if model_identity is not None and model_identity != genesis.model_identity:
        raise ConfigError(
            f"this node serves model {model_identity[:12]}, but swarm {genesis.name!r} "
            f"runs {genesis.model_name} ({genesis.model_identity[:12]})"
        )
    if config.validator:
        assert config.validator_key is not None
        validator = load_key(config.validator_key)
        if not genesis.is_validator(validator.public_bytes.hex()):
            raise ConfigError(f"{config.validator_key} is not a validator key of this swarm")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    backend = await trio.to_thread.run_sync(SqliteBackend, config.data_dir / LEDGER_FILE)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(backend.close)
        executor = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="verify"))
        await trio.to_thread.run_sync(backend.claim_swarm, genesis.swarm_id)
        ledger = Ledger(genesis, backend, max_pending=config.ledger_max_pending, executor=executor)
        replica = Replica(
            ledger,
            host,
            ReplicaConfig(
                sync_interval=config.ledger_sync_interval,
                page_size=config.ledger_page,
                push_batch=config.ledger_page,
                request_timeout=config.request_timeout,
                progress=True,
            ),
            peers=peers,
            topics=topics,
        )
        host.set_handler(PROTOCOL_LEDGER, replica.handle)
        async with trio.open_nursery() as nursery:
            await nursery.start(replica.run)
            try:
                yield replica
            finally:
                nursery.cancel_scope.cancel()
