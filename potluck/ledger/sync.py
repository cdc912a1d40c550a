"""Anti-entropy planning: which of my entries might a peer lack? Pure.

Replicas compare per-author summaries (`SummaryRow`: top seq, entry count,
XOR of entry hashes, and the hash of an entry at the top seq). For each
author the sender decides, from the two summaries alone plus "do I hold
this hash?", which range of its own chain to send:

| the peer's row                                | I send                      |
|-----------------------------------------------|-----------------------------|
| missing                                       | my whole chain              |
| same count and digest                         | nothing (same entries)      |
| neither side forked, mine is longer and I     | my entries after its top    |
| hold its head                                 |                             |
| neither side forked, mine is longer and I do  | my whole chain (diverged)   |
| not hold its head, or both equally long       |                             |
| neither side forked, its chain is longer      | nothing: it sends to me     |
| a fork on either side                         | my whole chain              |

Both sides run the same plan against each other, so two replicas that sync
in both directions end up with the union of their entries; a fork that only
one side knows reaches the other, which then detects it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from potluck.ledger.core import AuthorSummary


@dataclass(frozen=True)
class SummaryRow:
    """One author as a replica holds it."""

    top: int
    count: int
    digest: str
    head: str

    @property
    def forked(self) -> bool:
        """More entries than seq numbers: two entries share a seq somewhere."""
        return self.count != self.top

    def wire(self, author: str) -> tuple[str, int, int, str, str]:
        return (author, self.top, self.count, self.digest, self.head)


def summary_rows(
    summary: Mapping[str, AuthorSummary], head_of: Callable[[str, int], str]
) -> dict[str, SummaryRow]:
    """Summary rows with heads; `head_of(author, top)` is a hash held at that seq."""
    return {
        author: SummaryRow(s.top, s.count, s.digest, head_of(author, s.top))
        for author, s in summary.items()
    }


def plan_send(
    mine: Mapping[str, SummaryRow],
    theirs: Mapping[str, SummaryRow],
    have: Callable[[str], bool],
) -> list[tuple[str, int]]:
    """`(author, after_seq)`: send my entries of `author` with seq > after_seq."""
    plan: list[tuple[str, int]] = []
    for author in sorted(mine):
        own = mine[author]
        other = theirs.get(author)
        if other is None:
            plan.append((author, 0))
        elif (other.count, other.digest) == (own.count, own.digest):
            continue
        elif own.forked or other.forked:
            plan.append((author, 0))
        elif own.top > other.top:
            plan.append((author, other.top if have(other.head) else 0))
        elif own.top == other.top:
            plan.append((author, 0))
        # else: the peer's chain is longer; its plan against mine covers us
    return plan


def missing_estimate(mine: Mapping[str, SummaryRow], theirs: Mapping[str, SummaryRow]) -> int:
    """About how many entries `theirs` holds that `mine` lacks (for a progress bar)."""
    total = 0
    for author, other in theirs.items():
        own = mine.get(author)
        total += max(0, other.count - (own.count if own is not None else 0))
    return total


def rows_from_wire(rows: Iterable[tuple[str, int, int, str, str]]) -> dict[str, SummaryRow]:
    return {a: SummaryRow(top, count, digest, head) for a, top, count, digest, head in rows}
