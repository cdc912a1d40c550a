"""Points for serving: usage receipts, measured capacity, epochs and mints. Pure.

Nothing here reads a clock, a disk or the network: every function takes
entries and numbers and returns bodies, plans or errors, so two validators
that hold the same entries plan the same mints.

Usage receipts
--------------
When a client closes an inference session it signs, for each server of its
route, a receipt over

    RECEIPT_DOMAIN + canonical JSON {client, end, server, session, start, swarm, tokens}

(`receipt_payload`: keys sorted, no whitespace, the same canonical JSON as
entries). The server records it in its own chain as a `receipt` entry
(`receipt_body`) whose `details` carry `start`, `end` and the client's
`signature` (hex). `verify_receipt` checks such an entry from the entry alone.

Capacity
--------
Each epoch (`epoch_of`: time in ms // (epoch_seconds * 1000)) a validator
probes the servers it knows and writes one `audit` per server with
`result = "capacity"` (`capacity_audit_body`): the span it probed, how many
probes it sent and how many were answered, and the throughput it measured
over the whole span at batch 1, in thousandths of tokens per second.
`capacity_from_audit` reads one back as a `Capacity`.

Mints
-----
At an epoch's end, each validator mints to each server what `plan_mints`
gives (`mint_body`), from the receipts of that epoch and the capacities the
validator measured itself:

    usage[s]    = sum of tokens x blocks over s's verified receipts of the epoch,
                  each (client, session) once (its largest)
    capacity[s] = floor(tokens_per_s x uptime x epoch_seconds) x (end - start)
    weight[s]   = mean over s's blocks b of min(scarcity_weight_max, mean_cover / cover[b]),
                  cut to thousandths (weight_milli)
    amount[s]   = floor(mint_rate x min(usage[s], capacity[s]) x weight_milli
                        / 1000 / 1000 / validators)

Receipts are cheap to fake (a server can sign them with keys of its own), so
usage alone proves nothing; capacity is what the validator measured, so a
server that feeds itself fake clients earns at most what it would for
serving its whole verified capacity honestly. Dividing by the number of
validators makes the swarm mint `mint_rate` points per 1,000 token x blocks
in all when every validator mints.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from potluck.errors import InvalidEvidence
from potluck.ledger.entry import MAX_AMOUNT, Entry, canonical
from potluck.ledger.genesis import Economy
from potluck.p2p.identity import Identity

RECEIPT_DOMAIN = b"potluck/receipt/v1\x00"
"""Prefix of the bytes a client signs for a usage receipt (never an entry's DOMAIN)."""
CAPACITY = "capacity"
"""The `result` of an audit that records a measured capacity."""


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_AMOUNT


# ---- receipts ----------------------------------------------------------------


def receipt_payload(
    *, swarm: str, session: str, server: str, client: str, tokens: int, start: int, end: int
) -> bytes:
    """The bytes a client signs to say `server` served it `tokens` tokens over blocks
    [start, end) in `session`: `RECEIPT_DOMAIN` + canonical JSON of the seven fields."""
    fields = {
        "client": client,
        "end": end,
        "server": server,
        "session": session,
        "start": start,
        "swarm": swarm,
        "tokens": tokens,
    }
    return RECEIPT_DOMAIN + canonical(fields)


def sign_receipt(
    identity: Identity, *, swarm: str, session: str, server: str, tokens: int, start: int, end: int
) -> str:
    """The client `identity`'s signature (hex) of a receipt for `server`."""
    payload = receipt_payload(
        swarm=swarm,
        session=session,
        server=server,
        client=identity.public_bytes.hex(),
        tokens=tokens,
        start=start,
        end=end,
    )
    return identity.sign(payload).hex()


def receipt_body(
    *, client: str, session: str, tokens: int, start: int, end: int, signature: str
) -> dict[str, Any]:
    """The body of the `receipt` entry a server writes for a client's signed receipt."""
    return {
        "client": client,
        "session": session,
        "tokens": tokens,
        "blocks": end - start,
        "details": {"start": start, "end": end, "signature": signature},
    }


def verify_receipt(entry: Entry, swarm: str) -> None:
    """Raise `InvalidEvidence` unless `entry` is a receipt of swarm `swarm` that its
    client signed for its author, with `blocks == end - start`, and the client is
    not the author itself."""
    if entry.kind != "receipt":
        raise InvalidEvidence(f"entry {entry.hash[:12]} is a {entry.kind}, not a receipt")
    if entry.swarm != swarm:
        raise InvalidEvidence(f"receipt {entry.hash[:12]} is of another swarm")
    body = entry.body
    details = body.get("details")
    if not isinstance(details, Mapping):
        raise InvalidEvidence(f"receipt {entry.hash[:12]} has no details")
    start, end, signature = details.get("start"), details.get("end"), details.get("signature")
    if not (_natural(start) and _natural(end) and isinstance(signature, str)):
        raise InvalidEvidence(f"receipt {entry.hash[:12]} needs details start, end and signature")
    assert isinstance(start, int) and isinstance(end, int)
    if body["blocks"] != end - start:
        raise InvalidEvidence(
            f"receipt {entry.hash[:12]}: blocks {body['blocks']} is not end - start"
        )
    client = str(body["client"])
    if client == entry.author:
        raise InvalidEvidence(f"receipt {entry.hash[:12]} is signed by the server itself")
    check_receipt_signature(
        signature,
        swarm=swarm,
        session=str(body["session"]),
        server=entry.author,
        client=client,
        tokens=int(body["tokens"]),
        start=start,
        end=end,
    )


def check_receipt_signature(
    signature: str,
    *,
    swarm: str,
    session: str,
    server: str,
    client: str,
    tokens: int,
    start: int,
    end: int,
) -> None:
    """Raise `InvalidEvidence` unless `signature` is `client`'s over the receipt."""
    payload = receipt_payload(
        swarm=swarm,
        session=session,
        server=server,
        client=client,
        tokens=tokens,
        start=start,
        end=end,
    )
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(client))
        key.verify(bytes.fromhex(signature), payload)
    except (_BadSignature, ValueError):
        raise InvalidEvidence(
            f"the receipt for session {session[:16]} is not signed by its client {client[:12]}"
        ) from None


# ---- epochs and capacity -----------------------------------------------------


def epoch_of(time_ms: int, economy: Economy) -> int:
    """The epoch a time (ms since the Unix epoch) falls in: epochs start at time 0."""
    return time_ms // (economy.epoch_seconds * 1000)


@dataclass(frozen=True)
class Capacity:
    """What a validator measured of a server over one epoch.

    `tokens_per_s` is the throughput of the whole span [start, end) at batch
    1; `uptime` the fraction of probes answered (0 to 1)."""

    server: str
    start: int
    end: int
    tokens_per_s: float
    uptime: float

    def token_blocks(self, epoch_seconds: int) -> int:
        """Token x blocks the server could have served in a whole epoch:
        floor(tokens_per_s x uptime x epoch_seconds) x (end - start), 0 if either
        factor is not positive."""
        rate = self.tokens_per_s * self.uptime * epoch_seconds
        if not math.isfinite(rate) or rate <= 0 or self.end <= self.start:
            return 0
        return math.floor(rate) * (self.end - self.start)


def capacity_audit_body(
    *,
    server: str,
    epoch: int,
    start: int,
    end: int,
    probes: int,
    answered: int,
    milli_tokens_per_s: int,
    mismatches: int,
) -> dict[str, Any]:
    """The body of a validator's `audit` recording a server's measured capacity."""
    return {
        "server": server,
        "result": CAPACITY,
        "details": {
            "epoch": epoch,
            "start": start,
            "end": end,
            "probes": probes,
            "answered": answered,
            "milli_tokens_per_s": milli_tokens_per_s,
            "mismatches": mismatches,
        },
    }


def capacity_from_audit(entry: Entry) -> Capacity | None:
    """The `Capacity` a capacity audit records; None for any other entry, or for a
    capacity audit whose details are not whole numbers >= 0 with at least one
    probe, no more answers than probes and start < end."""
    if entry.kind != "audit" or entry.body.get("result") != CAPACITY:
        return None
    details = entry.body.get("details")
    if not isinstance(details, Mapping):
        return None
    names = ("start", "end", "probes", "answered", "milli_tokens_per_s")
    if not all(_natural(details.get(name)) for name in names):
        return None
    start, end = int(details["start"]), int(details["end"])
    probes, answered = int(details["probes"]), int(details["answered"])
    if probes == 0 or answered > probes or start >= end:
        return None
    return Capacity(
        server=str(entry.body["server"]),
        start=start,
        end=end,
        tokens_per_s=int(details["milli_tokens_per_s"]) / 1000,
        uptime=answered / probes,
    )


# ---- mints -------------------------------------------------------------------


@dataclass(frozen=True)
class MintPlan:
    """What one validator mints to one server for one epoch, and why."""

    server: str
    amount: int
    usage: int  # token x blocks the server's verified receipts claim
    capacity: int  # token x blocks its measured capacity allows
    weight_milli: int  # scarcity weight of its blocks, in thousandths


def _usage(receipts: Iterable[Entry], epoch: int, economy: Economy, swarm: str) -> dict[str, int]:
    """Token x blocks per server: verified receipts of `epoch`, each (client, session) once."""
    best: dict[tuple[str, str, str], int] = {}
    for entry in receipts:
        if entry.kind != "receipt" or epoch_of(entry.time, economy) != epoch:
            continue
        try:
            verify_receipt(entry, swarm)
        except InvalidEvidence:
            continue
        key = (entry.author, str(entry.body["client"]), str(entry.body["session"]))
        served = int(entry.body["tokens"]) * int(entry.body["blocks"])
        best[key] = max(best.get(key, 0), served)
    usage: dict[str, int] = {}
    for (server, _, _), served in best.items():
        usage[server] = usage.get(server, 0) + served
    return usage


def scarcity_weights(
    spans: Mapping[str, tuple[int, int]], num_blocks: int, weight_max: float
) -> dict[str, Fraction]:
    """Each server's weight for serving its span [start, end) (clipped to the model):
    the mean over its blocks of min(weight_max, mean_cover / cover[b]), where
    cover[b] counts the servers whose span holds block b and mean_cover is the
    mean of cover over the blocks anyone covers. A span with no block of the
    model weighs 0."""
    cover = [0] * num_blocks
    clipped: dict[str, range] = {}
    for server, (start, end) in spans.items():
        blocks = range(max(0, start), min(end, num_blocks))
        clipped[server] = blocks
        for block in blocks:
            cover[block] += 1
    covered = [c for c in cover if c > 0]
    if not covered:
        return {server: Fraction(0) for server in spans}
    mean = Fraction(sum(covered), len(covered))
    top = Fraction(weight_max)
    weights: dict[str, Fraction] = {}
    for server, blocks in clipped.items():
        if not blocks:
            weights[server] = Fraction(0)
            continue
        total = sum((min(top, mean / cover[b]) for b in blocks), Fraction(0))
        weights[server] = total / len(blocks)
    return weights


def plan_mints(
    *,
    epoch: int,
    receipts: Iterable[Entry],
    capacities: Mapping[str, Capacity],
    excluded: Collection[str],
    num_blocks: int,
    economy: Economy,
    validators: int,
    swarm: str,
) -> list[MintPlan]:
    """The mints one validator writes for `epoch`, by server (see the module docstring).

    `receipts` may hold any entries (receipts of other epochs, or that do not
    verify, count for nothing); `capacities` are what this validator measured,
    by server account. A server in `excluded` (slashed), without a capacity,
    or whose capacity is 0 gets nothing and covers no block; a plan of 0
    points is left out. Amounts are capped at `MAX_AMOUNT`.
    """
    if validators < 1:
        raise ValueError("a swarm has at least one validator")
    usage = _usage(receipts, epoch, economy, swarm)
    able = {
        server: cap
        for server, cap in capacities.items()
        if server not in excluded and cap.token_blocks(economy.epoch_seconds) > 0
    }
    weights = scarcity_weights(
        {server: (cap.start, cap.end) for server, cap in able.items()},
        num_blocks,
        economy.scarcity_weight_max,
    )
    plans = []
    for server in sorted(able):
        capacity = able[server].token_blocks(economy.epoch_seconds)
        used = usage.get(server, 0)
        weight_milli = math.floor(weights[server] * 1000)
        amount = economy.mint_rate * min(used, capacity) * weight_milli // (10**6 * validators)
        amount = min(amount, MAX_AMOUNT)
        if amount > 0:
            plans.append(MintPlan(server, amount, used, capacity, weight_milli))
    return plans


def mint_body(plan: MintPlan, epoch: int) -> dict[str, Any]:
    """The body of the `mint` entry for `plan` (usage and capacity shown up to `MAX_AMOUNT`)."""
    return {
        "to": plan.server,
        "amount": plan.amount,
        "epoch": epoch,
        "details": {
            "usage": min(plan.usage, MAX_AMOUNT),
            "capacity": min(plan.capacity, MAX_AMOUNT),
            "weight_milli": plan.weight_milli,
        },
    }
