"""`SqliteBackend`: the same ledger as `MemoryBackend`, durable, atomic, inspectable."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from potluck.errors import ConfigError, GenesisError, LedgerError
from potluck.ledger import store
from potluck.ledger.core import Backend, Ledger, MemoryBackend
from potluck.ledger.entry import ZERO_HASH, Entry, make_entry
from potluck.ledger.genesis import Genesis
from potluck.ledger.store import SqliteBackend, open_ledger
from potluck.p2p.identity import Identity

MODEL = "ab" * 32


@dataclass
class Author:
    """An identity and the head of the chain the test extends."""

    identity: Identity
    key: str
    seq: int = 0
    head: str = ZERO_HASH
    balance: int = 0


class Book:
    """Writes valid entries for one swarm, tracking each author's head."""

    def __init__(self, genesis: Genesis) -> None:
        self.swarm = genesis.swarm_id
        self.entries: list[Entry] = []
        self._time = 1_795_830_000_000

    def write(
        self, author: Author, kind: str, body: dict[str, Any], balance: int, *, extend: bool = True
    ) -> Entry:
        self._time += 1
        entry = make_entry(
            author.identity,
            swarm=self.swarm,
            seq=author.seq + 1,
            prev=author.head,
            time=self._time,
            kind=kind,
            body=body,
            balance=balance,
        )
        self.entries.append(entry)
        if extend:
            author.seq, author.head, author.balance = entry.seq, entry.hash, balance
        return entry

    def grant(self, validator: Author, to: Author, amount: int) -> Entry:
        return self.write(validator, "grant", {"to": to.key, "amount": amount}, validator.balance)

    def send(self, author: Author, to: Author, amount: int, *, extend: bool = True) -> Entry:
        body = {"to": to.key, "amount": amount}
        return self.write(author, "send", body, author.balance - amount, extend=extend)

    def receive(self, author: Author, source: Entry) -> Entry:
        body = {"source": source.hash}
        return self.write(author, "receive", body, author.balance + source.amount)


def new_author() -> Author:
    identity = Identity.generate()
    return Author(identity, identity.public_bytes.hex())


@dataclass
class Swarm:
    genesis: Genesis
    validator: Author
    accounts: list[Author]
    book: Book

    @property
    def entries(self) -> list[Entry]:
        return self.book.entries


def make_swarm(accounts: int = 3, name: str = "store-test") -> Swarm:
    validator = new_author()
    genesis = Genesis(
        name=name, model_name="tiny", model_identity=MODEL, validators=(validator.key,)
    )
    return Swarm(genesis, validator, [new_author() for _ in range(accounts)], Book(genesis))


@pytest.fixture
def swarm() -> Swarm:
    """A grant to each of 3 accounts, receives, sends among them, a fork and a checkpoint."""
    sw = make_swarm()
    book, v, (a, b, c) = sw.book, sw.validator, sw.accounts
    grants = [book.grant(v, who, 1000) for who in (a, b, c)]
    for who, grant in zip((a, b, c), grants, strict=True):
        book.receive(who, grant)
    to_b = book.send(a, b, 300)
    to_c = book.send(b, c, 50)
    book.receive(b, to_b)
    book.receive(c, to_c)
    to_a = book.send(c, a, 25)
    book.receive(a, to_a)
    book.send(a, c, 100, extend=False)  # a double spend: a second entry at a's next seq
    book.send(a, b, 200)
    frontier = {w.key: [w.seq, w.head] for w in (a, b, c)}
    book.write(v, "checkpoint", {"frontier": frontier}, 0)
    return sw


def ingest_all(ledger: Ledger, entries: Sequence[Entry], batch: int) -> None:
    for i in range(0, len(entries), batch):
        ledger.ingest(entries[i : i + batch])


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[SqliteBackend]:
    with SqliteBackend(tmp_path / "ledger.db") as backend:
        yield backend


def assert_same_backends(a: Backend, b: Backend, authors: Sequence[str]) -> None:
    """Every read of the Backend protocol answers the same on both."""
    assert a.all_hashes() == b.all_hashes()
    assert a.tips() == b.tips()
    assert a.summary() == b.summary()
    assert a.forks() == b.forks()
    assert a.counters() == b.counters()
    for author in authors:
        assert a.fork_seq(author) == b.fork_seq(author)
        assert a.chain(author, 0, 1000) == b.chain(author, 0, 1000)
        assert a.chain(author, 2, 3) == b.chain(author, 2, 3)
        assert a.incoming(author) == b.incoming(author)
        assert a.received_sources(author) == b.received_sources(author)
        for seq in range(1, a.tips().get(author, 0) + 1):
            assert sorted(a.hashes_at(author, seq)) == sorted(b.hashes_at(author, seq))
        for kind in ("grant", "send", "receive", "checkpoint"):
            assert a.latest(author, kind) == b.latest(author, kind)
        for source in a.received_sources(author):
            assert a.receives_of(author, source) == b.receives_of(author, source)


# ---- same ledger as MemoryBackend ----------------------------------------------------


def test_same_state_as_memory(swarm: Swarm, writer: SqliteBackend) -> None:
    memory = Ledger(swarm.genesis, MemoryBackend())
    sqlite = Ledger(swarm.genesis, writer)
    memory.ingest(swarm.entries)
    report = sqlite.ingest(swarm.entries)

    state = sqlite.state()
    assert state == memory.state()
    assert state.entries == {e.hash for e in swarm.entries}
    assert len(report.forks) == 1 and state.forks == frozenset(report.forks)
    assert sqlite.account(swarm.accounts[0].key).frozen
    assert sqlite.account(swarm.accounts[1].key) == memory.account(swarm.accounts[1].key)
    authors = [swarm.validator.key, *(w.key for w in swarm.accounts)]
    assert_same_backends(memory.backend, writer, authors)
    received = swarm.entries[3]  # a receive of the first account, below the checkpoint
    assert sqlite.is_final(received) and memory.is_final(received)
    assert writer.entry_count() == len(swarm.entries)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_delivery_order_gives_the_same_state(swarm: Swarm, tmp_path: Path, seed: int) -> None:
    reference = Ledger(swarm.genesis, MemoryBackend())
    reference.ingest(swarm.entries)
    shuffled = list(swarm.entries)
    random.Random(seed).shuffle(shuffled)
    replayed = shuffled + shuffled[:5]  # duplicates too
    memory = Ledger(swarm.genesis, MemoryBackend())
    with SqliteBackend(tmp_path / "ledger.db") as backend:
        sqlite = Ledger(swarm.genesis, backend)
        ingest_all(memory, replayed, batch=seed)
        ingest_all(sqlite, replayed, batch=seed)
        assert sqlite.pending == 0
        assert sqlite.state() == reference.state() == memory.state()
        assert sqlite.counters() == memory.counters()
        authors = [swarm.validator.key, *(w.key for w in swarm.accounts)]
        assert_same_backends(memory.backend, backend, authors)


def test_fork_is_stored_as_a_fraud_proof(swarm: Swarm, writer: SqliteBackend) -> None:
    ledger = Ledger(swarm.genesis, writer)
    ledger.ingest(swarm.entries)
    (fork,) = ledger.forks()
    first, second = ledger.fraud_proof(fork)
    assert first.seq == second.seq == fork.seq and first.hash < second.hash
    assert len(writer.hashes_at(fork.author, fork.seq)) == 2
    assert writer.fork_seq(fork.author) == fork.seq
    assert writer.summary()[fork.author].count == writer.summary()[fork.author].top + 1


# ---- durability and atomicity ----------------------------------------------------------


def test_data_survive_close_and_reopen(swarm: Swarm, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteBackend(path) as backend:
        ledger = Ledger(swarm.genesis, backend)
        ingest_all(ledger, swarm.entries[::-1], batch=4)  # parks, rejects, forks: counters
        before, counters, summary = ledger.state(), ledger.counters(), backend.summary()
    assert counters["accepted"] == len(swarm.entries) and counters["rejected.seq_gap"] > 0

    with SqliteBackend(path) as reopened:
        again = Ledger(swarm.genesis, reopened)
        assert again.state() == before
        assert again.counters() == counters
        assert reopened.summary() == summary
        entry = swarm.entries[3]
        stored = reopened.get(entry.hash)
        assert stored is not None
        assert (stored.raw, stored.signature, stored.body, stored.swarm) == (
            entry.raw,
            entry.signature,
            entry.body,
            entry.swarm,
        )
        report = again.ingest(swarm.entries[:2])
        assert [type(err).__name__ for _, err in report.rejected] == ["ReplayedEntry"] * 2
        assert reopened.counters()["rejected.replayed"] == 2


def test_a_batch_that_fails_midway_leaves_nothing(
    swarm: Swarm, writer: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(swarm.genesis, writer)
    ledger.ingest(swarm.entries[:3])  # the grants
    before = (ledger.state(), writer.counters(), writer.summary(), writer.entry_count())
    batch = swarm.entries[3:]
    calls = 0
    real_insert = writer.insert

    def failing_insert(entry: Entry) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("disk on fire")
        real_insert(entry)

    monkeypatch.setattr(writer, "insert", failing_insert)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ledger.ingest(batch)
    assert calls == 3
    assert (ledger.state(), writer.counters(), writer.summary(), writer.entry_count()) == before
    assert all(writer.get(e.hash) is None for e in batch)  # nor left in the cache
    with SqliteBackend(writer.path, readonly=True) as reader:
        assert reader.entry_count() == 3

    monkeypatch.setattr(writer, "insert", real_insert)
    report = Ledger(swarm.genesis, writer).ingest(batch)
    assert len(report.accepted) == len(batch)
    assert writer.entry_count() == len(swarm.entries)


def test_writes_need_a_transaction(swarm: Swarm, writer: SqliteBackend) -> None:
    with pytest.raises(LedgerError, match="inside transaction"):
        writer.insert(swarm.entries[0])
    with pytest.raises(LedgerError, match="inside transaction"):
        writer.count("accepted")
    assert writer.entry_count() == 0


def test_nested_transaction_undoes_only_itself(swarm: Swarm, writer: SqliteBackend) -> None:
    first, second = swarm.entries[:2]
    with writer.transaction():
        writer.insert(first)
        writer.count("outer")
        with pytest.raises(ValueError), writer.transaction():
            writer.insert(second)
            writer.count("inner")
            raise ValueError("undo me")
        assert writer.get(second.hash) is None
        with writer.transaction():
            writer.count("kept")
    assert writer.all_hashes() == {first.hash}
    assert writer.counters() == {"outer": 1, "kept": 1}
    assert writer.summary()[first.author].count == 1


def test_one_thread_at_a_time(writer: SqliteBackend) -> None:
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with writer.transaction():
                pass
        except LedgerError as exc:
            errors.append(exc)

    with writer.transaction():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "two threads" in str(errors[0])


def test_a_second_writer_waiting_too_long_gets_a_ledger_error(
    swarm: Swarm, writer: SqliteBackend
) -> None:
    with SqliteBackend(writer.path) as other:
        other.db.execute("PRAGMA busy_timeout = 50")
        with writer.transaction():
            writer.insert(swarm.entries[0])
            with pytest.raises(LedgerError, match="another process"), other.transaction():
                pass
        assert other.entry_count() == 1


# ---- SQLite done properly ------------------------------------------------------------


def test_wal_and_integrity(swarm: Swarm, writer: SqliteBackend) -> None:
    Ledger(swarm.genesis, writer).ingest(swarm.entries)
    assert writer.integrity_check() == "ok"
    assert writer.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert writer.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_indexes_serve_the_hot_queries(writer: SqliteBackend) -> None:
    def plan(sql: str, params: Sequence[Any]) -> str:
        rows = writer.db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        return " ".join(str(row[-1]) for row in rows)

    key = "ab" * 32
    assert "entries_author_seq" in plan(store._HASHES_AT, (key, 1))
    assert "entries_author_source" in plan(store._RECEIVES_OF, (key, key))
    assert "entries_author_source" in plan(store._RECEIVED, (key,))
    assert "entries_to_account" in plan(store._INCOMING, (key,))
    assert "entries_author_kind_seq" in plan(store._LATEST, (key, "send"))
    assert "entries_author_seq" in plan(store._CHAIN, (key, 0, 10))
    assert "entries_kind_time" in plan(store._BY_KIND, ("receipt", 0))
    assert "entries_slash_account" in plan(store._SLASHES_OF, (key,))


def test_migrations_apply_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.db"
    with SqliteBackend(path) as first:
        assert first.applied_migrations == ["0001_entries", "0002_kinds_and_slashes"]
    with SqliteBackend(path) as again:
        assert again.applied_migrations == []

    def add_notes(db: sqlite_utils.Database) -> None:
        db.create_table("notes", {"id": int, "text": str}, pk="id")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, ("0003_notes", add_notes)])
    with SqliteBackend(path) as migrated:
        assert migrated.applied_migrations == ["0003_notes"]
        assert "notes" in migrated.db.table_names()
        rows = migrated.db.execute("SELECT name, applied_at FROM migrations ORDER BY name")
        names = [(name, isinstance(at, int) and at > 0) for name, at in rows]
        assert names == [
            ("0001_entries", True),
            ("0002_kinds_and_slashes", True),
            ("0003_notes", True),
        ]
    with SqliteBackend(path) as again:
        assert again.applied_migrations == []

    monkeypatch.undo()  # an older Potluck does not know 0003_notes
    with pytest.raises(ConfigError, match="newer version"):
        SqliteBackend(path)


def test_cli_shows_the_tables(swarm: Swarm, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteBackend(path) as backend:
        Ledger(swarm.genesis, backend).ingest(swarm.entries)
    cli = Path(sys.executable).parent / "sqlite-utils"
    result = subprocess.run(
        [str(cli), "tables", str(path), "--counts"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    counts = {row["table"]: row["count"] for row in json.loads(result.stdout)}
    assert counts["entries"] == len(swarm.entries)
    assert counts["forks"] == 1
    assert counts["authors"] == 4
    assert counts["migrations"] == 2


# ---- genesis, read-only access and bad files ------------------------------------------


def test_open_ledger_refuses_another_swarm(swarm: Swarm, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path, swarm.genesis)
    assert isinstance(ledger.backend, SqliteBackend)
    assert ledger.backend.swarm_id == swarm.genesis.swarm_id
    ledger.ingest(swarm.entries[:2])
    ledger.backend.close()

    again = open_ledger(path, swarm.genesis)  # same genesis: fine
    assert len(again.state().entries) == 2
    assert isinstance(again.backend, SqliteBackend)
    again.backend.close()

    other = make_swarm(name="another").genesis
    message = f"belongs to swarm {swarm.genesis.swarm_id}, not {other.swarm_id}"
    with pytest.raises(GenesisError, match=message):
        open_ledger(path, other)
    with SqliteBackend(path, readonly=True) as reader, pytest.raises(GenesisError):
        reader.claim_swarm(other.swarm_id)


def test_readonly_reads_while_the_writer_writes(swarm: Swarm, writer: SqliteBackend) -> None:
    ledger = Ledger(swarm.genesis, writer)
    ledger.ingest(swarm.entries[:3])
    with SqliteBackend(writer.path, readonly=True) as reader:
        with writer.transaction():
            writer.insert(swarm.entries[3])  # not committed yet
            assert reader.entry_count() == 3
            assert reader.get(swarm.entries[3].hash) is None
            assert Ledger(swarm.genesis, reader).state().entries == {
                e.hash for e in swarm.entries[:3]
            }
        assert reader.entry_count() == 4
        assert reader.get(swarm.entries[3].hash) == swarm.entries[3]
        assert reader.integrity_check() == "ok"

        with pytest.raises(LedgerError, match="read-only"):
            Ledger(swarm.genesis, reader).ingest(swarm.entries[4:])
        with pytest.raises(LedgerError, match="read-only"):
            reader.insert(swarm.entries[4])
        with pytest.raises(sqlite3.OperationalError):
            reader.db.execute("DELETE FROM entries")
    assert writer.entry_count() == 4


def test_history_and_recent_are_newest_first(swarm: Swarm, writer: SqliteBackend) -> None:
    ledger = Ledger(swarm.genesis, writer)
    for entry in swarm.entries:
        ledger.ingest([entry])
    a = swarm.accounts[0].key
    own = [e for e in swarm.entries if e.author == a]
    newest_first = sorted(own, key=lambda e: (e.seq, e.hash), reverse=True)
    assert writer.history(a) == newest_first
    assert writer.history(a, limit=2) == newest_first[:2]
    assert writer.history(a, before_seq=3) == [e for e in newest_first if e.seq < 3]
    assert writer.history("cd" * 32) == []
    assert writer.recent(4) == swarm.entries[::-1][:4]
    assert writer.recent(0) == []
    assert writer.entry_count() == len(swarm.entries)


def test_files_that_are_not_ledgers_are_config_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some text" * 200)
    with pytest.raises(ConfigError, match="not a SQLite database"):
        SqliteBackend(junk)
    with pytest.raises(ConfigError, match="not a SQLite database"):
        SqliteBackend(junk, readonly=True)

    foreign = tmp_path / "foreign.db"
    sqlite_utils.Database(foreign)["photos"].insert({"id": 1})
    with pytest.raises(ConfigError, match="some other program"):
        SqliteBackend(foreign)
    with pytest.raises(ConfigError, match="not a Potluck ledger"):
        SqliteBackend(foreign, readonly=True)

    with pytest.raises(ConfigError, match="cannot open"):
        SqliteBackend(tmp_path / "missing.db", readonly=True)
    with pytest.raises(ConfigError, match="cannot open"):
        SqliteBackend(tmp_path / "no" / "such" / "dir" / "ledger.db")


def test_a_failing_migration_applies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.db"
    SqliteBackend(path).close()

    def half_done(db: sqlite_utils.Database) -> None:
        db.create_table("half", {"id": int}, pk="id")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, ("0003_half", half_done)])
    with pytest.raises(RuntimeError, match="migration bug"):
        SqliteBackend(path)
    monkeypatch.undo()
    with SqliteBackend(path) as backend:
        assert backend.applied_migrations == []
        assert "half" not in backend.db.table_names()
