"""The ledger in SQLite: `SqliteBackend`, its schema and migrations, `open_ledger`.

`SqliteBackend` implements `potluck.ledger.core.Backend` with the same
semantics as `MemoryBackend`, persisted in one SQLite file in WAL mode, so a
node keeps its replica across restarts and the CLI and dashboard can read it
while the node writes. Opening, creating tables and migrating go through
sqlite-utils, so the file is easy to inspect::

    sqlite-utils tables ledger.db --counts
    sqlite-utils rows ledger.db entries --limit 5

The hot paths (`get`, `insert`, ...) run prepared SQL on the raw connection.

Schema (hashes and keys are lowercase hex, times are ms since the epoch)
------------------------------------------------------------------------
- ``entries``: one row per stored entry: `hash` (primary key), `author`,
  `seq`, `prev`, `time`, `kind`, `balance`, `to_account` and `amount` (for
  transfers), `source` (for receives), `raw` (the canonical JSON that the
  hash covers), `signature` and `stored_at`. Indexed by (author, seq),
  (to_account) and (author, source) (partial: rows that have one),
  (author, kind, seq), (kind, time), and the `body.account` of slashes
  (an expression index on `raw`, partial: slash rows only).
- ``forks``: one fraud proof per (author, seq): the two smallest hashes.
- ``authors``: per author, the `AuthorSummary` (top seq, entry count, XOR
  of entry hashes), kept up to date by every insert.
- ``counters``: `Ledger` counters (accepted, forks, rejected.<code>...).
- ``meta``: `swarm_id`, the genesis this database belongs to.
- ``migrations``: the name and time of every applied migration.

Transactions and threads
------------------------
A backend owns one connection and is the only writer of its file. Every
write (`insert`, `record_fork`, `count`) must run inside `transaction()`,
which is ``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the block
raises; `Ledger.ingest` runs a whole batch in one, so a crash loses nothing
that was acknowledged and never leaves half a batch. Nested `transaction()`
blocks become savepoints: an inner block that raises undoes only itself.

The connection is opened with ``check_same_thread=False`` because the node
calls the backend from trio worker threads (`trio.to_thread.run_sync`), but
only **one thread may use a backend at a time**: the node serialises its
ledger calls. A transaction entered from a second thread while another is
open raises `LedgerError`. For concurrent readers, open a second backend
with ``readonly=True``: in WAL mode it reads the last committed state while
the writer writes. The one-thread rule holds for a read-only backend too:
give each reading thread its own, or serialise their calls.

Errors
------
A file that cannot be opened, is not a SQLite database, is corrupt, belongs
to another program or stays locked for more than 5 s raises `ConfigError`
when opened; a database of another swarm raises `GenesisError`. A write
that cannot start because another process holds the write lock raises
`LedgerError`. Inside a transaction, a SQLite failure (disk full, I/O
error...) propagates unchanged after the rollback, so no caller mistakes a
broken disk for a refused entry; outside one (the CLI, the dashboard), a
failed read raises `LedgerError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlite_utils

from potluck.errors import ConfigError, GenesisError, LedgerError
from potluck.ledger.core import AuthorSummary, Fork, Ledger, xor_hex
from potluck.ledger.entry import Entry
from potluck.ledger.genesis import Genesis

DEFAULT_CACHE_ENTRIES = 50_000
"""Decoded entries kept in memory by hash (`get(prev)` runs for nearly every insert)."""
BUSY_TIMEOUT_MS = 5000
PAGE_SIZE = 8192
"""Set when a database is created: hex keys make wide index rows (~20% faster than 4096)."""
WRITER_CACHE_KIB = 32 * 1024
"""SQLite page cache of the writer: index inserts land on random pages (hash order)."""

Migration = Callable[[sqlite_utils.Database], None]


# ---- migrations ------------------------------------------------------------


def _0001_entries(db: sqlite_utils.Database) -> None:
    entries = db.create_table(
        "entries",
        {
            "hash": str,
            "author": str,
            "seq": int,
            "prev": str,
            "time": int,
            "kind": str,
            "balance": int,
            "to_account": str,
            "amount": int,
            "source": str,
            "raw": str,
            "signature": str,
            "stored_at": int,
        },
        pk="hash",
        not_null=[
            "author",
            "seq",
            "prev",
            "time",
            "kind",
            "balance",
            "amount",
            "raw",
            "signature",
            "stored_at",
        ],
    )
    entries.create_index(["author", "seq"], index_name="entries_author_seq")
    # Partial: only transfers have a recipient and only receives a source.
    db.execute(
        "CREATE INDEX entries_to_account ON entries (to_account) WHERE to_account IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX entries_author_source ON entries (author, source) WHERE source IS NOT NULL"
    )
    entries.create_index(["author", "kind", "seq"], index_name="entries_author_kind_seq")
    entries.create_index(["kind"], index_name="entries_kind")
    db.create_table(
        "forks",
        {"author": str, "seq": int, "first": str, "second": str},
        pk=("author", "seq"),
        not_null=["first", "second"],
    )
    db.create_table(
        "authors",
        {"author": str, "top": int, "count": int, "digest": str},
        pk="author",
        not_null=["top", "count", "digest"],
    )
    db.create_table("counters", {"name": str, "value": int}, pk="name", not_null=["value"])
    db.create_table("meta", {"key": str, "value": str}, pk="key", not_null=["value"])


_SLASH_ACCOUNT = "json_extract(raw, '$.body.account')"
_IS_SLASH = "WHERE kind = 'slash'"


def _0002_kinds_and_slashes(db: sqlite_utils.Database) -> None:
    """Entries of a kind by time (receipts of an epoch, every slash) and slashes by
    the account they name (an expression on `raw`, so no column to fill)."""
    db.execute("CREATE INDEX entries_kind_time ON entries (kind, time)")
    db.execute("DROP INDEX entries_kind")  # (kind, time) serves everything (kind) did
    db.execute(f"CREATE INDEX entries_slash_account ON entries ({_SLASH_ACCOUNT}) {_IS_SLASH}")


MIGRATIONS: list[tuple[str, Migration]] = [
    ("0001_entries", _0001_entries),
    ("0002_kinds_and_slashes", _0002_kinds_and_slashes),
]
"""Every schema change, in order; append new ones, never edit or reorder applied ones."""


def migrate(
    db: sqlite_utils.Database,
    migrations: Sequence[tuple[str, Migration]] | None = None,
    *,
    now_ms: int = 0,
) -> list[str]:
    """Apply the migrations `db` lacks (default `MIGRATIONS`) in one transaction.

    Returns the names applied, in order: none when the database is up to
    date. Raises `ConfigError` when the database records a migration this
    version does not know (it was written by a newer Potluck).
    """
    steps = list(MIGRATIONS if migrations is None else migrations)
    names = [name for name, _ in steps]
    if len(set(names)) != len(names):
        raise ValueError("migration names must be unique")
    conn = db.conn
    applied: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        db.create_table(
            "migrations",
            {"name": str, "applied_at": int},
            pk="name",
            not_null=["applied_at"],
            if_not_exists=True,
        )
        done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
        unknown = sorted(done - set(names))
        if unknown:
            raise ConfigError(
                f"the ledger database has migrations this Potluck does not know "
                f"({', '.join(unknown)}): it was written by a newer version"
            )
        for name, step in steps:
            if name in done:
                continue
            step(db)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, now_ms))
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied


# ---- prepared SQL ----------------------------------------------------------

LEDGER_FILE = "ledger.db"
"""The ledger database's name in a node's data directory."""

_ENTRY_COLUMNS = "hash, raw, signature"
_GET = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE hash = ?"
_INSERT = (
    "INSERT OR IGNORE INTO entries (hash, author, seq, prev, time, kind, balance, to_account,"
    " amount, source, raw, signature, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_AUTHOR = (
    "INSERT INTO authors (author, top, count, digest) VALUES (?, ?, 1, ?)"
    " ON CONFLICT (author) DO UPDATE SET top = max(top, excluded.top), count = count + 1,"
    " digest = potluck_xor_hex(digest, excluded.digest)"
)
_HASHES_AT = "SELECT hash FROM entries WHERE author = ? AND seq = ? ORDER BY rowid"
_RECEIVES_OF = "SELECT seq, hash FROM entries WHERE author = ? AND source = ? ORDER BY rowid"
_RECORD_FORK = "INSERT OR REPLACE INTO forks (author, seq, first, second) VALUES (?, ?, ?, ?)"
_FORK_SEQ = "SELECT min(seq) FROM forks WHERE author = ?"
_FORKS = "SELECT author, seq, first, second FROM forks ORDER BY author, seq"
_TIPS = "SELECT author, top FROM authors"
_SUMMARY = "SELECT author, top, count, digest FROM authors"
_LATEST = (
    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE author = ? AND kind = ?"
    " ORDER BY seq DESC, hash DESC LIMIT 1"
)
_INCOMING = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE to_account = ? ORDER BY rowid"
_RECEIVED = "SELECT source FROM entries WHERE author = ? AND source IS NOT NULL"
_COUNT = (
    "INSERT INTO counters (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_COUNTERS = "SELECT name, value FROM counters"
_ALL_HASHES = "SELECT hash FROM entries"
_CHAIN = (
    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE author = ? AND seq > ? ORDER BY seq, hash LIMIT ?"
)
_HISTORY = (
    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE author = ? AND seq < ?"
    " ORDER BY seq DESC, hash DESC LIMIT ?"
)
_BY_KIND = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE kind = ? AND time >= ? ORDER BY time, hash"
_SLASHES_OF = (
    f"SELECT {_ENTRY_COLUMNS} FROM entries INDEXED BY entries_slash_account"
    f" {_IS_SLASH} AND {_SLASH_ACCOUNT} = ? ORDER BY time, hash"
)
_RECENT = f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY rowid DESC LIMIT ?"
_SCAN = f"SELECT rowid, {_ENTRY_COLUMNS} FROM entries WHERE rowid > ? ORDER BY rowid LIMIT ?"
_ROW_COUNT = "SELECT count(*) FROM entries"
_ENTRY_COUNT = "SELECT coalesce(sum(count), 0) FROM authors"
_SWARM = "SELECT value FROM meta WHERE key = 'swarm_id'"


@dataclass
class _Frame:
    """What one (possibly nested) transaction changed outside SQLite, to undo or merge."""

    name: str
    inserted: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class SqliteBackend:
    """A `Backend` in a SQLite file; see the module docstring.

    `readonly=True` opens the file read-only (``mode=ro``), for the CLI and
    dashboard next to a running node; it refuses `transaction()`. `clock`
    (seconds, like `time.time`) stamps `stored_at`.
    """

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.applied_migrations: list[str] = []
        """Migrations that opening this backend applied (empty when it was up to date)."""
        self._clock = clock
        self._cache: OrderedDict[str, Entry] = OrderedDict()
        self._cache_entries = max(cache_entries, 0)
        self._frames: list[_Frame] = []
        self._absent: set[str] = set()  # hashes known missing, only while we hold the write lock
        self._owner: int | None = None
        self._stored_at = 0
        self._closed = False
        self._conn = _connect(self.path, readonly)
        try:
            self.db = sqlite_utils.Database(self._conn, execute_plugins=False)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if readonly:
                self._conn.execute("PRAGMA query_only = 1")
                self._check_schema()
            else:
                self._conn.create_function("potluck_xor_hex", 2, xor_hex, deterministic=True)
                self._refuse_foreign()
                self._conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # no-op once created
                self.db.enable_wal()
                # FULL: a committed ingest survives an OS crash or power loss too,
                # not only a killed process (WAL + NORMAL would lose the last commits)
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
                self.applied_migrations = migrate(self.db, now_ms=self._now_ms())
        except sqlite3.Error as exc:
            self._conn.close()
            raise ConfigError(_open_error(self.path, exc)) from exc
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        return f"<SqliteBackend {self.path} ({mode})>"

    # ---- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); refuses inside a transaction."""
        if self._closed:
            return
        if self._frames:
            raise LedgerError("cannot close the ledger database inside a transaction")
        self._conn.close()
        self._closed = True
        self._cache.clear()

    def __enter__(self) -> SqliteBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` if the block raises).

        A nested block is a savepoint: if it raises, only its own writes
        are undone. Must not be entered from a second thread while open.
        """
        if self.readonly:
            raise LedgerError(f"the ledger database {self.path} is open read-only")
        if self._closed:
            raise LedgerError(f"the ledger database {self.path} is closed")
        conn = self._conn
        if self._frames:
            if self._owner != threading.get_ident():
                raise LedgerError(
                    "a SqliteBackend is used by two threads at once; it allows one at a time"
                )
            frame = _Frame(f"potluck_{len(self._frames)}")
            conn.execute(f"SAVEPOINT {frame.name}")
            self._frames.append(frame)
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute(f"ROLLBACK TO {frame.name}")
                    conn.execute(f"RELEASE {frame.name}")
                self._forget(frame)
                raise
            finally:
                self._frames.pop()
            conn.execute(f"RELEASE {frame.name}")
            parent = self._frames[-1]
            parent.inserted.extend(frame.inserted)
            parent.counts.update(frame.counts)
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LedgerError(
                f"cannot write to the ledger database {self.path}: {exc}"
                " (is another process writing it?)"
            ) from exc
        frame = _Frame("main")
        self._frames.append(frame)
        self._owner = threading.get_ident()
        self._stored_at = self._now_ms()
        try:
            yield
            if frame.counts:
                conn.executemany(_COUNT, frame.counts.items())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget(frame)
            raise
        finally:
            self._frames.clear()
            self._absent.clear()
            self._owner = None

    # ---- Backend: reads ----------------------------------------------------

    def get(self, entry_hash: str) -> Entry | None:
        cache = self._cache
        entry = cache.get(entry_hash)
        if entry is not None:
            cache.move_to_end(entry_hash)
            return entry
        if entry_hash in self._absent:
            return None
        row = self._one(_GET, (entry_hash,))
        if row is None:
            if self._frames:  # no other writer until we commit: it stays missing till insert()
                self._absent.add(entry_hash)
            return None
        entry = _entry(row)
        self._remember(entry)
        return entry

    def hashes_at(self, author: str, seq: int) -> list[str]:
        return [row[0] for row in self._all(_HASHES_AT, (author, seq))]

    def receives_of(self, author: str, source: str) -> list[tuple[int, str]]:
        return [(row[0], row[1]) for row in self._all(_RECEIVES_OF, (author, source))]

    def fork_seq(self, author: str) -> int | None:
        row = self._one(_FORK_SEQ, (author,))
        return None if row is None or row[0] is None else int(row[0])

    def forks(self) -> list[Fork]:
        return [Fork(a, seq, first, second) for a, seq, first, second in self._all(_FORKS)]

    def tips(self) -> dict[str, int]:
        return {author: top for author, top in self._all(_TIPS)}

    def latest(self, author: str, kind: str) -> Entry | None:
        row = self._one(_LATEST, (author, kind))
        return None if row is None else self._cached_entry(row)

    def incoming(self, account: str) -> list[Entry]:
        return [self._cached_entry(row) for row in self._all(_INCOMING, (account,))]

    def received_sources(self, account: str) -> set[str]:
        return {row[0] for row in self._all(_RECEIVED, (account,))}

    def counters(self) -> dict[str, int]:
        totals: Counter[str] = Counter(dict(self._all(_COUNTERS)))
        for frame in self._frames:
            totals.update(frame.counts)
        return dict(totals)

    def all_hashes(self) -> set[str]:
        return {row[0] for row in self._all(_ALL_HASHES)}

    def summary(self) -> dict[str, AuthorSummary]:
        return {
            author: AuthorSummary(top, count, digest)
            for author, top, count, digest in self._all(_SUMMARY)
        }

    def chain(self, author: str, after_seq: int, limit: int) -> list[Entry]:
        """The author's entries with seq > after_seq, by (seq, hash), at most `limit`."""
        if limit <= 0:
            return []
        return [self._cached_entry(row) for row in self._all(_CHAIN, (author, after_seq, limit))]

    def by_kind(self, kind: str, since_time: int = 0) -> list[Entry]:
        """Entries of `kind` with time >= `since_time`, by (time, hash)."""
        return [self._cached_entry(row) for row in self._all(_BY_KIND, (kind, since_time))]

    def slashes_of(self, account: str) -> list[Entry]:
        """Slash entries whose body.account is `account`, by (time, hash)."""
        return [self._cached_entry(row) for row in self._all(_SLASHES_OF, (account,))]

    # ---- Backend: writes (inside transaction()) ----------------------------

    def insert(self, entry: Entry) -> None:
        """Store an entry (a no-op for one already stored); updates its author's summary."""
        frame = self._writing("insert")
        conn = self._conn
        cursor = conn.execute(
            _INSERT,
            (
                entry.hash,
                entry.author,
                entry.seq,
                entry.prev,
                entry.time,
                entry.kind,
                entry.balance,
                entry.to,
                entry.amount,
                entry.source,
                entry.raw.decode("ascii"),
                entry.signature.hex(),
                self._stored_at,
            ),
        )
        self._absent.discard(entry.hash)
        if cursor.rowcount == 0:
            return
        conn.execute(_UPSERT_AUTHOR, (entry.author, entry.seq, entry.hash))
        frame.inserted.append(entry.hash)
        self._remember(entry)

    def record_fork(self, fork: Fork) -> None:
        self._writing("record_fork")
        self._conn.execute(_RECORD_FORK, (fork.author, fork.seq, fork.first, fork.second))

    def count(self, reason: str, n: int = 1) -> None:
        """Add `n` to a counter; written when the outermost transaction commits."""
        self._writing("count").counts[reason] += n

    # ---- read helpers for the CLI and dashboard ----------------------------

    def history(self, account: str, limit: int = 50, before_seq: int | None = None) -> list[Entry]:
        """The account's own entries, newest (highest seq) first, below `before_seq` if given."""
        if limit <= 0:
            return []
        below = 2**63 - 1 if before_seq is None else before_seq
        return [self._cached_entry(row) for row in self._all(_HISTORY, (account, below, limit))]

    def scan(self, after_rowid: int = 0, limit: int = 5000) -> list[tuple[int, Entry]]:
        """Stored entries in storage order after `after_rowid`, built from their bytes only
        (a causal order: an entry is stored after what it depends on)."""
        rows = self._all(_SCAN, (after_rowid, limit))
        return [(int(row[0]), _entry(row[1:])) for row in rows]

    def row_count(self) -> int:
        """Rows in the entries table, counted (`entry_count` reads the author summaries)."""
        row = self._one(_ROW_COUNT)
        return 0 if row is None else int(row[0])

    def recent(self, limit: int = 50) -> list[Entry]:
        """The entries stored last, newest first."""
        if limit <= 0:
            return []
        return [self._cached_entry(row) for row in self._all(_RECENT, (limit,))]

    def entry_count(self) -> int:
        row = self._one(_ENTRY_COUNT)
        return 0 if row is None else int(row[0])

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: "ok", or the problems SQLite found, one per line."""
        try:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return f"integrity check failed: {exc}"
        return "\n".join(str(row[0]) for row in rows)

    @property
    def swarm_id(self) -> str | None:
        """The swarm this database belongs to, or None before `claim_swarm`."""
        row = self._one(_SWARM)
        return None if row is None else str(row[0])

    def claim_swarm(self, swarm_id: str) -> None:
        """Record `swarm_id` on first use; raise `GenesisError` if the file is another swarm's."""
        if self.readonly:
            held = self.swarm_id
        else:
            with self.transaction():
                held = self.swarm_id
                if held is None:
                    self._conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('swarm_id', ?)", (swarm_id,)
                    )
                    held = swarm_id
        if held is not None and held != swarm_id:
            raise GenesisError(
                f"this ledger database belongs to swarm {held}, not {swarm_id} ({self.path}):"
                " use the data directory of that swarm, or another one for this genesis"
            )

    # ---- internals ---------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _writing(self, what: str) -> _Frame:
        if not self._frames:
            if self.readonly:
                raise LedgerError(f"the ledger database {self.path} is open read-only")
            raise LedgerError(f"SqliteBackend.{what} must run inside transaction()")
        return self._frames[-1]

    def _remember(self, entry: Entry) -> None:
        cache = self._cache
        cache[entry.hash] = entry
        if len(cache) > self._cache_entries:
            cache.popitem(last=False)

    def _forget(self, frame: _Frame) -> None:
        """Drop from the cache what a rolled-back transaction had inserted."""
        for entry_hash in frame.inserted:
            self._cache.pop(entry_hash, None)

    def _cached_entry(self, row: Sequence[Any]) -> Entry:
        cached = self._cache.get(row[0])
        return cached if cached is not None else _entry(row)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            if self._frames:
                raise  # inside a transaction: propagates as is, after the rollback
            raise self._read_error(exc) from exc

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if self._frames:
                raise  # inside a transaction: propagates as is, after the rollback
            raise self._read_error(exc) from exc

    def _read_error(self, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(f"cannot read the ledger database {self.path}: {exc}")

    def _check_schema(self) -> None:
        if "migrations" not in self.db.table_names():
            raise ConfigError(f"{self.path} is not a Potluck ledger database (no migrations)")
        done = {row[0] for row in self._conn.execute("SELECT name FROM migrations")}
        missing = [name for name, _ in MIGRATIONS if name not in done]
        if missing:
            raise ConfigError(
                f"{self.path} needs migrations {', '.join(missing)}: open it once read-write"
                " (for example by starting the node) before reading it read-only"
            )

    def _refuse_foreign(self) -> None:
        names = self.db.table_names()
        if names and "migrations" not in names:
            raise ConfigError(
                f"{self.path} is a SQLite database of some other program"
                f" (tables {', '.join(sorted(names)[:5])}), not a Potluck ledger"
            )


def _entry(row: Sequence[Any]) -> Entry:
    """An `Entry` from a stored `(hash, raw, signature)`, trusted: validated when stored."""
    raw: str = row[1]
    data = json.loads(raw)
    return Entry(
        swarm=data["swarm"],
        author=data["author"],
        seq=data["seq"],
        prev=data["prev"],
        time=data["time"],
        kind=data["kind"],
        body=data["body"],
        balance=data["balance"],
        signature=bytes.fromhex(row[2]),
        raw=raw.encode("ascii"),
        hash=row[0],
    )


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "?mode=rwc")
    try:
        return sqlite3.connect(
            uri,
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,  # one thread at a time; see the module docstring
            isolation_level=None,  # transactions are explicit: transaction(), migrate()
            cached_statements=256,
        )
    except sqlite3.Error as exc:
        raise ConfigError(_open_error(path, exc)) from exc


def _open_error(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "not a database" in text:
        return f"{path} is not a SQLite database (or it is encrypted or badly damaged)"
    if "malformed" in text or "corrupt" in text:
        return f"the ledger database {path} is corrupt ({text}); restore it or sync a new replica"
    if "locked" in text or "busy" in text:
        return (
            f"the ledger database {path} stayed locked for over {BUSY_TIMEOUT_MS // 1000} s:"
            " is another Potluck process using this data directory?"
        )
    if "unable to open" in text:
        return f"cannot open the ledger database {path} ({text}): check the path and permissions"
    return f"cannot open the ledger database {path}: {text}"


def open_ledger(path: Path, genesis: Genesis, **ledger_kwargs: Any) -> Ledger:
    """A `Ledger` for `genesis` over the SQLite file at `path` (created if missing).

    Raises `GenesisError` if the file belongs to another swarm. Close it
    with ``ledger.backend.close()``.
    """
    backend = SqliteBackend(path)
    try:
        backend.claim_swarm(genesis.swarm_id)
        return Ledger(genesis, backend, **ledger_kwargs)
    except BaseException:
        backend.close()
        raise
