"""A node's ledger replica on the network: push, anti-entropy sync, checkpoints.

`Replica` wraps a `Ledger` (normally over `SqliteBackend`) and moves entries
between peers over the `/potluck/ledger/1.0.0` protocol (messages in
`potluck.wire`, spec in docs/ledger.md):

- **Push.** Entries written here (by a validator, or by a wallet that
  submitted them to this node) are batched and published as `LedgerPush`
  messages on the swarm's GossipSub topic `/potluck/ledger/<swarm_id>`,
  which carries them to every subscribed node (`potluck.p2p.pubsub`).
  Without pubsub (`topics=None`) they are pushed over the ledger protocol
  to up to `push_fanout` peers, which push on what was new to them.
- **Sync.** On start, when a peer is first met, when a push left a gap, and
  every `sync_interval` seconds, the replica sends its per-author summary
  (`LedgerSync`); the peer answers with the entries we lack, page by page
  (`potluck.ledger.sync.plan_send`), and its own summary, from which we push
  back what it lacks. Nothing depends on a push arriving.
- **Peers.** Ledger peers are the node's initial peers and known servers,
  every peer that syncs with us (its `LedgerSync.addrs`), and the peers
  others list in their replies.

All SQLite work runs in `trio.to_thread` behind a one-slot limiter, so there
is exactly one writer and handlers keep reading their streams meanwhile.
"""

from __future__ import annotations

import functools
import logging
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from potluck.errors import (
    LedgerError,
    MalformedEntry,
    MessageError,
    NetworkError,
    PotluckError,
    WireError,
)
from potluck.ledger.core import IngestReport, Ledger
from potluck.ledger.entry import VALIDATOR_KINDS, Entry, decode_wire
from potluck.ledger.sync import (
    SummaryRow,
    missing_estimate,
    plan_send,
    rows_from_wire,
    summary_rows,
)
from potluck.p2p.framed import FramedStream
from potluck.p2p.host import PotluckHost
from potluck.p2p.pubsub import MAX_PUBLISH_BYTES, Topics
from potluck.wire import (
    MAX_LEDGER_ENTRIES,
    AccountReply,
    AccountRequest,
    ErrorReply,
    LedgerAck,
    LedgerPush,
    LedgerSync,
    LedgerSyncReply,
    Message,
    decode_message,
    encode_message,
    expect,
)

log = logging.getLogger(__name__)

PROTOCOL_LEDGER = "/potluck/ledger/1.0.0"
MAX_RECEIVABLE = 1000
MAX_SLASHED = 2**63 - 1
"""`AccountReply.slashed` is an int64 on the wire; a larger debt is reported as this."""
_T = TypeVar("_T")

Peer = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class ReplicaConfig:
    """Limits and intervals of a replica (the node's --ledger-* flags)."""

    sync_interval: float = 10.0
    page_size: int = 2000
    push_fanout: int = 8
    push_batch: int = 1000
    push_delay: float = 0.05
    request_timeout: float = 30.0
    max_entry_bytes: int = 256 * 1024
    max_sync_pages: int = 1000
    page_bytes: int = 8 * 2**20
    """A sync page or push-back stops growing at this many bytes of entries."""
    progress: bool = False


class Replica:
    """A ledger replica speaking the ledger protocol; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        host: PotluckHost,
        config: ReplicaConfig = ReplicaConfig(),
        *,
        peers: Callable[[], Iterable[Peer]] = lambda: (),
        topics: Topics | None = None,
    ) -> None:
        self.ledger = ledger
        self.topics = topics
        self.topic = f"/potluck/ledger/{ledger.swarm_id}"
        self.host = host
        self.config = config
        self._peer_source = peers
        self._learnt: dict[str, tuple[str, ...]] = {}
        self._failures: dict[str, int] = {}
        self._db_limiter = trio.CapacityLimiter(1)
        self._outbox: list[tuple[Entry, str | None]] = []
        self._outbox_ready = trio.Event()
        self._wanted: dict[str, tuple[str, ...]] = {}
        self._sync_wake = trio.Event()
        self.changed = trio.Event()
        """Set (and replaced) whenever entries were accepted: for watchers."""
        self.stats: dict[str, int] = {
            "pushed": 0,
            "published": 0,
            "gossiped": 0,
            "synced": 0,
            "sync_rounds": 0,
        }

    # ---- database ---------------------------------------------------------

    async def db(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(*args)` on the database thread (one at a time)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._db_limiter)

    def _ingest_relayed(self, entries: Sequence[Entry]) -> IngestReport:
        """Ingest entries relayed by a peer: ones already held are duplicates, not replays."""
        return self.ledger.ingest(entries, gossip=True)

    def _ingest_submitted(self, entries: Sequence[Entry]) -> IngestReport:
        """Ingest a wallet's entries: its chain prefix may be held already; no forks."""
        return self.ledger.ingest(entries, gossip=True, submitted=True)

    def _rows(self) -> dict[str, SummaryRow]:
        backend = self.ledger.backend
        return summary_rows(backend.summary(), lambda a, top: min(backend.hashes_at(a, top)))

    def _plan_entries(
        self, theirs: dict[str, SummaryRow], limit: int, resume: dict[str, int] | None = None
    ) -> tuple[list[Entry], dict[str, int], dict[str, SummaryRow]]:
        """Up to `limit` entries the peer lacks, a fair share of each author's range.

        Every author gets room in every page: the peer's next missing entry
        in causal order is the next entry of some author's chain, so each
        page lets the peer store something, however entries depend on each
        other across chains. `resume` holds the cursors of the previous page
        (the last seq sent per unfinished range), so a range that starts at
        seq 1 (a fork, a diverged chain) moves on instead of resending the
        entries the peer already has. Returns the entries, the cursors of the
        ranges left unfinished (empty: nothing more) and my summary.
        """
        backend = self.ledger.backend
        mine = self._rows()
        plan = plan_send(mine, theirs, lambda h: backend.get(h) is not None)
        resume = resume or {}
        cursors = {author: max(after, resume.get(author, after)) for author, after in plan}
        open_ranges = [author for author, _ in plan]
        entries: list[Entry] = []
        size = 0
        while open_ranges and len(entries) < limit and size < self.config.page_bytes:
            share = max(1, (limit - len(entries)) // len(open_ranges))
            still_open = []
            for author in open_ranges:
                room = min(share, limit - len(entries))
                if room <= 0 or size >= self.config.page_bytes:
                    still_open.append(author)
                    continue
                chunk = backend.chain(author, cursors[author], room + 1)
                taken = 0
                for entry in chunk[:room]:
                    cost = len(entry.raw) + 2 * len(entry.signature)
                    if (entries or taken) and size + cost > self.config.page_bytes:
                        break
                    size += cost
                    taken += 1
                picked = chunk[:taken]
                if taken < len(chunk) and taken and chunk[taken].seq == chunk[taken - 1].seq:
                    # never split the entries of one seq (a fork) across pages: the cursor
                    # says "everything up to this seq was sent"
                    cut = chunk[taken - 1].seq
                    whole = [e for e in picked if e.seq != cut]
                    if whole:
                        picked = whole
                    else:
                        group = [backend.get(h) for h in backend.hashes_at(author, cut)]
                        picked = [e for e in group if e is not None]
                entries.extend(picked)
                if len(picked) < len(chunk) or (picked and picked[-1].seq != chunk[-1].seq):
                    still_open.append(author)
                if picked:
                    cursors[author] = picked[-1].seq
            open_ranges = still_open
        return entries, {author: cursors[author] for author in open_ranges}, mine

    # ---- local writes -----------------------------------------------------

    async def submit(self, entries: Sequence[Entry]) -> IngestReport:
        """Ingest entries written here (wallet, validator) and push what was accepted."""
        report = await self.db(self._ingest_submitted, list(entries))
        self._accepted(report, origin=None)
        return report

    def _accepted(self, report: IngestReport, origin: str | None, *, relay: bool = True) -> None:
        """Note accepted entries; with `relay`, queue them for pushing on (not to `origin`)."""
        if report.accepted and relay:
            self._outbox.extend((e, origin) for e in report.accepted)
            self._outbox_ready.set()
        if report.accepted:
            self.changed.set()
            self.changed = trio.Event()
        if report.forks:
            for fork in report.forks:
                log.warning("fork: account %s signed two entries at seq %d", fork.author, fork.seq)

    # ---- peers ------------------------------------------------------------

    def peers(self) -> dict[str, tuple[str, ...]]:
        found = dict(self._learnt)
        for peer_id, addrs in self._peer_source():
            found.setdefault(peer_id, tuple(addrs))
        found.pop(self.host.peer_id, None)
        return found

    def _learn(self, peer_id: str, addrs: Sequence[str]) -> None:
        if peer_id == self.host.peer_id or not addrs:
            return
        known = self._learnt.get(peer_id)
        self._learnt[peer_id] = tuple(addrs)
        if known is None:
            self.want_sync(peer_id, tuple(addrs))

    def want_sync(self, peer_id: str, addrs: tuple[str, ...]) -> None:
        self._wanted[peer_id] = addrs
        self._sync_wake.set()

    def _failed(self, peer_id: str, exc: BaseException) -> None:
        count = self._failures.get(peer_id, 0) + 1
        self._failures[peer_id] = count
        log.debug("ledger peer %s failed (%d): %s", peer_id, count, exc)
        if count >= 5:
            self._learnt.pop(peer_id, None)

    # ---- protocol handler -------------------------------------------------

    async def handle(self, stream: FramedStream) -> None:
        """Serve one request on a ledger stream."""
        payload = await stream.receive_bytes()
        if payload is None:
            return
        try:
            reply = await self._answer(decode_message(payload), stream.remote_peer)
        except (WireError, LedgerError) as exc:
            reply = ErrorReply.from_exception(exc)
        await stream.send(reply)

    async def _answer(self, msg: Message, peer: str) -> Message:
        if isinstance(msg, LedgerPush):
            return await self._on_push(msg, peer)
        if isinstance(msg, LedgerSync):
            self._learn(peer, msg.addrs)
            theirs = rows_from_wire(msg.summary)
            entries, cursors, mine = await self.db(
                self._plan_entries, theirs, msg.limit, dict(msg.cursors)
            )
            sample = list(self.peers().items())
            random.shuffle(sample)
            return LedgerSyncReply(
                entries=tuple(tuple(e.wire()) for e in entries),  # type: ignore[misc]
                summary=tuple(row.wire(a) for a, row in mine.items()),
                more=bool(cursors),
                peers=tuple(sample[:16]),
                cursors=tuple(cursors.items()),
            )
        if isinstance(msg, AccountRequest):
            return await self.db(self.account_reply, msg)
        raise MessageError(f"{type(msg).__name__} is not a request on {PROTOCOL_LEDGER}")

    async def _on_push(self, msg: LedgerPush, peer: str) -> LedgerAck:
        entries: list[Entry] = []
        rejected: list[tuple[str, str, str]] = []
        for item in msg.entries:
            try:
                entries.append(decode_wire(item, max_bytes=self.config.max_entry_bytes))
            except MalformedEntry as exc:
                rejected.append(("", exc.code, str(exc)))
        if rejected:
            await self.db(self.ledger.note, "rejected.malformed_entry", len(rejected))
        if msg.relay:
            report = await self.db(self._ingest_relayed, entries)
        else:
            report = await self.db(self._ingest_submitted, entries)
        self._accepted(report, origin=peer)
        if report.missing:
            addrs = self.peers().get(peer)
            if addrs:
                self.want_sync(peer, addrs)
        for entry, error in report.rejected:
            rejected.append(("" if entry is None else entry.hash, error.code, str(error)))
        return LedgerAck(
            accepted=len(report.accepted), rejected=tuple(rejected[:MAX_LEDGER_ENTRIES])
        )

    def account_reply(self, msg: AccountRequest) -> AccountReply:
        state = self.ledger.account(msg.account)
        receivable = self.ledger.receivable(msg.account)[:MAX_RECEIVABLE]
        history: list[Entry] = []
        if msg.history:
            top = self.ledger.backend.tips().get(msg.account, 0)
            below = min(msg.before_seq - 1, top) if msg.before_seq else top
            after = max(0, below - msg.history)
            history = [e for e in self.ledger.backend.chain(msg.account, after, 4 * msg.history)]
            history = sorted((e for e in history if e.seq <= below), key=lambda e: -e.seq)
            history = history[: msg.history]
        return AccountReply(
            account=msg.account,
            balance=state.balance,
            seq=state.seq,
            head=state.head,
            frozen=state.frozen,
            slashed=min(state.slashed, MAX_SLASHED),
            receivable=tuple(tuple(e.wire()) for e in receivable),  # type: ignore[misc]
            history=tuple(tuple(e.wire()) for e in history),  # type: ignore[misc]
        )

    # ---- outgoing ---------------------------------------------------------

    async def _request(self, peer_id: str, addrs: Sequence[str], msg: Message) -> Message:
        with trio.fail_after(self.config.request_timeout):
            reply = await self.host.request(peer_id, PROTOCOL_LEDGER, msg, addrs=addrs)
        if isinstance(reply, ErrorReply):
            raise reply.to_exception()
        return reply

    async def push_loop(self) -> None:
        """Send batches of newly accepted entries to up to `push_fanout` peers."""
        while True:
            await self._outbox_ready.wait()
            await trio.sleep(self.config.push_delay)  # let a burst gather into one batch
            batch, self._outbox = (
                self._outbox[: self.config.push_batch],
                self._outbox[self.config.push_batch :],
            )
            if not self._outbox:
                self._outbox_ready = trio.Event()
            if self.topics is not None:
                await self._publish([e for e, _ in batch])
                continue
            peers = list(self.peers().items())
            random.shuffle(peers)
            async with trio.open_nursery() as nursery:
                for peer_id, addrs in peers[: self.config.push_fanout]:
                    entries = [e for e, origin in batch if origin != peer_id]
                    if entries:
                        nursery.start_soon(self._push_to, peer_id, addrs, entries)

    async def _publish(self, entries: list[Entry]) -> None:
        """Publish entries on the swarm's ledger topic, split to fit the message limit."""
        assert self.topics is not None
        push = LedgerPush(tuple(tuple(e.wire()) for e in entries), relay=True)  # type: ignore[misc]
        message = encode_message(push)
        if len(message) > MAX_PUBLISH_BYTES and len(entries) > 1:
            half = len(entries) // 2
            await self._publish(entries[:half])
            await self._publish(entries[half:])
            return
        try:
            await self.topics.publish(self.topic, message)
        except Exception as exc:  # noqa: BLE001 - pubsub failures of any kind; sync covers
            log.warning("publishing %d entries failed: %s", len(entries), exc)
            return
        self.stats["published"] += len(entries)

    async def gossip_loop(self) -> None:
        """Ingest entries other nodes publish on the ledger topic."""
        assert self.topics is not None
        async for sender, data in self.topics.subscribe(self.topic):
            try:
                message = expect(decode_message(data), LedgerPush)
                entries = [
                    decode_wire(item, max_bytes=self.config.max_entry_bytes)
                    for item in message.entries
                ]
            except (WireError, LedgerError) as exc:
                log.info("bad ledger message from %s: %s", sender, exc)
                await self.db(self.ledger.note, "rejected.malformed_gossip")
                continue
            report = await self.db(self._ingest_relayed, entries)
            self._accepted(report, origin=sender, relay=False)  # gossipsub relays it
            self.stats["gossiped"] += len(report.accepted)
            if report.accepted:
                await self.db(self.ledger.note, "received.gossip", len(report.accepted))
            if report.missing:
                addrs = self.peers().get(sender)
                if addrs:
                    self.want_sync(sender, addrs)

    async def _push_to(self, peer_id: str, addrs: tuple[str, ...], entries: list[Entry]) -> None:
        try:
            reply = await self._request(
                peer_id,
                addrs,
                LedgerPush(tuple(tuple(e.wire()) for e in entries), relay=True),  # type: ignore[misc]
            )
        except (PotluckError, trio.TooSlowError) as exc:
            self._failed(peer_id, exc)
            return
        self._failures.pop(peer_id, None)
        self.stats["pushed"] += len(entries)
        if isinstance(reply, LedgerAck) and any(
            code in ("seq_gap", "unknown_source") for _, code, _ in reply.rejected
        ):
            self.want_sync(peer_id, addrs)  # it lacks history: let sync fill it in

    async def sync_with(self, peer_id: str, addrs: tuple[str, ...]) -> int:
        """Pull what `peer_id` has and we lack, then push what it lacks. Returns entries gained."""
        gained = 0
        theirs: dict[str, SummaryRow] = {}
        cursors: tuple[tuple[str, int], ...] = ()
        progress = None
        try:
            for page in range(self.config.max_sync_pages):
                mine = await self.db(self._rows)
                request = LedgerSync(
                    summary=tuple(row.wire(a) for a, row in mine.items()),
                    limit=self.config.page_size,
                    addrs=tuple(self.host.addrs),
                    cursors=cursors,
                )
                reply = await self._request(peer_id, addrs, request)
                if not isinstance(reply, LedgerSyncReply):
                    raise NetworkError(f"{peer_id} answered a sync with {type(reply).__name__}")
                theirs = rows_from_wire(reply.summary)
                for other, other_addrs in reply.peers:
                    if other not in self._learnt and other != self.host.peer_id:
                        self._learn(other, other_addrs)
                if page == 0:
                    total = missing_estimate(mine, theirs)
                    if self.config.progress and total >= 1000 and sys.stderr.isatty():
                        progress = _SyncProgress(peer_id, total)
                entries = [
                    decode_wire(item, max_bytes=self.config.max_entry_bytes)
                    for item in reply.entries
                ]
                report = await self.db(self._ingest_relayed, entries)
                self._accepted(report, origin=peer_id, relay=self.topics is None)
                gained += len(report.accepted)
                if progress is not None:
                    progress.advance(len(report.accepted))
                cursors = reply.cursors
                if not reply.more or not reply.entries:
                    break  # each page resumes where the last one stopped: `more` ends
            await self._push_back(peer_id, addrs, theirs)
        except (PotluckError, trio.TooSlowError) as exc:
            self._failed(peer_id, exc)
            return gained
        finally:
            if progress is not None:
                progress.close()
        self._failures.pop(peer_id, None)
        self.stats["synced"] += gained
        if gained:
            await self.db(self.ledger.note, "received.sync", gained)
        self.stats["sync_rounds"] += 1
        if gained:
            log.info("synced %d entries from %s", gained, peer_id)
        return gained

    async def _push_back(
        self, peer_id: str, addrs: tuple[str, ...], theirs: dict[str, SummaryRow]
    ) -> None:
        """Push what the peer lacks, by its summary, page after page."""
        resume: dict[str, int] = {}
        for _ in range(self.config.max_sync_pages):
            entries, resume, _ = await self.db(
                self._plan_entries, theirs, self.config.page_size, resume
            )
            if not entries:
                return
            reply = await self._request(
                peer_id,
                addrs,
                LedgerPush(tuple(tuple(e.wire()) for e in entries), relay=True),  # type: ignore[misc]
            )
            if not resume or not isinstance(reply, LedgerAck):
                return

    async def sync_loop(self) -> None:
        """Sync with peers that want it at once, and with a few random peers every interval."""
        while True:
            with trio.move_on_after(self.config.sync_interval):
                await self._sync_wake.wait()
            self._sync_wake = trio.Event()
            targets = dict(self._wanted)
            self._wanted.clear()
            peers = list(self.peers().items())
            random.shuffle(peers)
            for peer_id, addrs in peers[:3]:
                targets.setdefault(peer_id, addrs)
            async with trio.open_nursery() as nursery:
                for peer_id, addrs in targets.items():
                    nursery.start_soon(self.sync_with, peer_id, addrs)

    async def sync_all(self) -> int:
        """Sync once with every known peer (at start: catch up before serving)."""
        gained = 0

        async def one(peer_id: str, addrs: tuple[str, ...]) -> None:
            nonlocal gained
            gained += await self.sync_with(peer_id, addrs)

        async with trio.open_nursery() as nursery:
            for peer_id, addrs in self.peers().items():
                nursery.start_soon(one, peer_id, addrs)
        return gained

    def checkpoint_basis(self) -> dict[str, object]:
        """What a new checkpoint would certify, less the validators' own checkpoints.

        Validators' checkpoints move each other's frontier; counting them would
        make validators checkpoint each other forever in an idle swarm.
        """
        validators = self.ledger.validators
        frontier = self.ledger.frontier()
        basis: dict[str, object] = {a: h for a, h in frontier.items() if a not in validators}
        for validator in sorted(validators):
            for kind in VALIDATOR_KINDS - {"checkpoint"}:
                latest = self.ledger.backend.latest(validator, kind)
                if latest is not None:
                    basis[f"{validator}:{kind}"] = latest.hash
        return basis

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up with the known peers, then push and sync until cancelled."""
        await self.sync_all()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.push_loop)
            nursery.start_soon(self.sync_loop)
            if self.topics is not None:
                nursery.start_soon(self.gossip_loop)
            task_status.started()


class _SyncProgress:
    """A rich progress bar on stderr for a long catch-up."""

    def __init__(self, peer_id: str, total: int) -> None:
        from rich.progress import Progress

        self._progress = Progress(transient=False)
        self._progress.start()
        self._task = self._progress.add_task(f"ledger sync from {peer_id[-8:]}", total=total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()
