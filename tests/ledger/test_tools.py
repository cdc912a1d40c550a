"""`potluck ledger status|verify|export` on real ledger databases, and account parsing."""

from __future__ import annotations

import io
import json
import random
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from potluck.errors import ConfigError
from potluck.ledger import tools
from potluck.ledger.entry import Entry, canonical, decode_wire
from potluck.ledger.store import open_ledger
from potluck.p2p.identity import Identity
from potluck.testing.ledger import LedgerWorkload


@dataclass(frozen=True)
class Setup:
    work: LedgerWorkload
    original: Entry  # A's send at seq 2
    double: Entry  # A's other send at seq 2
    last: Entry  # a grant nothing depends on, written last


@pytest.fixture(scope="module")
def setup() -> Setup:
    work = LedgerWorkload(validators=2, accounts=4, seed="tools")
    a, b, c, _ = work.accounts
    work.grant_all(100)
    work.send(a, b, 10)
    original, double = work.fork(a, to=c)
    work.random_activity(20, random.Random(3))
    last = work.grant(work.validators[0], c, 5)
    return Setup(work, original, double, last)


def build(data_dir: Path, work: LedgerWorkload, entries: list[Entry]) -> Path:
    """A node's data directory whose ledger holds `entries` (delivered in that order)."""
    data_dir.mkdir(parents=True)
    ledger = open_ledger(data_dir / tools.LEDGER_FILE, work.genesis)
    try:
        ledger.ingest(entries)
        assert ledger.pending == 0
    finally:
        ledger.backend.close()  # type: ignore[attr-defined]
    return data_dir


@pytest.fixture
def good(setup: Setup, tmp_path: Path) -> Path:
    return build(tmp_path / "good", setup.work, setup.work.entries)


def tamper(data_dir: Path, sql: str, *params: object) -> None:
    """Change the database behind the ledger's back."""
    with sqlite3.connect(data_dir / tools.LEDGER_FILE) as conn:
        assert conn.execute(sql, params).rowcount >= 1
    conn.close()


# ---- status -------------------------------------------------------------------------


def test_status_summarises_the_replica(setup: Setup, good: Path) -> None:
    work = setup.work
    status = tools.status(good, work.genesis)
    assert status["swarm_id"] == work.swarm and status["swarm"] == work.genesis.name
    assert status["entries"] == len(work.entries)
    assert status["accounts"] == len(work.validators) + len(work.accounts)
    assert status["final_heads"] == 0  # no validator signed a checkpoint
    assert status["forks"] == [
        {
            "account": work.key(0),
            "seq": 2,
            "entries": sorted([setup.original.hash, setup.double.hash]),
        }
    ]
    assert status["integrity_check"] == "ok"
    assert status["counters"]["accepted"] == len(work.entries)
    assert status["counters"]["forks"] == 1
    json.dumps(status)  # `--json` prints it as is


def test_frontier_digest_names_the_entries_not_their_arrival(
    setup: Setup, good: Path, tmp_path: Path
) -> None:
    work = setup.work
    shuffled = list(work.entries)
    random.Random(1).shuffle(shuffled)
    other = build(tmp_path / "shuffled", work, shuffled)
    lacking = build(tmp_path / "lacking", work, [e for e in work.entries if e != setup.last])

    digest = tools.status(good, work.genesis)["frontier_digest"]
    assert tools.status(other, work.genesis)["frontier_digest"] == digest
    assert tools.status(lacking, work.genesis)["frontier_digest"] != digest
    assert tools.status(lacking, work.genesis)["entries"] == len(work.entries) - 1


def test_frontier_digest_is_order_free_and_exact() -> None:
    one = {"a" * 64: (3, "1" * 64), "b" * 64: (1, "2" * 64)}
    assert tools.frontier_digest(one) == tools.frontier_digest(dict(reversed(one.items())))
    assert tools.frontier_digest(one) != tools.frontier_digest({**one, "b" * 64: (1, "3" * 64)})
    assert tools.frontier_digest(one) != tools.frontier_digest({"a" * 64: (3, "1" * 64)})


# ---- verify -------------------------------------------------------------------------


def test_verify_passes_a_good_database(setup: Setup, good: Path) -> None:
    progress: list[tuple[int, int]] = []
    report = tools.verify(good, setup.work.genesis, advance=lambda n, t: progress.append((n, t)))
    assert report.ok, report.bad
    assert report.entries == len(setup.work.entries)
    assert (report.bad, report.forks_checked, report.integrity) == ([], 1, "ok")
    assert progress[-1] == (len(setup.work.entries),) * 2


def test_verify_finds_a_rewritten_entry(setup: Setup, good: Path) -> None:
    entry = setup.work.chains[setup.work.key(1)][1]
    content = json.loads(entry.raw)
    content["time"] += 1  # still a canonical entry, but not the one its author signed
    tamper(
        good, "UPDATE entries SET raw = ? WHERE hash = ?", canonical(content).decode(), entry.hash
    )
    report = tools.verify(good, setup.work.genesis)
    assert not report.ok
    assert any("is not signed by" in line for line in report.bad), report.bad
    assert report.integrity == "ok"  # SQLite itself sees nothing wrong


def test_verify_finds_an_entry_that_is_not_canonical(setup: Setup, good: Path) -> None:
    entry = setup.work.chains[setup.work.key(2)][0]
    tamper(good, "UPDATE entries SET raw = ? WHERE hash = ?", entry.raw.decode() + " ", entry.hash)
    report = tools.verify(good, setup.work.genesis)
    assert not report.ok
    assert any(entry.hash in line and "canonical" in line for line in report.bad), report.bad


def test_verify_finds_a_dropped_fork_record(setup: Setup, good: Path) -> None:
    tamper(good, "DELETE FROM forks")
    report = tools.verify(good, setup.work.genesis)
    assert not report.ok
    assert any("differ from a rebuild" in line for line in report.bad), report.bad


def _bounded(limit: int) -> Callable[[int, int], None]:
    def advance(done: int, total: int) -> None:
        assert done <= total <= limit, f"verify read {done} entries of {total} stored"

    return advance


def test_verify_reports_a_seq_column_that_disagrees_with_the_entry(
    setup: Setup, good: Path
) -> None:
    entry = setup.work.chains[setup.work.key(1)][1]
    tamper(good, "UPDATE entries SET seq = seq + 100 WHERE hash = ?", entry.hash)
    # `advance` stops the endless loop instead of letting the test hang
    report = tools.verify(good, setup.work.genesis, advance=_bounded(len(setup.work.entries)))
    assert not report.ok


class _Bounded(io.StringIO):
    """An output that refuses more than `limit` lines."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, text: str) -> int:
        assert self.getvalue().count("\n") < self.limit, "export wrote more lines than entries"
        return super().write(text)


def test_export_ends_when_a_seq_column_disagrees_with_the_entry(setup: Setup, good: Path) -> None:
    entry = setup.work.chains[setup.work.key(1)][1]
    tamper(good, "UPDATE entries SET seq = seq + 100 WHERE hash = ?", entry.hash)
    out = _Bounded(len(setup.work.entries))
    assert tools.export(good, setup.work.genesis, out) == len(setup.work.entries)


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM entries WHERE hash = '{last}'",
        "UPDATE authors SET top = top + 1 WHERE author = '{author}'",
    ],
    ids=["row-deleted", "top-raised"],
)
def test_verify_reports_a_summary_past_the_stored_entries(
    setup: Setup, good: Path, sql: str
) -> None:
    tamper(good, sql.format(last=setup.last.hash, author=setup.last.author))
    report = tools.verify(good, setup.work.genesis)
    assert not report.ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE entries SET to_account = '{other}' WHERE hash = '{entry}'",
        "UPDATE authors SET digest = '{zero}' WHERE author = '{author}'",
        "UPDATE authors SET count = count + 1 WHERE author = '{author}'",
    ],
    ids=["to-account-column", "summary-digest", "summary-count"],
)
def test_verify_reports_columns_that_disagree_with_the_entry(
    setup: Setup, good: Path, sql: str
) -> None:
    entry = setup.last  # a grant: it has a balance, a recipient and an author row
    tamper(
        good,
        sql.format(entry=entry.hash, other="f" * 64, zero="0" * 64, author=entry.author),
    )
    report = tools.verify(good, setup.work.genesis)
    assert not report.ok


# ---- export -------------------------------------------------------------------------


def test_export_writes_every_entry_as_a_wire_line(setup: Setup, good: Path) -> None:
    out = io.StringIO()
    count = tools.export(good, setup.work.genesis, out)
    lines = out.getvalue().splitlines()
    assert count == len(lines) == len(setup.work.entries)
    entries = [decode_wire(json.loads(line)) for line in lines]
    assert {e.hash for e in entries} == {e.hash for e in setup.work.entries}
    assert {e.signature for e in entries} == {e.signature for e in setup.work.entries}
    # author by author, in seq order: replaying the file in order stores everything
    per_author: dict[str, list[int]] = {}
    for entry in entries:
        per_author.setdefault(entry.author, []).append(entry.seq)
    assert all(seqs == sorted(seqs) for seqs in per_author.values())


def test_export_of_a_copy_matches(setup: Setup, good: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(good, copy)
    first, second = io.StringIO(), io.StringIO()
    tools.export(good, setup.work.genesis, first)
    tools.export(copy, setup.work.genesis, second)
    assert first.getvalue() == second.getvalue()


# ---- arguments ----------------------------------------------------------------------


def test_account_of_takes_a_hex_key_or_a_peer_id() -> None:
    identity = Identity.generate()
    account = identity.public_bytes.hex()
    assert tools.account_of(account) == account
    assert tools.account_of(identity.peer_id) == account


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice",
        "g" * 64,
        "ab" * 31,
        "12D3KooWjunkjunkjunk",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # an RSA peer ID: no key inside
    ],
)
def test_account_of_rejects_anything_else(text: str) -> None:
    with pytest.raises(ConfigError):
        tools.account_of(text)


def test_a_folder_without_a_ledger_is_a_config_error(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ledger"):
        tools.ledger_path(tmp_path)
    with pytest.raises(ConfigError):
        tools.status(tmp_path, setup.work.genesis)
    with pytest.raises(ConfigError):
        tools.verify(tmp_path, setup.work.genesis)
    assert not (tmp_path / tools.LEDGER_FILE).exists()  # nothing was created


def test_ledger_path_names_the_database(good: Path) -> None:
    assert tools.ledger_path(good) == good / tools.LEDGER_FILE
