"""A server's reputation, from what validators recorded in the ledger. Pure.

Reputation is a number in [0, 1]: the mean, over the server's latest
`window` capacity audits (by any genesis validator), of the share of probes
it answered correctly (`answered / probes`, with any probe whose output was
wrong counting as unanswered). A server that a validator slashed for a wrong
output has reputation 0 for good; a server no validator has measured yet
has none (`None`). The dashboard shows it; slashed servers are also left out
of routes and mints.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from potluck.ledger.entry import Entry

__all__ = ["reputation"]

WINDOW = 12


def reputation(
    account: str,
    audits: Iterable[Entry],
    slashes: Iterable[Entry],
    *,
    validators: Collection[str],
    window: int = WINDOW,
) -> float | None:
    """`account`'s reputation from capacity `audits` and `slashes` (any entries;
    only validators' audits and slashes about `account` count)."""
    for slash in slashes:
        if (
            slash.kind == "slash"
            and slash.author in validators
            and slash.body.get("account") == account
            and slash.body.get("reason") == "wrong_output"
        ):
            return 0.0
    scores: list[tuple[int, str, float]] = []
    for audit in audits:
        body = audit.body
        if (
            audit.kind != "audit"
            or audit.author not in validators
            or body.get("server") != account
            or body.get("result") != "capacity"
        ):
            continue
        details = body.get("details", {})
        probes, answered = details.get("probes", 0), details.get("answered", 0)
        mismatches = details.get("mismatches", 0)
        if not all(isinstance(v, int) and v >= 0 for v in (probes, answered, mismatches)):
            continue
        if probes == 0:
            continue
        good = max(0, min(answered, probes) - mismatches)
        scores.append((audit.time, audit.hash, good / probes))
    if not scores:
        return None
    latest = sorted(scores)[-window:]
    return sum(score for _, _, score in latest) / len(latest)
