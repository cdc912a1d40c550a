"""A real ledger database for the dashboard's tests, and a swarm view to go with it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from potluck.dashboard import LedgerFileSource
from potluck.ledger.entry import Entry
from potluck.ledger.store import LEDGER_FILE, open_ledger
from potluck.p2p.announce import peer_id_of_account
from potluck.testing.ledger import LedgerWorkload
from potluck.wire import ServerInfo

NOW = 1_795_830_100.0
"""The dashboard's clock in these tests (seconds); the workload's entries are just before."""


@dataclass
class Built:
    """The workload, the file it was written to, and the entries tests look for."""

    work: LedgerWorkload
    path: Path
    fork: tuple[Entry, Entry]
    slash: Entry
    mint: Entry
    checkpoint: Entry
    audit: Entry
    servers: list[ServerInfo]


def server_info(
    account: str, start: int, end: int, *, model: str, validator: bool = False
) -> ServerInfo:
    return ServerInfo(
        peer_id=peer_id_of_account(account),
        addrs=("/ip4/127.0.0.1/tcp/4001",),
        model=model,
        start=start,
        end=end,
        throughput=10.0 + start,
        free_cache_tokens=4096,
        version="0.1.0",
        expires_at=NOW + 15,
        load=start % 3,
        validator=validator,
    )


def build(folder: Path) -> Built:
    """Grants, sends and receives, a mint, a capacity audit, a slash with evidence of a
    wrong output, a fork (a double spend) and a checkpoint, in a SQLite ledger file."""
    work = LedgerWorkload(validators=2, accounts=4, seed="dashboard", name="dash")
    v0, v1 = work.validators
    a = work.accounts
    work.grant_all(1000)
    work.random_activity(30, random.Random(5))
    mint = work.mint(v0, a[1], 77, epoch=3)
    work.receive(a[1], mint)
    details = {
        "epoch": 3,
        "start": 0,
        "end": 3,
        "probes": 4,
        "answered": 4,
        "milli_tokens_per_s": 12000,
        "mismatches": 1,
    }
    audit = work.append(
        v0, "audit", {"server": a[1].account, "result": "capacity", "details": details}
    )
    evidence = {"case": "case-1", "accuser": v1.account}
    slash = work.append(
        v1,
        "slash",
        {"account": a[2].account, "reason": "wrong_output", "amount": 100, "evidence": evidence},
    )
    fork = work.fork(a[3])
    checkpoint = work.checkpoint(v0)
    work.checkpoint(v1)
    path = folder / LEDGER_FILE
    ledger = open_ledger(path, work.genesis)
    try:
        report = ledger.ingest(work.entries)
        assert not report.rejected, report.rejected
    finally:
        ledger.backend.close()
    model = work.genesis.model_identity
    servers = [
        server_info(a[1].account, 0, 3, model=model),
        server_info(a[2].account, 3, 6, model=model),
        server_info(v0.account, 0, 8, model=model, validator=True),
        server_info(a[0].account, 0, 8, model="b" * 64),  # another model: not shown
    ]
    return Built(work, path, fork, slash, mint, checkpoint, audit, servers)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("dashboard-ledger"))


@pytest.fixture
def source(built: Built) -> Iterator[LedgerFileSource]:
    with LedgerFileSource(
        built.path,
        built.work.genesis,
        servers=built.servers,
        num_blocks=8,
        node_id=built.servers[0].peer_id,
        clock=lambda: NOW,
    ) as src:
        yield src
