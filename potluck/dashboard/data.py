"""What the dashboard shows, as plain dataclasses. Pure: no I/O, no clock.

Two inputs, two kinds of function:

- the **swarm view** (`potluck.wire.ServerInfo` announcements, the peers a
  node's ledger excluded, and when the dashboard first saw each server) goes
  through `swarm_health`, which computes block coverage and the servers table;
- the **ledger** (a `potluck.ledger.core.Ledger` over any backend) goes
  through `leaderboard`, `account_detail`, `latest_entries`, `entry_detail`,
  `fork_rows`, `checkpoints`, `verification` and `ledger_status`. They only
  read; the caller runs them in a worker thread (SQLite reads block) and the
  FastAPI app serves what they return as JSON and HTML.

Every dataclass here is a response model of the JSON API (FastAPI reads its
fields for the OpenAPI schema), so renaming a field changes the API.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from potluck.errors import InvalidFraudProof, PotluckError
from potluck.ledger.core import Ledger, slashed_points
from potluck.ledger.entry import KINDS, TRANSFER_KINDS, Entry, signature_ok, verify_fraud_proof
from potluck.ledger.store import SqliteBackend
from potluck.ledger.tools import frontier_digest
from potluck.verify.reputation import reputation
from potluck.wire import ServerInfo

__all__ = [
    "AccountDetail",
    "AccountRow",
    "BalancePoint",
    "Balances",
    "BlockCoverage",
    "CheckpointRow",
    "Checkpoints",
    "EntryDetail",
    "EntrySummary",
    "ForkRow",
    "LedgerStatus",
    "ProbeRow",
    "ServerRow",
    "SlashRow",
    "SwarmHealth",
    "UptimeTracker",
    "Verification",
    "account_detail",
    "checkpoints",
    "entry_detail",
    "fork_rows",
    "latest_entries",
    "leaderboard",
    "ledger_status",
    "swarm_health",
    "verification",
]

HISTORY_POINTS = 500
"""Entries of an account's chain the balance chart plots (the latest ones)."""
MAX_LIMIT = 500
"""The most rows one list endpoint returns."""


@functools.lru_cache(maxsize=4096)
def peer_id_of(account: str) -> str:
    """The libp2p peer ID of a ledger account ("" if the key is not a valid Ed25519 key)."""
    from potluck.p2p.announce import peer_id_of_account

    try:
        return peer_id_of_account(account)
    except (PotluckError, ValueError):
        return ""


@functools.lru_cache(maxsize=4096)
def account_of_peer_id(peer_id: str) -> str:
    """The ledger account of a peer ID ("" if it carries no Ed25519 key)."""
    from potluck.p2p.announce import account_of_peer

    try:
        return account_of_peer(peer_id)
    except (PotluckError, ValueError):
        return ""


# ---- swarm health --------------------------------------------------------------------


@dataclass(frozen=True)
class BlockCoverage:
    """One block of the model: how many route servers serve it, and their tokens/s."""

    block: int
    servers: int
    throughput: float


@dataclass(frozen=True)
class ServerRow:
    """One announced server, as the swarm health page lists it."""

    peer_id: str
    account: str
    start: int
    end: int
    throughput: float
    load: int
    free_cache_tokens: int
    bandwidth: float
    validator: bool
    dtype: str
    quant: str  # how its weights are quantised ("none", "int8", "nf4", "dynamic-int8")
    version: str
    attested: bool
    reputation: float | None
    uptime_seconds: float
    expires_in: float
    addrs: list[str]


@dataclass(frozen=True)
class SwarmHealth:
    """Block coverage and the servers of the swarm, as this node sees them.

    `coverage` counts route servers only (validators check, they are no hop);
    `covered` is whether every block has one; `weakest_block` is the block
    with the least throughput (None without blocks)."""

    model: str
    model_identity: str
    num_blocks: int
    servers: list[ServerRow]
    coverage: list[BlockCoverage]
    covered: bool
    weakest_block: int | None
    weakest_throughput: float
    excluded: list[str]
    other_models: int


class UptimeTracker:
    """When each server was first seen in an unbroken run of sightings.

    `observe(now, peers)` records a sighting; a peer unseen for more than
    `gap` seconds starts a new run when it comes back. Pure: time is passed in.
    """

    def __init__(self, gap: float = 60.0) -> None:
        self.gap = gap
        self._since: dict[str, float] = {}
        self._seen: dict[str, float] = {}

    def observe(self, now: float, peers: Iterable[str]) -> dict[str, float]:
        """Record that `peers` are up at `now`; return when each one's run began."""
        current = list(peers)
        for peer in current:
            last = self._seen.get(peer)
            if last is None or now - last > self.gap:
                self._since[peer] = now
            self._seen[peer] = now
        for peer in [p for p, last in self._seen.items() if now - last > self.gap]:
            del self._seen[peer]
            self._since.pop(peer, None)
        return {peer: self._since[peer] for peer in current}


def infer_num_blocks(servers: Iterable[ServerInfo], known: int | None) -> int:
    """The model's block count: `known`, else the furthest end any server announces."""
    if known:
        return known
    return max((s.end for s in servers), default=0)


def swarm_health(
    servers: Sequence[ServerInfo],
    *,
    now: float,
    since: Mapping[str, float],
    num_blocks: int | None,
    model: str = "",
    model_identity: str = "",
    excluded: Sequence[str] = (),
    reputations: Mapping[str, float | None] | None = None,
) -> SwarmHealth:
    """Coverage and the servers table from announcements (see `SwarmHealth`).

    With a `model_identity`, servers of any other model are left out (and
    counted in `other_models`); `since` maps a peer to when its uptime began;
    `reputations` maps an account to its reputation."""
    ours = [s for s in servers if not model_identity or s.model == model_identity]
    blocks = infer_num_blocks(ours, num_blocks)
    counts = [0] * blocks
    speed = [0.0] * blocks
    rows: list[ServerRow] = []
    for info in sorted(ours, key=lambda s: (s.validator, s.start, s.end, s.peer_id)):
        if not info.validator:
            for block in range(max(0, info.start), min(info.end, blocks)):
                counts[block] += 1
                speed[block] += info.throughput
        account = account_of_peer_id(info.peer_id)
        rows.append(
            ServerRow(
                peer_id=info.peer_id,
                account=account,
                start=info.start,
                end=info.end,
                throughput=info.throughput,
                load=info.load,
                free_cache_tokens=info.free_cache_tokens,
                bandwidth=info.bandwidth,
                validator=info.validator,
                dtype=info.dtype,
                quant=info.quant,
                version=info.version,
                attested=bool(info.attestations),
                reputation=(reputations or {}).get(account),
                uptime_seconds=max(0.0, now - since.get(info.peer_id, now)),
                expires_in=max(0.0, info.expires_at - now),
                addrs=list(info.addrs),
            )
        )
    coverage = [BlockCoverage(b, counts[b], speed[b]) for b in range(blocks)]
    weakest = min(coverage, key=lambda c: (c.throughput, c.block), default=None)
    return SwarmHealth(
        model=model,
        model_identity=model_identity,
        num_blocks=blocks,
        servers=rows,
        coverage=coverage,
        covered=blocks > 0 and all(counts),
        weakest_block=None if weakest is None else weakest.block,
        weakest_throughput=0.0 if weakest is None else weakest.throughput,
        excluded=sorted(excluded),
        other_models=len(servers) - len(ours),
    )


def swarm_revision(servers: Sequence[ServerInfo], excluded: Sequence[str]) -> str:
    """A short hash that changes when a server joins, leaves, moves or changes speed or load."""
    parts = sorted(
        (s.peer_id, s.start, s.end, round(s.throughput, 1), s.load, s.validator) for s in servers
    )
    text = json.dumps([parts, sorted(excluded)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- entries -------------------------------------------------------------------------


@dataclass(frozen=True)
class EntrySummary:
    """One entry in a list: who, what, and a one-line description of its body."""

    hash: str
    author: str
    seq: int
    kind: str
    time: int
    balance: int
    amount: int
    to: str | None
    summary: str


def describe(entry: Entry) -> str:
    """A one-line description of an entry's body (no large fields)."""
    body = entry.body
    kind = entry.kind
    if kind in TRANSFER_KINDS:
        text = f"{entry.amount} points to {str(body['to'])[:12]}"
        if kind == "mint":
            text += f" (epoch {body.get('epoch')})"
        if kind == "ticket":
            text += f" for session {str(body.get('session'))[:12]}"
        memo = body.get("memo")
        return f"{text}: {memo}" if isinstance(memo, str) and memo else text
    if kind == "receive":
        return f"takes {str(body['source'])[:12]}"
    if kind == "receipt":
        return (
            f"{body.get('tokens')} tokens x {body.get('blocks')} blocks served to"
            f" {str(body.get('client'))[:12]}"
        )
    if kind == "attest":
        return f"vouches for {str(body.get('server'))[:12]}"
    if kind == "audit":
        details = body.get("details")
        details = details if isinstance(details, Mapping) else {}
        text = f"{body.get('result')} of {str(body.get('server'))[:12]}"
        if body.get("result") == "capacity":
            text += f": {details.get('answered')}/{details.get('probes')} probes answered"
        elif body.get("result") == "evidence":
            text += f": part {details.get('part')} of {details.get('parts')}"
        return text
    if kind == "slash":
        account = str(body.get("account"))[:12]
        return f"{body.get('reason')}: {account} loses {body.get('amount', 0)}"
    if kind == "checkpoint":
        frontier = body.get("frontier")
        return f"frontier of {len(frontier) if isinstance(frontier, Mapping) else 0} accounts"
    return kind


def summarize(entry: Entry) -> EntrySummary:
    return EntrySummary(
        hash=entry.hash,
        author=entry.author,
        seq=entry.seq,
        kind=entry.kind,
        time=entry.time,
        balance=entry.balance,
        amount=entry.amount,
        to=entry.to,
        summary=describe(entry),
    )


def latest_entries(
    ledger: Ledger, *, limit: int = 50, kind: str | None = None, author: str | None = None
) -> list[EntrySummary]:
    """The `limit` newest entries (by storage order, or by time for a kind), newest first,
    only of `kind` and only by `author` when given."""
    backend = ledger.backend
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    found: list[Entry]
    if author is not None:
        top = backend.tips().get(author, 0)
        if isinstance(backend, SqliteBackend) and kind is None:
            found = backend.history(author, limit)
        else:
            found = backend.chain(author, 0, top + 1)
            found = [e for e in found if kind is None or e.kind == kind]
            found = sorted(found, key=lambda e: (e.seq, e.hash), reverse=True)[:limit]
    elif kind is not None:
        found = backend.by_kind(kind)[-limit:][::-1]
    elif isinstance(backend, SqliteBackend):
        found = backend.recent(limit)
    else:
        every = [e for h in backend.all_hashes() if (e := backend.get(h)) is not None]
        found = sorted(every, key=lambda e: (e.time, e.hash), reverse=True)[:limit]
    return [summarize(e) for e in found]


@dataclass(frozen=True)
class EntryDetail:
    """One entry in full, with its signature checked against its author's key.

    `final`: a majority of validators' checkpoints include it; `forked`: its
    author equivocated at this seq; `received_by`: for a transfer, the receive
    that took it (None while it waits)."""

    hash: str
    swarm: str
    author: str
    author_peer_id: str
    seq: int
    prev: str
    time: int
    kind: str
    balance: int
    body: dict[str, Any]
    signature: str
    signature_valid: bool
    final: bool
    forked: bool
    received_by: str | None
    summary: str


def entry_detail(ledger: Ledger, entry_hash: str) -> EntryDetail | None:
    """The entry with hash `entry_hash`, or None if this replica does not hold it."""
    backend = ledger.backend
    entry = backend.get(entry_hash)
    if entry is None:
        return None
    received_by = None
    if entry.kind in TRANSFER_KINDS and entry.to is not None:
        for _seq, taker in backend.receives_of(entry.to, entry.hash):
            received_by = taker
            break
    return EntryDetail(
        hash=entry.hash,
        swarm=entry.swarm,
        author=entry.author,
        author_peer_id=peer_id_of(entry.author),
        seq=entry.seq,
        prev=entry.prev,
        time=entry.time,
        kind=entry.kind,
        balance=entry.balance,
        body=json.loads(json.dumps(entry.body)),
        signature=entry.signature.hex(),
        signature_valid=signature_ok(entry),
        final=ledger.is_final(entry),
        forked=len(backend.hashes_at(entry.author, entry.seq)) > 1,
        received_by=received_by,
        summary=describe(entry),
    )


# ---- balances ------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountRow:
    """One account on the leaderboard.

    `balance` is what its chain holds, `receivable` what was sent to it and
    not received yet, `slashed` what validators took, `available` =
    balance - slashed (negative: a debt), `minted` every point minted to it
    (what it earned by serving), `entries` the length of its chain."""

    rank: int
    account: str
    peer_id: str
    balance: int
    receivable: int
    slashed: int
    available: int
    minted: int
    frozen: bool
    validator: bool
    reputation: float | None
    entries: int


@dataclass(frozen=True)
class Balances:
    """The leaderboard (by available points, then balance) and the swarm's totals."""

    accounts: list[AccountRow]
    total_balance: int
    total_receivable: int
    total_slashed: int
    total_minted: int
    total_granted: int


def reputations(ledger: Ledger, accounts: Iterable[str]) -> dict[str, float | None]:
    """Each account's reputation (`potluck.verify.reputation`), None if never measured."""
    backend = ledger.backend
    audits = [e for e in backend.by_kind("audit") if e.body.get("result") == "capacity"]
    slashes = backend.by_kind("slash")
    by_server: dict[str, list[Entry]] = {}
    for audit in audits:
        by_server.setdefault(str(audit.body.get("server")), []).append(audit)
    slashed_by: dict[str, list[Entry]] = {}
    for slash in slashes:
        slashed_by.setdefault(str(slash.body.get("account")), []).append(slash)
    return {
        account: reputation(
            account,
            by_server.get(account, ()),
            slashed_by.get(account, ()),
            validators=ledger.validators,
        )
        for account in accounts
    }


def leaderboard(ledger: Ledger) -> Balances:
    """Every account the ledger knows: authors, recipients of transfers and slashed ones."""
    backend = ledger.backend
    tips = backend.tips()
    transfers = [e for kind in sorted(TRANSFER_KINDS) for e in backend.by_kind(kind)]
    taken = {str(e.body["source"]) for e in backend.by_kind("receive")}
    slashed = ledger.slashed()
    receivable: dict[str, int] = {}
    minted: dict[str, int] = {}
    granted = 0
    for transfer in transfers:
        to = str(transfer.to)
        if transfer.hash not in taken:
            receivable[to] = receivable.get(to, 0) + transfer.amount
        if transfer.kind == "mint" and transfer.author in ledger.validators:
            minted[to] = minted.get(to, 0) + transfer.amount
        if transfer.kind == "grant" and transfer.author in ledger.validators:
            granted += transfer.amount
    accounts = sorted(set(tips) | set(receivable) | set(slashed))
    reps = reputations(ledger, accounts)
    rows: list[AccountRow] = []
    for account in accounts:
        state = ledger.account(account, top=tips.get(account, 0))
        rows.append(
            AccountRow(
                rank=0,
                account=account,
                peer_id=peer_id_of(account),
                balance=state.balance,
                receivable=receivable.get(account, 0),
                slashed=state.slashed,
                available=state.available,
                minted=minted.get(account, 0),
                frozen=state.frozen,
                validator=account in ledger.validators,
                reputation=reps.get(account),
                entries=tips.get(account, 0),
            )
        )
    rows.sort(key=lambda r: (-r.available, -r.balance, -r.receivable, r.account))
    ranked = [dataclasses.replace(r, rank=i) for i, r in enumerate(rows, start=1)]
    return Balances(
        accounts=ranked,
        total_balance=sum(r.balance for r in rows),
        total_receivable=sum(r.receivable for r in rows),
        total_slashed=sum(r.slashed for r in rows),
        total_minted=sum(minted.values()),
        total_granted=granted,
    )


@dataclass(frozen=True)
class BalancePoint:
    """The account's balance and available points just after `time` (ms)."""

    time: int
    balance: int
    available: int
    entry: str


@dataclass(frozen=True)
class AccountDetail:
    """One account: its state, what waits for it, its latest entries, and the points
    of its balance chart (oldest first; the latest `HISTORY_POINTS` entries and every
    slash against it)."""

    account: str
    peer_id: str
    balance: int
    slashed: int
    available: int
    seq: int
    head: str
    frozen: bool
    validator: bool
    reputation: float | None
    minted: int
    receivable: list[EntrySummary]
    history: list[EntrySummary]
    slashes: list[EntrySummary]
    chart: list[BalancePoint]


def known_account(ledger: Ledger, account: str) -> bool:
    """Whether the ledger holds anything by, to or against `account`."""
    backend = ledger.backend
    return (
        account in backend.tips()
        or bool(backend.incoming(account))
        or bool(backend.slashes_of(account))
    )


def account_detail(ledger: Ledger, account: str, *, limit: int = 50) -> AccountDetail | None:
    """The account, or None if the ledger holds nothing by, to or against it."""
    if not known_account(ledger, account):
        return None
    backend = ledger.backend
    top = backend.tips().get(account, 0)
    state = ledger.account(account, top=top)
    slashes = backend.slashes_of(account)
    # the chart: the latest entries of the undisputed chain, and slashes as they came
    window = backend.chain(account, max(0, state.seq - HISTORY_POINTS), HISTORY_POINTS + 1)
    undisputed = _undisputed(window)
    chain = [e for e in window if e.seq <= state.seq and e.hash in undisputed]
    events: list[tuple[int, int, str, Entry]] = [(e.time, 0, e.hash, e) for e in chain]
    events += [(s.time, 1, s.hash, s) for s in slashes]
    events.sort(key=lambda x: (x[0], x[1], x[2]))
    chart: list[BalancePoint] = []
    balance = chain[0].balance if chain and chain[0].seq > 1 else 0
    seen: list[Entry] = []
    for when, is_slash, entry_hash, entry in events:
        if is_slash:
            seen.append(entry)
        else:
            balance = entry.balance
        taken = slashed_points(seen, ledger.validators)
        chart.append(BalancePoint(when, balance, balance - taken, entry_hash))
    minted = sum(
        e.amount
        for e in backend.incoming(account)
        if e.kind == "mint" and e.author in ledger.validators
    )
    return AccountDetail(
        account=account,
        peer_id=peer_id_of(account),
        balance=state.balance,
        slashed=state.slashed,
        available=state.available,
        seq=state.seq,
        head=state.head,
        frozen=state.frozen,
        validator=account in ledger.validators,
        reputation=reputations(ledger, [account])[account],
        minted=minted,
        receivable=[summarize(e) for e in ledger.receivable(account)[:limit]],
        history=latest_entries(ledger, limit=limit, author=account),
        slashes=[summarize(e) for e in slashes[-limit:][::-1]],
        chart=chart,
    )


def _undisputed(window: Sequence[Entry]) -> set[str]:
    """Hashes in `window` that are the only entry at their seq."""
    seqs: dict[int, int] = {}
    for entry in window:
        seqs[entry.seq] = seqs.get(entry.seq, 0) + 1
    return {e.hash for e in window if seqs[e.seq] == 1}


# ---- forks, checkpoints, verification ------------------------------------------------


@dataclass(frozen=True)
class ForkRow:
    """A fork and its fraud proof: two entries by one account at one seq.

    `proof_valid` is `verify_fraud_proof` on the two stored entries, checked
    again here; `problem` says why when it is not."""

    account: str
    peer_id: str
    seq: int
    first: EntrySummary
    second: EntrySummary
    proof_valid: bool
    problem: str
    slashed: int


def fork_rows(ledger: Ledger) -> list[ForkRow]:
    rows: list[ForkRow] = []
    slashed = ledger.slashed()
    for fork in ledger.forks():
        first, second = ledger.fraud_proof(fork)
        try:
            verify_fraud_proof(first, second, ledger.swarm_id)
            valid, problem = True, ""
        except InvalidFraudProof as exc:
            valid, problem = False, str(exc)
        rows.append(
            ForkRow(
                account=fork.author,
                peer_id=peer_id_of(fork.author),
                seq=fork.seq,
                first=summarize(first),
                second=summarize(second),
                proof_valid=valid,
                problem=problem,
                slashed=slashed.get(fork.author, 0),
            )
        )
    return rows


@dataclass(frozen=True)
class CheckpointRow:
    """A validator's signed frontier: how many accounts it covers, and its digest
    (equal to a replica's `ledger status` frontier digest when they hold the same)."""

    hash: str
    validator: str
    seq: int
    time: int
    accounts: int
    frontier_digest: str
    latest: bool


@dataclass(frozen=True)
class Checkpoints:
    """The latest checkpoints, and how many account heads a majority made final."""

    validators: int
    majority: int
    heads: int
    final_heads: int
    checkpoints: list[CheckpointRow]


def checkpoints(ledger: Ledger, *, limit: int = 50) -> Checkpoints:
    backend = ledger.backend
    found = backend.by_kind("checkpoint")
    latest = {
        v: e.hash for v in ledger.validators if (e := backend.latest(v, "checkpoint")) is not None
    }
    rows = []
    for entry in found[-limit:][::-1]:
        raw = entry.body.get("frontier")
        frontier = raw if isinstance(raw, Mapping) else {}
        heads = {str(a): (int(h[0]), str(h[1])) for a, h in frontier.items()}
        rows.append(
            CheckpointRow(
                hash=entry.hash,
                validator=entry.author,
                seq=entry.seq,
                time=entry.time,
                accounts=len(heads),
                frontier_digest=frontier_digest(heads),
                latest=latest.get(entry.author) == entry.hash,
            )
        )
    frontier = ledger.frontier()
    final = 0
    if latest:
        for _seq, head in frontier.values():
            head_entry = backend.get(head)
            if head_entry is not None and ledger.is_final(head_entry):
                final += 1
    return Checkpoints(
        validators=len(ledger.validators),
        majority=ledger.genesis.majority,
        heads=len(frontier),
        final_heads=final,
        checkpoints=rows,
    )


@dataclass(frozen=True)
class SlashRow:
    """A validator's slash. `caught_by` is "probe" when the accuser was a validator
    (its own probe), "spot-check" when a client's spot-check raised it."""

    hash: str
    validator: str
    account: str
    peer_id: str
    reason: str
    amount: int
    time: int
    case: str | None
    caught_by: str


@dataclass(frozen=True)
class ProbeRow:
    """What validators' capacity audits recorded about one server."""

    account: str
    peer_id: str
    audits: int
    probes: int
    answered: int
    mismatches: int
    reputation: float | None
    last_time: int


@dataclass(frozen=True)
class Verification:
    """Spot-checks and probes, and the cheaters they caught.

    `probes`, `answered` and `mismatches` add up validators' capacity audits;
    `cheaters` are the accounts slashed for a wrong output, `false_accusers`
    those fined for accusing an honest server; `evidence_entries` the audit
    entries holding the inputs that referees recomputed."""

    audits: int
    probes: int
    answered: int
    mismatches: int
    evidence_entries: int
    slashes: list[SlashRow]
    cheaters: list[str]
    false_accusers: list[str]
    points_slashed: int
    servers: list[ProbeRow] = field(default_factory=list)


def slash_rows(slashes: Iterable[Entry], validators: Collection[str]) -> list[SlashRow]:
    rows = []
    for entry in slashes:
        if entry.author not in validators:
            continue
        body = entry.body
        evidence = body.get("evidence")
        evidence = evidence if isinstance(evidence, Mapping) else {}
        accuser = evidence.get("accuser")
        case = evidence.get("case")
        if not isinstance(accuser, str):
            caught_by = "-"
        elif accuser in validators:
            caught_by = "probe"
        else:
            caught_by = "spot-check"
        account = str(body.get("account"))
        amount = body.get("amount", 0)
        rows.append(
            SlashRow(
                hash=entry.hash,
                validator=entry.author,
                account=account,
                peer_id=peer_id_of(account),
                reason=str(body.get("reason")),
                amount=amount if isinstance(amount, int) else 0,
                time=entry.time,
                case=case if isinstance(case, str) else None,
                caught_by=caught_by,
            )
        )
    return rows


def verification(ledger: Ledger) -> Verification:
    backend = ledger.backend
    validators = ledger.validators
    audits = [e for e in backend.by_kind("audit") if e.author in validators]
    capacity = [e for e in audits if e.body.get("result") == "capacity"]
    slashes = backend.by_kind("slash")
    rows = slash_rows(slashes, validators)
    per_server: dict[str, list[Entry]] = {}
    totals = {"probes": 0, "answered": 0, "mismatches": 0}
    for audit in capacity:
        per_server.setdefault(str(audit.body.get("server")), []).append(audit)
        details = audit.body.get("details")
        if isinstance(details, Mapping):
            for name in totals:
                value = details.get(name, 0)
                totals[name] += value if isinstance(value, int) and value >= 0 else 0
    reps = reputations(ledger, per_server)
    servers = []
    for account, found in sorted(per_server.items()):
        sums = {"probes": 0, "answered": 0, "mismatches": 0}
        for audit in found:
            details = audit.body.get("details")
            if isinstance(details, Mapping):
                for name in sums:
                    value = details.get(name, 0)
                    sums[name] += value if isinstance(value, int) and value >= 0 else 0
        servers.append(
            ProbeRow(
                account=account,
                peer_id=peer_id_of(account),
                audits=len(found),
                probes=sums["probes"],
                answered=sums["answered"],
                mismatches=sums["mismatches"],
                reputation=reps.get(account),
                last_time=max(a.time for a in found),
            )
        )
    slashed = ledger.slashed()
    return Verification(
        audits=len(capacity),
        probes=totals["probes"],
        answered=totals["answered"],
        mismatches=totals["mismatches"],
        evidence_entries=sum(1 for e in audits if e.body.get("result") == "evidence"),
        slashes=rows[::-1],
        cheaters=sorted({r.account for r in rows if r.reason == "wrong_output"}),
        false_accusers=sorted({r.account for r in rows if r.reason == "false_accusation"}),
        points_slashed=sum(slashed.values()),
        servers=servers,
    )


# ---- status --------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerStatus:
    """A replica's summary: two replicas hold the same ledger iff their
    `frontier_digest`s are equal (as `potluck ledger status` prints it)."""

    entries: int
    accounts: int
    forks: int
    frontier_digest: str
    counters: dict[str, int]


def entry_count(ledger: Ledger) -> int:
    """Entries held: cheap (it sums the per-author summaries), and it only grows."""
    backend = ledger.backend
    if isinstance(backend, SqliteBackend):
        return backend.entry_count()
    return sum(row.count for row in backend.summary().values())


def ledger_status(ledger: Ledger) -> LedgerStatus:
    frontier = ledger.frontier()
    return LedgerStatus(
        entries=entry_count(ledger),
        accounts=len(frontier),
        forks=len(ledger.forks()),
        frontier_digest=frontier_digest(frontier),
        counters=ledger.counters(),
    )


@dataclass(frozen=True)
class Status:
    """The dashboard's summary, and `revision`: a short hash that changes whenever
    the ledger grows or the swarm changes (and every `REVISION_SECONDS`), which the
    pages poll to know when to refresh."""

    swarm: str | None
    swarm_id: str | None
    model: str
    model_identity: str
    num_blocks: int
    node: str | None
    version: str
    servers: int
    validators: int
    covered: bool
    ledger: LedgerStatus | None
    revision: str
    time: float


REVISION_SECONDS = 10
"""Pages refresh at least this often (uptimes and expiries move on their own)."""


def revision(now: float, swarm: str, entries: int | None) -> str:
    """The `Status.revision` for a swarm revision (`swarm_revision`) and an entry count."""
    text = f"{int(now // REVISION_SECONDS)}|{swarm}|{entries}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
