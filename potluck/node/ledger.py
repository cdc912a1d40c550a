"""The node's ledger: its replica (genesis, SQLite store, replication) and its
own account on it.

`NodeLedger` is the node's one writer for its account: it records the usage
receipts clients sign when they close a session, receives the points sent to
the account (mints above all), and keeps the set of peers that a validator
convicted of a wrong output, which the node leaves out of the swarm views it
gives (a client fined for a false accusation is slashed, not convicted).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from potluck.errors import ConfigError, InvalidEvidence, LedgerError, NetworkError
from potluck.ledger.core import Ledger
from potluck.ledger.economy import check_receipt_signature
from potluck.ledger.genesis import Genesis, load_key
from potluck.ledger.replica import PROTOCOL_LEDGER, Peer, Replica, ReplicaConfig
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.ledger.wallet import LocalReplica, Wallet
from potluck.node.config import NodeConfig
from potluck.p2p.announce import peer_id_of_account
from potluck.p2p.host import PotluckHost
from potluck.p2p.identity import Identity
from potluck.p2p.pubsub import Topics

log = logging.getLogger(__name__)

WALLET_FILE = "wallet.json"
MAX_QUEUED_RECEIPTS = 1000


class NodeLedger:
    """The node's account: receipts to record, transfers to receive, slashed peers."""

    def __init__(self, replica: Replica, identity: Identity, data_dir: Path) -> None:
        self.replica = replica
        self.genesis = replica.ledger.genesis
        self.swarm_id = replica.ledger.swarm_id
        self.identity = identity
        self.account = identity.public_bytes.hex()
        self.wallet = Wallet(
            identity,
            self.swarm_id,
            LocalReplica(replica),
            validators=self.genesis.validators,
            state_file=data_dir / WALLET_FILE,
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
        """Take every transfer (mints above all) waiting for the node's account."""
        while True:
            try:
                taken = await self.wallet.receive()
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

    async def run(self, *, interval: float = 2.0) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.receipt_loop)
            nursery.start_soon(self.receive_loop, interval)
            nursery.start_soon(self.slashed_loop, interval)


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
