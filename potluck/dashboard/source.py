"""Where the dashboard reads from: a `DashboardSource`.

The app needs two things: a way to run a read of the ledger (a function of
a `Ledger`, run in a worker thread because SQLite blocks), and the swarm
view (the servers' announcements). Two sources provide them:

- `NodeSource`, inside a running node: the swarm view comes from the node's
  peer table (a callable, so this module imports nothing of `potluck.node`)
  and the ledger from a second, **read-only** connection to the node's
  replica file. SQLite in WAL mode lets it read the last committed state
  while the replica writes, so a dashboard that polls never holds up the
  replica's one writer thread.
- `LedgerFileSource`: a ledger file and a fixed list of servers, for tests
  and for looking at a copied database without a swarm.

Both run ledger reads one at a time (a read-only `SqliteBackend` allows one
thread at a time) through `anyio.to_thread`, so the app works under trio (the
node) and asyncio alike.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread

from potluck.dashboard.data import UptimeTracker
from potluck.errors import PotluckError
from potluck.ledger.core import Ledger
from potluck.ledger.genesis import Genesis
from potluck.ledger.store import SqliteBackend
from potluck.wire import ServerInfo, SwarmView

__all__ = [
    "DashboardSource",
    "LedgerFileSource",
    "NoLedger",
    "NodeSource",
    "SwarmSnapshot",
    "open_node_source",
]

_T = TypeVar("_T")


class NoLedger(PotluckError):
    """The dashboard's node keeps no ledger (it runs without --genesis)."""


@dataclass(frozen=True)
class SwarmSnapshot:
    """The swarm as the source sees it at `now`: live announcements, the peers its
    ledger excluded, and since when each server has been seen without a gap."""

    now: float
    servers: Sequence[ServerInfo]
    excluded: Sequence[str]
    since: dict[str, float]


class DashboardSource(Protocol):
    """What `potluck.dashboard.app.create_app` reads."""

    @property
    def genesis(self) -> Genesis | None:
        """The swarm's genesis, or None for a node without a ledger."""

    @property
    def model(self) -> str:
        """The model's name (the genesis's, or the node's --model)."""

    @property
    def model_identity(self) -> str:
        """The model's identity hash ("" when unknown): servers of others are left out."""

    @property
    def num_blocks(self) -> int | None:
        """The model's block count, if known (else inferred from the announced spans)."""

    @property
    def node_id(self) -> str | None:
        """The peer ID of the node serving the dashboard, if any."""

    def swarm(self) -> SwarmSnapshot:
        """The current swarm view."""

    async def ledger_read(self, fn: Callable[[Ledger], _T]) -> _T:
        """`fn(ledger)` in a worker thread, one at a time; `NoLedger` without a ledger."""


class _LedgerReader:
    """A read-only ledger and the limiter that keeps its reads one at a time."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.ledger = ledger
        self._limiter: anyio.CapacityLimiter | None = None

    async def read(self, fn: Callable[[Ledger], _T]) -> _T:
        ledger = self.ledger
        if ledger is None:
            raise NoLedger("this node keeps no ledger: start it with --genesis")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, ledger, limiter=self._limiter)

    def close(self) -> None:
        if self.ledger is not None:
            backend = self.ledger.backend
            assert isinstance(backend, SqliteBackend)
            backend.close()


def open_readonly_ledger(path: Path, genesis: Genesis) -> Ledger:
    """A `Ledger` over a read-only connection to the file at `path`, checked to be
    `genesis`'s (`GenesisError` if not, `ConfigError` if it is no ledger)."""
    backend = SqliteBackend(path, readonly=True)
    try:
        backend.claim_swarm(genesis.swarm_id)
    except BaseException:
        backend.close()
        raise
    return Ledger(genesis, backend)


class LedgerFileSource:
    """A ledger file (read-only) and a fixed swarm view; see the module docstring.

    Without `ledger_path` (or `genesis`) the ledger endpoints answer 404
    `no_ledger`, as on a node started without --genesis."""

    def __init__(
        self,
        ledger_path: Path | None,
        genesis: Genesis | None,
        *,
        servers: Sequence[ServerInfo] = (),
        excluded: Sequence[str] = (),
        model: str | None = None,
        num_blocks: int | None = None,
        node_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._genesis = genesis
        ledger = None
        if ledger_path is not None and genesis is not None:
            ledger = open_readonly_ledger(ledger_path, genesis)
        self._reader = _LedgerReader(ledger)
        self.servers = list(servers)
        self.excluded = list(excluded)
        self._model = model if model is not None else (genesis.model_name if genesis else "")
        self._num_blocks = num_blocks
        self._node_id = node_id
        self.clock = clock
        self._started = clock()

    @property
    def genesis(self) -> Genesis | None:
        return self._genesis

    @property
    def model(self) -> str:
        return self._model

    @property
    def model_identity(self) -> str:
        return self._genesis.model_identity if self._genesis is not None else ""

    @property
    def num_blocks(self) -> int | None:
        return self._num_blocks

    @property
    def node_id(self) -> str | None:
        return self._node_id

    def swarm(self) -> SwarmSnapshot:
        since = {s.peer_id: self._started for s in self.servers}
        return SwarmSnapshot(self.clock(), list(self.servers), list(self.excluded), since)

    async def ledger_read(self, fn: Callable[[Ledger], _T]) -> _T:
        return await self._reader.read(fn)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> LedgerFileSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NodeSource:
    """A running node's swarm view and ledger replica; see the module docstring.

    `view` is the node's `swarm_view` (its live peers, convicted ones left
    out); `watch` samples it so that uptimes see gaps even while nobody
    looks at the dashboard."""

    def __init__(
        self,
        view: Callable[[], SwarmView],
        *,
        ledger: Ledger | None,
        genesis: Genesis | None,
        model: str,
        model_identity: str,
        num_blocks: int | None,
        node_id: str | None,
        clock: Callable[[], float] = time.time,
        uptime_gap: float = 60.0,
    ) -> None:
        self._view = view
        self._reader = _LedgerReader(ledger)
        self._genesis = genesis
        self._model = model
        self._model_identity = model_identity
        self._num_blocks = num_blocks
        self._node_id = node_id
        self.clock = clock
        self.uptime = UptimeTracker(uptime_gap)

    @property
    def genesis(self) -> Genesis | None:
        return self._genesis

    @property
    def model(self) -> str:
        return self._model

    @property
    def model_identity(self) -> str:
        return self._model_identity

    @property
    def num_blocks(self) -> int | None:
        return self._num_blocks

    @property
    def node_id(self) -> str | None:
        return self._node_id

    def swarm(self) -> SwarmSnapshot:
        view = self._view()
        now = self.clock()
        since = self.uptime.observe(now, (s.peer_id for s in view.servers))
        return SwarmSnapshot(now, list(view.servers), list(view.excluded), since)

    async def watch(self, interval: float = 5.0) -> None:
        """Sample the swarm view every `interval` seconds, for uptimes."""
        while True:
            self.swarm()
            await anyio.sleep(interval)

    async def ledger_read(self, fn: Callable[[Ledger], _T]) -> _T:
        return await self._reader.read(fn)

    def close(self) -> None:
        self._reader.close()


@asynccontextmanager
async def open_node_source(
    view: Callable[[], SwarmView],
    *,
    ledger_path: Path | None,
    genesis: Genesis | None,
    model: str,
    model_identity: str,
    num_blocks: int | None,
    node_id: str | None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[NodeSource]:
    """A `NodeSource` whose read-only ledger connection closes on exit. Open it after
    the node's replica (which creates and migrates the file)."""
    ledger = None
    if ledger_path is not None and genesis is not None:
        path, swarm = ledger_path, genesis
        ledger = await anyio.to_thread.run_sync(lambda: open_readonly_ledger(path, swarm))
    source = NodeSource(
        view,
        ledger=ledger,
        genesis=genesis,
        model=model,
        model_identity=model_identity,
        num_blocks=num_blocks,
        node_id=node_id,
        clock=clock,
    )
    try:
        yield source
    finally:
        source.close()
