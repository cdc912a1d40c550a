"""Tickets: points paid to a server for priority or a private route in one session.

A client buys a ticket by writing a `ticket` entry that pays the server
(a debit of the client, received by the server like a send)::

    {"to": server_account, "amount": A, "session": session_id, "expires": unix_ms,
     "details": {"class": "paid" | "private", "start": s, "end": e, "tokens": max_length}}

The server checks it (`check_ticket`), the ledger checks its signature and
funding when the server submits it, and the server takes it with a
`receive`: that receive is the durable mark that the ticket was used. When
the session ends, the server sends back what was not used
(`refund_amount`); a ticket that expires without being used is sent back in
full. `NodeLedger` (`potluck.node.ledger`) does the I/O; everything here is
pure: entries and numbers in, a `Ticket` or a typed error out, and time is
passed in.

```python
price = ticket_price(economy.priority_price, tokens=256, blocks=24)  # ceil(1 * 256 * 24 / 1000)
body = ticket_body(server=s, session="abc", start=0, end=24, tokens=256, cls="paid",
                   amount=price, expires_ms=ticket_expiry(now_ms, economy))
ticket = check_ticket(entry, economy=economy, client=c, server=s, session="abc", start=0,
                      end=24, max_length=256, now_ms=now_ms, redeemed=set())
refund_amount(ticket, economy, served_tokens=100)  # what the server sends back
```

A ticket's life on a server is `TicketLifecycle` (a transition table):
offered -> redeemed -> settled, offered -> rejected, and offered or
rejected -> refunded (never used, and expired or never redeemable:
`refund_due`).
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, Final

from potluck.errors import (
    TicketError,
    TicketExpired,
    TicketForged,
    TicketMismatch,
    TicketUsed,
    TicketWrongServer,
)
from potluck.ledger.entry import MAX_AMOUNT, MAX_TEXT, ZERO_HASH, Entry
from potluck.ledger.genesis import Economy

TICKET_CLASSES: Final = ("paid", "private")
"""`paid`: high priority on the server; `private`: a route through trusted servers only."""
REFUND_MEMO = "refund "
"""A refund is a `send` back to the client whose memo is this plus the ticket's hash."""

_DETAILS_KEYS = frozenset({"class", "start", "end", "tokens"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


def ticket_price(price_per_1000: int, tokens: int, blocks: int) -> int:
    """Points for `tokens` x `blocks` at `price_per_1000` points per 1,000 token x blocks,
    rounded up: ceil(price x tokens x blocks / 1000); 0 when any of them is 0."""
    if price_per_1000 < 0 or tokens < 0 or blocks < 0:
        raise ValueError("a price, a token count and a block count are >= 0")
    return -(-price_per_1000 * tokens * blocks // 1000)


def class_price(economy: Economy, cls: str) -> int:
    """The economy's price per 1,000 token x blocks for a ticket class."""
    if cls == "paid":
        return economy.priority_price
    if cls == "private":
        return economy.private_price
    raise TicketMismatch(f"a ticket's class is one of {', '.join(TICKET_CLASSES)}, not {cls!r:.40}")


def ticket_expiry(now_ms: int, economy: Economy) -> int:
    """The `expires` of a ticket bought at `now_ms`: `ticket_seconds` later."""
    return now_ms + economy.ticket_seconds * 1000


def refund_memo(ticket_hash: str) -> str:
    """The memo of the send that refunds ticket `ticket_hash`."""
    return REFUND_MEMO + ticket_hash


def refunded_ticket(entry: Entry) -> str | None:
    """The ticket hash that a refund `send` names in its memo, else None."""
    if entry.kind != "send":
        return None
    memo = entry.body.get("memo")
    if not isinstance(memo, str) or not memo.startswith(REFUND_MEMO):
        return None
    named = memo[len(REFUND_MEMO) :]
    return named if _HEX64.fullmatch(named) else None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_AMOUNT


@dataclass(frozen=True)
class Ticket:
    """A well-formed ticket: who paid which server how much, for which session and span.

    `client` is the entry's author, `server` its `to`, `[start, end)` the
    server's blocks, `tokens` the session's largest length, `cls` a class of
    `TICKET_CLASSES`. Built by `from_entry`; checks itself on construction
    (`TicketMismatch`)."""

    hash: str
    client: str
    server: str
    session: str
    start: int
    end: int
    tokens: int
    cls: str
    amount: int
    expires_ms: int

    def __post_init__(self) -> None:
        for name in ("hash", "client", "server"):
            value = getattr(self, name)
            if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
                raise TicketMismatch(f"a ticket's {name} must be 64 lowercase hex digits")
        if not isinstance(self.session, str) or len(self.session) > MAX_TEXT:
            raise TicketMismatch(f"a ticket's session is a string of at most {MAX_TEXT} characters")
        if self.cls not in TICKET_CLASSES:
            raise TicketMismatch(
                f"a ticket's class is one of {', '.join(TICKET_CLASSES)}, not {self.cls!r:.40}"
            )
        for name in ("start", "end", "tokens", "amount", "expires_ms"):
            if not _whole(getattr(self, name)):
                raise TicketMismatch(f"a ticket's {name} must be a whole number >= 0")
        if self.start >= self.end:
            raise TicketMismatch(f"a ticket's blocks [{self.start}, {self.end}) are empty")
        if self.tokens < 1 or self.amount < 1:
            raise TicketMismatch("a ticket pays at least 1 point for at least 1 token")

    @property
    def blocks(self) -> int:
        return self.end - self.start

    @classmethod
    def from_entry(cls, entry: Entry) -> Ticket:
        """The ticket an entry holds; `TicketMismatch` unless it is a `ticket` whose
        `details` are exactly `class`, `start`, `end` and `tokens`, well formed."""
        if entry.kind != "ticket":
            raise TicketMismatch(f"entry {entry.hash[:12]} is a {entry.kind}, not a ticket")
        details = entry.body.get("details")
        if not isinstance(details, Mapping) or details.keys() != _DETAILS_KEYS:
            raise TicketMismatch(
                f"a ticket's details hold exactly {', '.join(sorted(_DETAILS_KEYS))}"
            )
        return cls(
            hash=entry.hash,
            client=entry.author,
            server=str(entry.body["to"]),
            session=str(entry.body["session"]),
            start=details["start"],
            end=details["end"],
            tokens=details["tokens"],
            cls=details["class"],
            amount=int(entry.body["amount"]),
            expires_ms=int(entry.body["expires"]),
        )


def ticket_body(
    *,
    server: str,
    session: str,
    start: int,
    end: int,
    tokens: int,
    cls: str,
    amount: int,
    expires_ms: int,
) -> dict[str, Any]:
    """The body of a `ticket` entry (for `Wallet.ticket` or `make_entry`); refuses
    values a server would refuse as malformed (`TicketMismatch`)."""
    Ticket(
        hash=ZERO_HASH,
        client=ZERO_HASH,
        server=server,
        session=session,
        start=start,
        end=end,
        tokens=tokens,
        cls=cls,
        amount=amount,
        expires_ms=expires_ms,
    )
    return {
        "to": server,
        "amount": amount,
        "session": session,
        "expires": expires_ms,
        "details": {"class": cls, "start": start, "end": end, "tokens": tokens},
    }


def check_ticket(
    entry: Entry,
    *,
    economy: Economy,
    client: str,
    server: str,
    session: str,
    start: int,
    end: int,
    max_length: int,
    now_ms: int,
    redeemed: Container[str],
) -> Ticket:
    """The ticket `entry` holds, if it buys this session on this server now; else a
    typed error. The checks, in order (the first that fails decides):

    1. it is a well-formed ticket (`Ticket.from_entry`): `TicketMismatch`;
    2. its author is `client`: `TicketForged` (someone else's ticket);
    3. it pays `server`: `TicketWrongServer`;
    4. its session is `session`, its blocks are `[start, end)` and its tokens
       at least `max_length`: `TicketMismatch`;
    5. its amount is at least `ticket_price` of its class for its tokens and
       blocks: `TicketMismatch`;
    6. its `expires` is at most `ticket_seconds` after the entry's own `time`:
       `TicketMismatch`;
    7. `expires` is after `now_ms`: `TicketExpired`;
    8. its hash is not in `redeemed`: `TicketUsed`.

    The signature and the funding are the ledger's business: they are checked
    when the server submits the entry to its replica."""
    ticket = Ticket.from_entry(entry)
    if ticket.client != client:
        raise TicketForged(
            f"ticket {ticket.hash[:12]} was signed by {ticket.client[:12]}, not by {client[:12]}"
        )
    if ticket.server != server:
        raise TicketWrongServer(
            f"ticket {ticket.hash[:12]} pays {ticket.server[:12]}, not this server {server[:12]}"
        )
    if ticket.session != session:
        raise TicketMismatch(f"ticket {ticket.hash[:12]} is for another session")
    if (ticket.start, ticket.end) != (start, end):
        raise TicketMismatch(
            f"ticket {ticket.hash[:12]} buys blocks [{ticket.start}, {ticket.end}),"
            f" not [{start}, {end})"
        )
    if ticket.tokens < max_length:
        raise TicketMismatch(
            f"ticket {ticket.hash[:12]} buys {ticket.tokens} tokens, the session needs {max_length}"
        )
    _check_terms(ticket, entry, economy)
    if ticket.expires_ms <= now_ms:
        raise TicketExpired(f"ticket {ticket.hash[:12]} expired")
    if ticket.hash in redeemed:
        raise TicketUsed(f"ticket {ticket.hash[:12]} was already used")
    return ticket


def _check_terms(ticket: Ticket, entry: Entry, economy: Economy) -> None:
    """Checks 5 and 6 of `check_ticket`: they depend on the ticket alone."""
    price = ticket_price(class_price(economy, ticket.cls), ticket.tokens, ticket.blocks)
    if ticket.amount < price:
        raise TicketMismatch(
            f"ticket {ticket.hash[:12]} pays {ticket.amount} points; {ticket.tokens} tokens on"
            f" {ticket.blocks} blocks of {ticket.cls} cost {price}"
        )
    if ticket.expires_ms > entry.time + economy.ticket_seconds * 1000:
        raise TicketMismatch(
            f"ticket {ticket.hash[:12]} expires more than {economy.ticket_seconds} s"
            " after it was signed"
        )


def refund_due(entry: Entry, economy: Economy, now_ms: int) -> bool:
    """Whether ticket `entry` can no longer be redeemed at `now_ms`, whatever session
    shows it: it expired, or it fails a check that depends on the ticket alone
    (malformed details, underpaid, expiring more than `ticket_seconds` after it
    was signed). A server sends such a ticket back in full; a receive of a
    ticket at a time when this holds is taking it back, not redeeming it."""
    if entry.kind != "ticket":
        return False
    try:
        ticket = Ticket.from_entry(entry)
        _check_terms(ticket, entry, economy)
    except TicketMismatch:
        return True
    return ticket.expires_ms <= now_ms


def refund_amount(ticket: Ticket, economy: Economy, served_tokens: int) -> int:
    """What the server sends back when the session ends after `served_tokens`:
    the amount less the price of what was served, within [0, amount]."""
    served = max(0, served_tokens)
    cost = ticket_price(class_price(economy, ticket.cls), served, ticket.blocks)
    return min(ticket.amount, max(0, ticket.amount - cost))


# ---- lifecycle ------------------------------------------------------------

TICKET_STATES: Final = ("offered", "redeemed", "settled", "rejected", "refunded")

TRANSITIONS: Final[Mapping[tuple[str, str], str]] = {
    # (state, event): next state
    ("offered", "redeem"): "redeemed",  # checked, stored and received by the server
    ("offered", "reject"): "rejected",  # refused: nothing written (or received too late)
    ("offered", "refund"): "refunded",  # expired unused: sent back in full
    ("rejected", "refund"): "refunded",  # a refused ticket on the ledger is still the client's
    ("redeemed", "settle"): "settled",  # the session ended: the unused part sent back
}
"""Every legal move of a ticket on a server; anything else is illegal."""


class TicketLifecycle:
    """One ticket's state on a server; `apply` moves it by `TRANSITIONS`.

    An illegal event raises `TicketError` and leaves the state as it was."""

    def __init__(self, state: str = "offered") -> None:
        if state not in TICKET_STATES:
            raise ValueError(f"a ticket state is one of {', '.join(TICKET_STATES)}")
        self.state = state

    def can(self, event: str) -> bool:
        return (self.state, event) in TRANSITIONS

    def apply(self, event: str) -> str:
        """Move on by `event`; returns the new state."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise TicketError(f"a {self.state} ticket cannot {event}")
        self.state = new
        return new

    def __repr__(self) -> str:
        return f"TicketLifecycle({self.state!r})"
