"""The ledger engine: ingest entries in any order, derive balances, find forks.

`Ledger` turns batches of decoded entries into accepted entries, typed
rejections and fork records. It owns no I/O itself: it reads and writes
through a `Backend`, either `MemoryBackend` (pure, for tests and tools) or
`potluck.ledger.store.SqliteBackend`. The same engine runs over both.

Why any delivery order gives the same state
-------------------------------------------
The stored set only grows, and whether an entry is accepted depends only on
the entry and on the entries it names (its predecessor and, for a receive,
its source), never on what else happens to be stored or in what order it
came. An entry that arrives before what it names is rejected with a
`MissingDependency` (`SeqGap` or `UnknownSource`) and parked in a bounded
pool; when the missing entry is accepted, the parked ones are applied in
turn. Balances, frontiers and forks are then functions of the stored set
(`Ledger.state`), so every replica that holds the same valid entries reports
the same state, whatever the order, duplication or partition of delivery.

Forks
-----
Two valid entries by one author at one seq are an equivocation. Both are
stored (replicas must converge on the same set), the pair with the two
smallest hashes is recorded as the fork's fraud proof, and the account is
frozen: its reported balance and frontier stay at the last entry before the
lowest forked seq, and a wallet refuses to spend from it. Anyone can check
the proof with `verify_fraud_proof` from the two entries alone.

Finality
--------
An entry is final once a majority of validators' latest checkpoints include
it: their frontier for its author is at or past its seq on its branch.

Slashes
-------
A validator's `slash` entry names an account, an `amount` and the
`evidence.case` it judged. An account's `slashed` points are the sum, over
the distinct cases among the genesis validators' slashes against it, of the
largest amount for that case (several validators slashing one case take
the points once; a slash with no case is a case of its own). They are a
function of the stored set like everything above. `balance` stays the chain's
balance as its entries write it; `available` = balance - slashed, which is
negative while the account owes. A wallet's own `send` or `ticket` for more
than `available` is refused on submission (`InsufficientBalance`); relayed
entries are judged by the chain rules alone, so replicas converge whatever
order slashes and spends reach them in.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from potluck.errors import (
    ForgedEntry,
    InsufficientBalance,
    LedgerError,
    MissingDependency,
    ReplayedEntry,
    SeqGap,
    SeqTaken,
    UnknownSource,
    WrongSwarm,
)
from potluck.ledger.entry import DEBIT_KINDS, TRANSFER_KINDS, ZERO_HASH, Entry, verify_batch
from potluck.ledger.genesis import Genesis
from potluck.ledger.rules import check_entry

DEFAULT_MAX_PENDING = 20_000
DEFAULT_MAX_PENDING_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Fork:
    """An equivocation: `first` and `second` (first.hash < second.hash) share author and seq."""

    author: str
    seq: int
    first: str
    second: str


@dataclass(frozen=True)
class AuthorSummary:
    """What a replica holds of one author: top seq, entry count, XOR of entry hashes.

    Two replicas with equal summaries hold the same entries of that author
    (up to a SHA-256 collision); sync compares these before sending entries.
    """

    top: int
    count: int
    digest: str


def xor_hex(a: str, b: str) -> str:
    return f"{int(a, 16) ^ int(b, 16):064x}"


@dataclass(frozen=True)
class AccountState:
    """An account as the ledger sees it.

    `balance` is the chain's balance as its head entry writes it; `slashed`
    the points validators' slashes took (see the module docstring)."""

    account: str
    balance: int
    seq: int
    head: str
    frozen: bool
    slashed: int = 0

    @property
    def available(self) -> int:
        """What the account may spend: balance - slashed (negative: a debt)."""
        return self.balance - self.slashed


@dataclass(frozen=True)
class LedgerState:
    """Everything replicas must agree on, for comparing them."""

    entries: frozenset[str]
    balances: dict[str, int]
    frontier: dict[str, tuple[int, str]]
    forks: frozenset[Fork]
    slashed: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestReport:
    """What one `Ledger.ingest` call did with each entry it was given."""

    accepted: list[Entry] = field(default_factory=list)
    rejected: list[tuple[Entry | None, LedgerError]] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)

    @property
    def missing(self) -> list[tuple[Entry | None, LedgerError]]:
        """Rejections for a dependency not held yet: a reason to sync."""
        return [(e, err) for e, err in self.rejected if isinstance(err, MissingDependency)]

    def errors_for(self, entry_hash: str) -> list[LedgerError]:
        return [err for e, err in self.rejected if e is not None and e.hash == entry_hash]


class Backend(Protocol):
    """Where the engine keeps entries. Writes (`insert`, `record_fork`, `count`) run
    inside `transaction()`; reads may run outside one."""

    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def get(self, entry_hash: str) -> Entry | None: ...
    def hashes_at(self, author: str, seq: int) -> list[str]: ...
    def receives_of(self, author: str, source: str) -> list[tuple[int, str]]: ...
    def insert(self, entry: Entry) -> None: ...
    def record_fork(self, fork: Fork) -> None: ...
    def fork_seq(self, author: str) -> int | None: ...
    def forks(self) -> list[Fork]: ...
    def tips(self) -> dict[str, int]: ...
    def latest(self, author: str, kind: str) -> Entry | None: ...
    def incoming(self, account: str) -> list[Entry]: ...
    def received_sources(self, account: str) -> set[str]: ...
    def count(self, reason: str, n: int = 1) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def all_hashes(self) -> set[str]: ...
    def summary(self) -> dict[str, AuthorSummary]: ...
    def chain(self, author: str, after_seq: int, limit: int) -> list[Entry]: ...
    def by_kind(self, kind: str, since_time: int = 0) -> list[Entry]: ...
    def slashes_of(self, account: str) -> list[Entry]: ...


def slashed_points(slashes: Iterable[Entry], validators: frozenset[str]) -> int:
    """Points `slashes` (against one account) take: over the distinct `evidence.case`
    values among those written by `validators`, the largest `amount` of each case.
    A slash whose `evidence.case` is missing or not a string is a case of its own;
    one without an amount takes 0."""
    largest: dict[str, int] = {}
    for entry in slashes:
        if entry.kind != "slash" or entry.author not in validators:
            continue
        evidence = entry.body.get("evidence")
        case = evidence.get("case") if isinstance(evidence, Mapping) else None
        key = f"case:{case}" if isinstance(case, str) else f"entry:{entry.hash}"
        amount = entry.body.get("amount", 0)
        largest[key] = max(largest.get(key, 0), amount if isinstance(amount, int) else 0)
    return sum(largest.values())


class Ledger:
    """The ledger engine over a backend; see the module docstring."""

    def __init__(
        self,
        genesis: Genesis,
        backend: Backend,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        executor: Executor | None = None,
    ) -> None:
        self.genesis = genesis
        self.swarm_id = genesis.swarm_id
        self.validators = frozenset(genesis.validators)
        self.backend = backend
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.executor = executor
        self._waiting: dict[str, list[Entry]] = {}
        self._parked: dict[str, tuple[Entry, LedgerError, str]] = {}  # hash: entry, why, needs
        self._parked_bytes = 0

    # ---- ingest -----------------------------------------------------------

    def ingest(
        self, entries: Iterable[Entry], *, gossip: bool = False, submitted: bool = False
    ) -> IngestReport:
        """Validate and store a batch in one transaction; report what became of each.

        With `gossip`, an entry already held is expected (peers relay what
        others sent too): it is skipped and counted as a duplicate, not
        rejected as a `ReplayedEntry`.

        With `submitted` (entries a wallet hands to this replica, rather than
        entries relayed between replicas), an entry at a seq its author already
        used is refused with `SeqTaken` instead of being stored as a fork: a
        replica never helps an honest but confused writer (two processes with
        one key) equivocate. Relayed forks are still stored, so replicas converge.
        """
        report = IngestReport()
        batch: list[Entry] = []
        seen: set[str] = set()
        early: list[tuple[Entry, LedgerError]] = []  # recorded once the transaction is open
        duplicates = 0
        for entry in entries:
            if entry.swarm != self.swarm_id:
                why = f"entry {entry.hash[:12]} is for swarm {entry.swarm[:12]}"
                early.append((entry, WrongSwarm(why)))
            elif entry.hash in seen or self.backend.get(entry.hash) is not None:
                if gossip:
                    duplicates += 1
                    continue
                early.append((entry, ReplayedEntry(f"entry {entry.hash[:12]} is already held")))
            elif entry.hash in self._parked:
                # parked already: still missing what it needs, applied when that arrives
                early.append((entry, self._parked[entry.hash][1]))
            else:
                seen.add(entry.hash)
                batch.append(entry)
        valid: list[Entry] = []
        # signatures are checked before the write transaction opens, to hold it briefly
        for entry, ok in zip(batch, verify_batch(batch, self.executor), strict=True):
            if ok:
                valid.append(entry)
            else:
                why = f"entry {entry.hash[:12]} is not signed by {entry.author[:12]}"
                early.append((entry, ForgedEntry(why)))
        with self.backend.transaction():
            if duplicates:
                self.backend.count("duplicates", duplicates)
            for entry, error in early:
                self._reject(report, entry, error)
            work = list(reversed(_dependency_order(valid)))
            while work:
                entry = work.pop()
                if self.backend.get(entry.hash) is not None:
                    continue
                if self._apply(entry, report, submitted=submitted):
                    woken = [e for e in self._waiting.pop(entry.hash, []) if e.hash in self._parked]
                    for parked in woken:
                        self._unpark(parked)
                    work.extend(reversed(sorted(woken, key=lambda e: e.seq)))
        return report

    def _apply(self, entry: Entry, report: IngestReport, *, submitted: bool = False) -> bool:
        backend = self.backend
        previous = backend.get(entry.prev) if entry.seq > 1 else None
        source = None
        already = False
        if entry.kind == "receive":
            assert entry.source is not None
            source = backend.get(entry.source)
            already = self._received_on_chain(entry)
        try:
            check_entry(
                entry,
                validators=self.validators,
                previous=previous,
                source=source,
                already_received=already,
            )
        except SeqGap as exc:
            self._park(entry, entry.prev, exc, report)
            return False
        except UnknownSource as exc:
            assert entry.source is not None
            self._park(entry, entry.source, exc, report)
            return False
        except LedgerError as exc:
            self._reject(report, entry, exc)
            return False
        if submitted and backend.hashes_at(entry.author, entry.seq):
            why = f"seq {entry.seq} of {entry.author[:12]} is taken; read the account, sign again"
            self._reject(report, entry, SeqTaken(why))
            return False
        if submitted and entry.kind in DEBIT_KINDS:
            balance = previous.balance if previous is not None else 0
            slashed = self._slashed(entry.author)
            if entry.amount > balance - slashed:
                self._reject(report, entry, _slashed_overdraft(entry, balance, slashed))
                return False
        backend.insert(entry)
        report.accepted.append(entry)
        backend.count("accepted")
        others = backend.hashes_at(entry.author, entry.seq)
        if len(others) > 1:
            first, second = sorted(others)[:2]
            fork = Fork(entry.author, entry.seq, first, second)
            backend.record_fork(fork)
            report.forks.append(fork)
            backend.count("forks")
        return True

    def _received_on_chain(self, entry: Entry) -> bool:
        """Whether an ancestor of `entry` already received `entry.source`."""
        assert entry.source is not None
        earlier = [
            (seq, h)
            for seq, h in self.backend.receives_of(entry.author, entry.source)
            if seq < entry.seq
        ]
        if not earlier:
            return False
        fork_seq = self.backend.fork_seq(entry.author)
        if fork_seq is None or fork_seq >= entry.seq:
            return True  # one entry per seq below this one: every earlier one is an ancestor
        ancestors = set(self._ancestors(entry, down_to=min(seq for seq, _ in earlier)))
        return any(h in ancestors for _, h in earlier)

    def _ancestors(self, entry: Entry, *, down_to: int) -> Iterator[str]:
        current = self.backend.get(entry.prev) if entry.seq > 1 else None
        while current is not None and current.seq >= down_to:
            yield current.hash
            current = self.backend.get(current.prev) if current.seq > 1 else None

    def _park(self, entry: Entry, waiting_for: str, exc: LedgerError, report: IngestReport) -> None:
        self._reject(report, entry, exc)
        if entry.hash in self._parked:
            return
        if len(entry.raw) > self.max_pending_bytes or self.max_pending < 1:
            self.backend.count("pending_dropped")
            return
        while self._parked and (
            len(self._parked) >= self.max_pending
            or self._parked_bytes + len(entry.raw) > self.max_pending_bytes
        ):
            # evict the oldest: junk that names nothing cannot hold the pool forever,
            # and an evicted entry that is genuine comes back through sync
            oldest, _, needs = next(iter(self._parked.values()))
            self._unpark(oldest)
            waiters = [e for e in self._waiting.get(needs, []) if e.hash != oldest.hash]
            if waiters:
                self._waiting[needs] = waiters
            else:
                self._waiting.pop(needs, None)
            self.backend.count("pending_evicted")
        self._parked[entry.hash] = (entry, exc, waiting_for)
        self._parked_bytes += len(entry.raw)
        self._waiting.setdefault(waiting_for, []).append(entry)

    def _unpark(self, entry: Entry) -> None:
        if self._parked.pop(entry.hash, None) is not None:
            self._parked_bytes -= len(entry.raw)

    def _reject(self, report: IngestReport, entry: Entry | None, exc: LedgerError) -> None:
        report.rejected.append((entry, exc))
        self.backend.count(f"rejected.{exc.code}")

    def note(self, reason: str, n: int = 1) -> None:
        """Add `n` to a counter, in its own transaction."""
        with self.backend.transaction():
            self.backend.count(reason, n)

    @property
    def pending(self) -> int:
        """Entries parked until what they depend on arrives."""
        return len(self._parked)

    # ---- derived state ----------------------------------------------------

    def account(self, account: str, *, top: int | None = None) -> AccountState:
        """Balance, head and slashed points of an account; a forked account is
        frozen before its fork.

        `top` is the account's highest seq held, if the caller already knows it."""
        state = self._chain_state(account, top)
        slashed = self._slashed(account)
        return dataclasses.replace(state, slashed=slashed) if slashed else state

    def _slashed(self, account: str) -> int:
        return slashed_points(self.backend.slashes_of(account), self.validators)

    def slashed(self) -> dict[str, int]:
        """Points taken from every account that a genesis validator slashed (0 when
        its slashes named no amount)."""
        against: dict[str, list[Entry]] = {}
        for entry in self.backend.by_kind("slash"):
            if entry.author in self.validators:
                against.setdefault(str(entry.body["account"]), []).append(entry)
        return {
            account: slashed_points(slashes, self.validators)
            for account, slashes in sorted(against.items())
        }

    def _chain_state(self, account: str, top: int | None = None) -> AccountState:
        """The account's state from its chain alone (`slashed` 0)."""
        backend = self.backend
        if top is None:
            top = backend.tips().get(account, 0)
        fork_seq = backend.fork_seq(account)
        seq = top if fork_seq is None else fork_seq - 1
        if seq == 0:
            return AccountState(account, 0, 0, ZERO_HASH, fork_seq is not None)
        (head_hash,) = backend.hashes_at(account, seq)[:1]
        head = backend.get(head_hash)
        assert head is not None
        return AccountState(account, head.balance, seq, head.hash, fork_seq is not None)

    def frontier(self) -> dict[str, tuple[int, str]]:
        """Every author's undisputed head: `(seq, hash)`."""
        result = {}
        for author, top in self.backend.tips().items():
            state = self._chain_state(author, top)
            if state.seq:
                result[author] = (state.seq, state.head)
        return result

    def balances(self) -> dict[str, int]:
        """Every author's chain balance (slashes not taken off: see `slashed`)."""
        tips = self.backend.tips()
        return {author: self._chain_state(author, top).balance for author, top in tips.items()}

    def forks(self) -> list[Fork]:
        return self.backend.forks()

    def fraud_proof(self, fork: Fork) -> tuple[Entry, Entry]:
        first, second = self.backend.get(fork.first), self.backend.get(fork.second)
        assert first is not None and second is not None
        return first, second

    def state(self) -> LedgerState:
        return LedgerState(
            entries=frozenset(self.backend.all_hashes()),
            balances=self.balances(),
            frontier=self.frontier(),
            forks=frozenset(self.backend.forks()),
            slashed=self.slashed(),
        )

    def counters(self) -> dict[str, int]:
        return self.backend.counters()

    def receivable(self, account: str) -> list[Entry]:
        """Transfers to `account` that its chain has not received yet, oldest first."""
        taken = self.backend.received_sources(account)
        found = [e for e in self.backend.incoming(account) if e.hash not in taken]
        return sorted(found, key=lambda e: (e.time, e.hash))

    def is_final(self, entry: Entry) -> bool:
        """Whether a majority of validators' latest checkpoints include `entry`."""
        votes = 0
        for validator in self.validators:
            checkpoint = self.backend.latest(validator, "checkpoint")
            if checkpoint is None:
                continue
            head = checkpoint.body["frontier"].get(entry.author)
            if head is None or head[0] < entry.seq:
                continue
            current = self.backend.get(head[1])
            while current is not None and current.seq > entry.seq:
                current = self.backend.get(current.prev)
            if current is not None and current.hash == entry.hash:
                votes += 1
        return votes >= self.genesis.majority


def _slashed_overdraft(entry: Entry, balance: int, slashed: int) -> InsufficientBalance:
    return InsufficientBalance(
        f"{entry.kind} {entry.author[:12]}#{entry.seq}: spends {entry.amount} but the account"
        f" was slashed {slashed} points: {balance - slashed} of its balance of {balance}"
        " are available"
    )


def _dependency_order(entries: list[Entry]) -> list[Entry]:
    """`entries` ordered so that each comes after the batch's entries it names
    (its predecessor, the source it receives): a batch that holds what it
    needs never waits, whatever order it came in."""
    in_batch = {e.hash for e in entries}
    children: dict[str, list[Entry]] = {}
    waiting: dict[str, int] = {}
    ready: list[Entry] = []
    for entry in sorted(entries, key=lambda e: e.seq, reverse=True):
        needs = [h for h in (entry.prev, entry.source) if h is not None and h in in_batch]
        for need in needs:
            children.setdefault(need, []).append(entry)
        waiting[entry.hash] = len(needs)
        if not needs:
            ready.append(entry)
    order: list[Entry] = []
    while ready:
        entry = ready.pop()
        order.append(entry)
        for child in children.pop(entry.hash, ()):
            waiting[child.hash] -= 1
            if waiting[child.hash] == 0:
                ready.append(child)
    return order


class MemoryBackend:
    """A `Backend` in dictionaries: pure, for tests, tools and the property test."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Entry] = {}
        self._at: dict[tuple[str, int], list[str]] = {}
        self._tips: dict[str, int] = {}
        self._receives: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self._incoming: dict[str, list[Entry]] = {}
        self._received: dict[str, set[str]] = {}
        self._latest: dict[tuple[str, str], Entry] = {}
        self._forks: dict[tuple[str, int], Fork] = {}
        self._counters: Counter[str] = Counter()
        self._summary: dict[str, AuthorSummary] = {}
        self._kinds: dict[str, list[Entry]] = {}
        self._slashes: dict[str, list[Entry]] = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def get(self, entry_hash: str) -> Entry | None:
        return self._by_hash.get(entry_hash)

    def hashes_at(self, author: str, seq: int) -> list[str]:
        return list(self._at.get((author, seq), ()))

    def receives_of(self, author: str, source: str) -> list[tuple[int, str]]:
        return list(self._receives.get((author, source), ()))

    def insert(self, entry: Entry) -> None:
        self._by_hash[entry.hash] = entry
        self._at.setdefault((entry.author, entry.seq), []).append(entry.hash)
        self._tips[entry.author] = max(self._tips.get(entry.author, 0), entry.seq)
        if entry.source is not None:
            self._receives.setdefault((entry.author, entry.source), []).append(
                (entry.seq, entry.hash)
            )
            self._received.setdefault(entry.author, set()).add(entry.source)
        if entry.kind in TRANSFER_KINDS and entry.to is not None:
            self._incoming.setdefault(entry.to, []).append(entry)
        old = self._summary.get(entry.author, AuthorSummary(0, 0, ZERO_HASH))
        self._summary[entry.author] = AuthorSummary(
            max(old.top, entry.seq), old.count + 1, xor_hex(old.digest, entry.hash)
        )
        key = (entry.author, entry.kind)
        latest = self._latest.get(key)
        if latest is None or (entry.seq, entry.hash) > (latest.seq, latest.hash):
            self._latest[key] = entry
        self._kinds.setdefault(entry.kind, []).append(entry)
        if entry.kind == "slash":
            self._slashes.setdefault(str(entry.body["account"]), []).append(entry)

    def record_fork(self, fork: Fork) -> None:
        self._forks[(fork.author, fork.seq)] = fork

    def fork_seq(self, author: str) -> int | None:
        seqs = [seq for (a, seq) in self._forks if a == author]
        return min(seqs) if seqs else None

    def forks(self) -> list[Fork]:
        return sorted(self._forks.values(), key=lambda f: (f.author, f.seq))

    def tips(self) -> dict[str, int]:
        return dict(self._tips)

    def latest(self, author: str, kind: str) -> Entry | None:
        return self._latest.get((author, kind))

    def incoming(self, account: str) -> list[Entry]:
        return list(self._incoming.get(account, ()))

    def received_sources(self, account: str) -> set[str]:
        return set(self._received.get(account, ()))

    def count(self, reason: str, n: int = 1) -> None:
        self._counters[reason] += n

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def all_hashes(self) -> set[str]:
        return set(self._by_hash)

    def summary(self) -> dict[str, AuthorSummary]:
        return dict(self._summary)

    def chain(self, author: str, after_seq: int, limit: int) -> list[Entry]:
        """The author's entries with seq > after_seq, by (seq, hash), at most `limit`."""
        found: list[Entry] = []
        seq = after_seq + 1
        top = self._tips.get(author, 0)
        while seq <= top and len(found) < limit:
            found.extend(self._by_hash[h] for h in sorted(self._at.get((author, seq), ())))
            seq += 1
        return found[:limit]

    def by_kind(self, kind: str, since_time: int = 0) -> list[Entry]:
        """Entries of `kind` with time >= `since_time`, by (time, hash)."""
        found = [e for e in self._kinds.get(kind, ()) if e.time >= since_time]
        return sorted(found, key=lambda e: (e.time, e.hash))

    def slashes_of(self, account: str) -> list[Entry]:
        """Slash entries whose body.account is `account`, by (time, hash)."""
        return sorted(self._slashes.get(account, ()), key=lambda e: (e.time, e.hash))
