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
from potluck.ledger.core import AccountState, Ledger, MemoryBackend, slashed_points
from potluck.ledger.entry import TRANSFER_KINDS, Entry, decode_entry, verify_fraud_proof
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
    ledger. The rebuilt ledger must equal the stored one: balances, slashed
    points (which the slashes' index answers), frontier, forks, the
    per-author summaries that sync compares and every account's receivable
    transfers (which the stored `to_account` column answers).
    Every fraud proof must verify, the stored balances and slashes must add up
    (`audit_balances`), and SQLite's integrity check must say ok.
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
        try:
            report.bad.extend(audit_balances(stored).problems)
        except (PotluckError, ValueError, AssertionError) as exc:  # indexes naming missing rows
            report.bad.append(f"the balances cannot be audited: {exc!r}")
        for fork in fresh.forks():
            verify_fraud_proof(*fresh.fraud_proof(fork), swarm=genesis.swarm_id)
            report.forks_checked += 1
    return report


def _compare(stored: Ledger, fresh: Ledger) -> list[str]:
    """Where the stored database's answers differ from a rebuild from the bytes."""
    problems = []
    try:
        if fresh.state() != stored.state():
            problems.append("the stored balances, slashes, frontier or forks differ from a rebuild")
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


@dataclass(frozen=True)
class AccountAudit:
    """One account's points, recomputed from the entries of its chain.

    `grants_received`, `mints_received` and `sends_received` (sends and
    tickets) are what the chain's receives took, `spent` what its sends and
    tickets paid; `balance`, `slashed` and `available` are what the ledger
    reports."""

    account: str
    grants_received: int
    mints_received: int
    sends_received: int
    spent: int
    slashed: int
    balance: int
    available: int


@dataclass
class BalanceAudit:
    """What `audit_balances` found: one row per account, totals, and the problems."""

    rows: list[AccountAudit] = field(default_factory=list)
    granted: int = 0
    minted: int = 0
    balances: int = 0
    unreceived: int = 0
    disputed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_balances(ledger: Ledger) -> BalanceAudit:
    """Check every balance and slash against the stored entries alone.

    Reads every stored entry (its bytes, not the indexes) and, for every
    account, walks its chain from the head the ledger reports (the entry
    before the fork for a frozen account) back to seq 1. It checks:

    - each account's reported balance equals what its chain received (the
      amounts of the grants, mints, sends and tickets its receives name)
      minus what it spent (its sends and tickets);
    - each account's reported `slashed` equals the sum, over the distinct
      cases of the validators' slashes against it, of each case's largest
      amount;
    - conservation: the sum of balances plus the transfers on those chains
      that their recipient's chain has not received equals the grants plus
      the mints on those chains, plus the transfers that accounts received
      from a frozen account's disputed entries (after its fork: `disputed`).

    A ledger whose entries all passed the rules holds all three; `problems`
    lists each failure, and is empty then.
    """
    audit = BalanceAudit()
    backend = ledger.backend
    stored = {h: e for h in backend.all_hashes() if (e := backend.get(h)) is not None}
    chains: dict[str, list[Entry]] = {}
    states: dict[str, AccountState] = {}
    slashes: dict[str, list[Entry]] = {}
    for entry in stored.values():
        if entry.kind == "slash":
            slashes.setdefault(str(entry.body["account"]), []).append(entry)
    accounts = sorted({e.author for e in stored.values()} | set(slashes))
    for account in accounts:
        state = ledger.account(account)
        states[account] = state
        chain: list[Entry] = []
        current = stored.get(state.head) if state.seq else None
        while current is not None:
            chain.append(current)
            current = stored.get(current.prev) if current.seq > 1 else None
        chain.reverse()
        if [e.seq for e in chain] != list(range(1, state.seq + 1)) or any(
            e.author != account for e in chain
        ):
            audit.problems.append(
                f"account {account}: its chain from head {state.head[:12]} (seq {state.seq})"
                " does not lead back to seq 1"
            )
        chains[account] = chain
    on_chains = {e.hash for chain in chains.values() for e in chain}
    received: set[str] = set()  # each transfer counted once, by its recipient's chain
    for account in accounts:
        chain = chains[account]
        got = {"grant": 0, "mint": 0, "send": 0, "ticket": 0}
        spent = 0
        for entry in chain:
            if entry.kind in ("send", "ticket"):
                spent += entry.amount
            elif entry.kind == "receive":
                source = stored.get(str(entry.source))
                if source is None or source.to != account:
                    audit.problems.append(
                        f"account {account}: receive {entry.hash[:12]} takes"
                        f" {str(entry.source)[:12]}, which is not a stored transfer to it"
                    )
                    continue
                got[source.kind] += source.amount
                if source.hash in received:
                    audit.problems.append(
                        f"account {account}: receives {source.hash[:12]} more than once"
                    )
                received.add(source.hash)
                if source.hash not in on_chains:
                    audit.disputed += source.amount
        state = states[account]
        slashed = slashed_points(slashes.get(account, ()), ledger.validators)
        row = AccountAudit(
            account=account,
            grants_received=got["grant"],
            mints_received=got["mint"],
            sends_received=got["send"] + got["ticket"],
            spent=spent,
            slashed=slashed,
            balance=state.balance,
            available=state.balance - slashed,
        )
        audit.rows.append(row)
        total = row.grants_received + row.mints_received + row.sends_received - row.spent
        if total != state.balance:
            audit.problems.append(
                f"account {account}: balance {state.balance} is not its receives minus its"
                f" spending ({total})"
            )
        if slashed != state.slashed:
            audit.problems.append(
                f"account {account}: slashed {state.slashed} is not what validators' slashes"
                f" against it take ({slashed})"
            )
        audit.balances += state.balance
    for chain in chains.values():
        for entry in chain:
            if entry.kind == "grant":
                audit.granted += entry.amount
            elif entry.kind == "mint":
                audit.minted += entry.amount
            if entry.kind in TRANSFER_KINDS and entry.hash not in received:
                audit.unreceived += entry.amount
    if audit.balances + audit.unreceived != audit.granted + audit.minted + audit.disputed:
        audit.problems.append(
            f"points are not conserved: balances {audit.balances} + not received"
            f" {audit.unreceived} != granted {audit.granted} + minted {audit.minted}"
            f" + from disputed entries {audit.disputed}"
        )
    return audit


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
