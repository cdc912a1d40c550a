"""What `potluck ledger status|verify|export` and `potluck wallet ...` do.

The ledger commands read a node's database read-only (safe next to the
running node); the wallet commands talk to any node over libp2p, signing
with the account key on this machine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from potluck.errors import ConfigError, MalformedEntry, PotluckError
from potluck.ledger.core import Ledger, MemoryBackend
from potluck.ledger.entry import Entry, decode_entry, verify_fraud_proof
from potluck.ledger.genesis import Genesis
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.ledger.wallet import RemoteReplica, Wallet
from potluck.p2p.identity import Identity


def ledger_path(data_dir: Path) -> Path:
    path = data_dir / LEDGER_FILE
    if not path.exists():
        raise ConfigError(f"no ledger in {data_dir}: start a node with --genesis there first")
    return path


def frontier_digest(frontier: dict[str, tuple[int, str]]) -> str:
    """One hash naming a frontier: equal on two replicas iff their frontiers are equal."""
    text = json.dumps(sorted((a, seq, h) for a, (seq, h) in frontier.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def status(data_dir: Path, genesis: Genesis) -> dict[str, Any]:
    """A summary of the node's replica, for humans (`--json` for scripts)."""
    with SqliteBackend(ledger_path(data_dir), readonly=True) as backend:
        backend.claim_swarm(genesis.swarm_id)
        ledger = Ledger(genesis, backend)
        frontier = ledger.frontier()
        final = 0
        for _seq, head in frontier.values():
            head_entry = backend.get(head)
            if head_entry is not None and ledger.is_final(head_entry):
                final += 1
        return {
            "swarm": genesis.name,
            "swarm_id": genesis.swarm_id,
            "entries": backend.entry_count(),
            "accounts": len(frontier),
            "final_heads": final,
            "forks": [
                {"account": f.author, "seq": f.seq, "entries": [f.first, f.second]}
                for f in ledger.forks()
            ],
            "frontier_digest": frontier_digest(frontier),
            "counters": ledger.counters(),
            "integrity_check": backend.integrity_check(),
        }


@dataclass
class VerifyReport:
    entries: int = 0
    bad: list[str] = field(default_factory=list)
    forks_checked: int = 0
    integrity: str = ""

    @property
    def ok(self) -> bool:
        return not self.bad and self.integrity == "ok"


def all_entries(backend: SqliteBackend) -> Iterator[Entry]:
    """Every stored entry in storage order (causal), read from its stored bytes."""
    after = 0
    while True:
        rows = backend.scan(after, 5000)
        if not rows:
            return
        for _, entry in rows:
            yield entry
        after = rows[-1][0]


def verify(
    data_dir: Path, genesis: Genesis, *, advance: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Re-check every stored entry from its bytes and rebuild the state from scratch.

    Each entry is decoded again from its stored bytes (canonical form, body),
    its signature checked, and all of them ingested into a fresh in-memory
    ledger. The rebuilt ledger must equal the stored one: balances, frontier,
    forks, the per-author summaries that sync compares and every account's
    receivable transfers (which the stored `to_account` column answers).
    Every fraud proof must verify, and SQLite's integrity check must say ok.
    `advance(done, total)` reports progress.
    """
    report = VerifyReport()
    with SqliteBackend(ledger_path(data_dir), readonly=True) as backend:
        backend.claim_swarm(genesis.swarm_id)
        stored = Ledger(genesis, backend)
        report.integrity = backend.integrity_check()
        total = backend.row_count()
        fresh = Ledger(genesis, MemoryBackend(), max_pending=total + 1)
        batch: list[Entry] = []

        def flush() -> None:
            decoded: list[Entry] = []
            for stored_entry in batch:
                try:
                    decoded.append(decode_entry(stored_entry.raw, stored_entry.signature))
                except MalformedEntry as exc:
                    report.bad.append(f"{stored_entry.hash}: {exc}")
            result = fresh.ingest(decoded)
            report.entries += len(batch)
            batch.clear()
            for rejected, error in result.rejected:
                if rejected is not None and error.code not in ("seq_gap", "unknown_source"):
                    report.bad.append(f"{rejected.hash}: {error}")
            if advance is not None:
                advance(report.entries, total)

        for entry in all_entries(backend):
            batch.append(entry)
            if len(batch) >= 2000:
                flush()
        flush()
        if fresh.pending:
            report.bad.append(f"{fresh.pending} entries depend on entries that are not stored")
        report.bad.extend(_compare(stored, fresh))
        for fork in fresh.forks():
            verify_fraud_proof(*fresh.fraud_proof(fork), swarm=genesis.swarm_id)
            report.forks_checked += 1
    return report


def _compare(stored: Ledger, fresh: Ledger) -> list[str]:
    """Where the stored database's answers differ from a rebuild from the bytes."""
    problems = []
    try:
        if fresh.state() != stored.state():
            problems.append("the stored balances, frontier or forks differ from a rebuild")
    except (PotluckError, ValueError, AssertionError) as exc:  # indexes naming missing rows
        problems.append(f"the stored indexes are inconsistent: {exc!r}")
        return problems
    summary = fresh.backend.summary()
    if summary != stored.backend.summary():
        problems.append("the stored author summaries (count, digest) differ from a rebuild")
    for author, row in summary.items():  # the seq and author columns, through chain()
        want = [e.hash for e in fresh.backend.chain(author, 0, row.count + 1)]
        if [e.hash for e in stored.backend.chain(author, 0, row.count + 1)] != want:
            problems.append(f"account {author}: the stored chain (seq order) differs")
    for account in fresh.backend.tips():
        want = [e.hash for e in fresh.receivable(account)]
        if [e.hash for e in stored.receivable(account)] != want:
            problems.append(f"account {account}: the stored receivable transfers differ")
    return problems


def export(data_dir: Path, genesis: Genesis, out: TextIO) -> int:
    """Write every entry as one JSON line `[canonical json, signature hex]`."""
    count = 0
    with SqliteBackend(ledger_path(data_dir), readonly=True) as backend:
        backend.claim_swarm(genesis.swarm_id)
        for entry in all_entries(backend):
            out.write(json.dumps(entry.wire()) + "\n")
            count += 1
    return count


def account_of(text: str) -> str:
    """An account from its hex public key or its libp2p peer ID."""
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text
    from potluck.p2p.announce import public_key_of

    try:
        key = public_key_of(text)
    except PotluckError:
        raise ConfigError(f"{text!r} is neither a hex account key nor a peer ID") from None
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


@asynccontextmanager
async def open_wallet(
    key: Identity,
    genesis: Genesis,
    peer: str,
    *,
    state_file: Path | None = None,
    timeout: float = 30.0,
) -> AsyncIterator[Wallet]:
    """A wallet for `key` that reads and writes through the node at address `peer`.

    The connection uses a throwaway libp2p identity, so the same key can be
    used here while a node runs with it.
    """
    from potluck.p2p.host import open_host, parse_multiaddr

    parse_multiaddr(peer)
    peer_id = peer.rsplit("/p2p/", 1)[-1]
    async with open_host(Identity.generate(), timeout=timeout) as host:
        access = RemoteReplica(host, peer_id, [peer], timeout=timeout)
        yield Wallet(
            key,
            genesis.swarm_id,
            access,
            validators=genesis.validators,
            state_file=state_file,
        )
