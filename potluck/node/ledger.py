"""The node's ledger replica: genesis, SQLite store, replication and validator duties."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import trio

from potluck.errors import ConfigError
from potluck.ledger.core import Ledger
from potluck.ledger.genesis import Genesis, load_key
from potluck.ledger.replica import PROTOCOL_LEDGER, Peer, Replica, ReplicaConfig
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.node.config import NodeConfig
from potluck.p2p.host import PotluckHost
from potluck.p2p.pubsub import Topics


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
    validator = None
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
            if validator is not None:
                interval = config.checkpoint_interval or genesis.economy.checkpoint_seconds
                nursery.start_soon(replica.checkpoint_loop, validator, interval)
            try:
                yield replica
            finally:
                nursery.cancel_scope.cancel()
