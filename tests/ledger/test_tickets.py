"""Tickets, the pure core: prices, the body, the server's checks in order, refunds,
which tickets are due back, and the lifecycle table. Plus the economy keys and
error codes that tickets add."""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.errors import (
    GenesisError,
    NoRouteError,
    NoTrustedRouteError,
    RemoteError,
    TicketError,
    TicketExpired,
    TicketForged,
    TicketMismatch,
    TicketUnfunded,
    TicketUsed,
    TicketWrongServer,
    remote_error,
)
from potluck.ledger.entry import ZERO_HASH, Entry, make_entry
from potluck.ledger.genesis import Economy
from potluck.ledger.tickets import (
    TICKET_CLASSES,
    TICKET_STATES,
    TRANSITIONS,
    Ticket,
    TicketLifecycle,
    check_ticket,
    class_price,
    refund_amount,
    refund_due,
    refund_memo,
    refunded_ticket,
    ticket_body,
    ticket_expiry,
    ticket_price,
)
from potluck.testing.ledger import make_genesis, seeded_identity
from potluck.wire import ErrorReply

CLIENT = seeded_identity("tickets", "client")
SERVER = seeded_identity("tickets", "server")
OTHER = seeded_identity("tickets", "other")
SWARM = make_genesis([seeded_identity("tickets", "validator")]).swarm_id
ECONOMY = Economy(priority_price=10, private_price=25, ticket_seconds=600)
SIGNED = 1_900_000_000_000
"""When the test tickets are signed (ms)."""
NOW = SIGNED + 1000
SESSION = "session-1"
FUZZ = settings(max_examples=200, deadline=None)


def body(**changes: Any) -> dict[str, Any]:
    """A ticket body for 100 tokens on blocks [2, 6) of SESSION, paying 10 points."""
    fields: dict[str, Any] = {
        "server": SERVER.account,
        "session": SESSION,
        "start": 2,
        "end": 6,
        "tokens": 100,
        "cls": "paid",
        "amount": 10,
        "expires_ms": SIGNED + 60_000,
    }
    fields.update(changes)
    return ticket_body(**fields)


def signed(
    ticket: dict[str, Any], *, author: Any = CLIENT, kind: str = "ticket", time: int = SIGNED
) -> Entry:
    return make_entry(
        author,
        swarm=SWARM,
        seq=1,
        prev=ZERO_HASH,
        time=time,
        kind=kind,
        body=ticket,
        balance=0,
    )


def check(entry: Entry, **changes: Any) -> Ticket:
    args: dict[str, Any] = {
        "economy": ECONOMY,
        "client": CLIENT.account,
        "server": SERVER.account,
        "session": SESSION,
        "start": 2,
        "end": 6,
        "max_length": 100,
        "now_ms": NOW,
        "redeemed": frozenset(),
    }
    args.update(changes)
    return check_ticket(entry, **args)


# ---- prices -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "tokens", "blocks", "points"),
    [
        (1, 256, 24, 7),  # 6.144 rounds up
        (1, 1, 1, 1),
        (3, 1000, 1, 3),
        (1000, 1, 1, 1),
        (10, 100, 4, 4),
        (0, 100, 10, 0),
        (1, 0, 5, 0),
        (1, 5, 0, 0),
    ],
)
def test_ticket_price_is_the_price_per_1000_token_blocks_rounded_up(
    price: int, tokens: int, blocks: int, points: int
) -> None:
    assert ticket_price(price, tokens, blocks) == points


@FUZZ
@given(st.integers(0, 10**6), st.integers(0, 10**5), st.integers(0, 1000), st.integers(0, 10))
def test_ticket_price_is_exactly_the_ceiling_and_grows_with_tokens(
    price: int, tokens: int, blocks: int, more: int
) -> None:
    exact = Fraction(price * tokens * blocks, 1000)
    points = ticket_price(price, tokens, blocks)
    assert points - 1 < exact <= points
    assert ticket_price(price, tokens + more, blocks) >= points


def test_ticket_price_refuses_negative_numbers() -> None:
    for args in [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]:
        with pytest.raises(ValueError):
            ticket_price(*args)


def test_each_class_has_its_price_and_expiry_is_ticket_seconds_later() -> None:
    assert TICKET_CLASSES == ("paid", "private")
    assert class_price(ECONOMY, "paid") == 10
    assert class_price(ECONOMY, "private") == 25
    with pytest.raises(TicketMismatch, match="class"):
        class_price(ECONOMY, "normal")
    assert ticket_expiry(NOW, ECONOMY) == NOW + 600_000


# ---- the body and the Ticket --------------------------------------------------------


def test_ticket_body_is_the_documented_format_and_reads_back() -> None:
    made = body(cls="private", amount=99)
    assert made == {
        "to": SERVER.account,
        "amount": 99,
        "session": SESSION,
        "expires": SIGNED + 60_000,
        "details": {"class": "private", "start": 2, "end": 6, "tokens": 100},
    }
    entry = signed(made)
    ticket = Ticket.from_entry(entry)
    assert ticket == Ticket(
        hash=entry.hash,
        client=CLIENT.account,
        server=SERVER.account,
        session=SESSION,
        start=2,
        end=6,
        tokens=100,
        cls="private",
        amount=99,
        expires_ms=SIGNED + 60_000,
    )
    assert ticket.blocks == 4


@pytest.mark.parametrize(
    "changes",
    [
        {"start": 6},
        {"start": 7},
        {"start": -1},
        {"tokens": 0},
        {"tokens": True},
        {"amount": 0},
        {"cls": "normal"},
        {"server": "not hex"},
        {"session": "x" * 257},
        {"expires_ms": -5},
        {"end": 2**53},
    ],
    ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))!r:.12}",
)
def test_ticket_body_refuses_what_a_server_would_refuse(changes: dict[str, Any]) -> None:
    with pytest.raises(TicketMismatch):
        body(**changes)


@pytest.mark.parametrize(
    "details",
    [
        None,
        {"class": "paid", "start": 2, "end": 6},
        {"class": "paid", "start": 2, "end": 6, "tokens": 100, "extra": 1},
        {"class": "paid", "start": "2", "end": 6, "tokens": 100},
        {"class": 3, "start": 2, "end": 6, "tokens": 100},
        {"class": "paid", "start": 2, "end": True, "tokens": 100},
        {"class": "paid", "start": 6, "end": 2, "tokens": 100},
    ],
)
def test_from_entry_refuses_bad_details(details: Any) -> None:
    made = body()
    if details is None:
        del made["details"]
    else:
        made["details"] = details
    with pytest.raises(TicketMismatch):
        Ticket.from_entry(signed(made))


def test_from_entry_refuses_an_entry_that_is_not_a_ticket() -> None:
    send = signed({"to": SERVER.account, "amount": 10}, kind="send")
    with pytest.raises(TicketMismatch, match="is a send, not a ticket"):
        Ticket.from_entry(send)


# ---- check_ticket ---------------------------------------------------------------------


def test_a_good_ticket_passes() -> None:
    entry = signed(body())
    ticket = check(entry)
    assert ticket == Ticket.from_entry(entry)
    # more tokens or points than needed are fine; one ms before expiry is fine
    assert check(signed(body(tokens=500, amount=1000)), max_length=100).tokens == 500
    assert check(entry, now_ms=SIGNED + 59_999).hash == entry.hash
    # a free class still needs its ticket to pay at least one point (the entry rules)
    free = dataclasses.replace(ECONOMY, priority_price=0)
    assert check(signed(body(amount=1)), economy=free).amount == 1


@pytest.mark.parametrize(
    ("entry", "changes", "error", "match"),
    [
        (signed({"to": SERVER.account, "amount": 10}, kind="send"), {}, TicketMismatch, "send"),
        (signed(body(), author=OTHER), {}, TicketForged, "signed by"),
        (signed(body(server=OTHER.account)), {}, TicketWrongServer, "pays"),
        (signed(body(session="another")), {}, TicketMismatch, "another session"),
        (signed(body(start=1)), {}, TicketMismatch, "blocks"),
        (signed(body(end=7)), {}, TicketMismatch, "blocks"),
        (signed(body(tokens=99)), {}, TicketMismatch, "99 tokens, the session needs 100"),
        (signed(body(amount=3)), {}, TicketMismatch, "cost 4"),
        (signed(body(cls="private", amount=9)), {}, TicketMismatch, "cost 10"),
        (signed(body(expires_ms=SIGNED + 600_001)), {}, TicketMismatch, "600 s"),
        (signed(body()), {"now_ms": SIGNED + 60_000}, TicketExpired, "expired"),
        (signed(body()), {"now_ms": SIGNED + 10**9}, TicketExpired, "expired"),
    ],
    ids=[
        "not-a-ticket",
        "another-author",
        "another-server",
        "another-session",
        "another-start",
        "another-end",
        "too-few-tokens",
        "underpaid",
        "underpaid-private",
        "expires-too-late",
        "expires-now",
        "expired",
    ],
)
def test_each_check_raises_its_error(
    entry: Entry, changes: dict[str, Any], error: type[TicketError], match: str
) -> None:
    with pytest.raises(error, match=match):
        check(entry, **changes)


def test_a_used_ticket_is_refused() -> None:
    entry = signed(body())
    with pytest.raises(TicketUsed):
        check(entry, redeemed={entry.hash})
    assert check(entry, redeemed={"ab" * 32}).hash == entry.hash


def test_the_first_failing_check_decides() -> None:
    everything_wrong = signed(
        body(server=OTHER.account, session="x", amount=1, expires_ms=SIGNED), author=OTHER
    )
    with pytest.raises(TicketForged):
        check(everything_wrong, redeemed={everything_wrong.hash})
    wrong_server_and_session = signed(body(server=OTHER.account, session="x"))
    with pytest.raises(TicketWrongServer):
        check(wrong_server_and_session)
    underpaid_and_expired = signed(body(amount=1, expires_ms=SIGNED))
    with pytest.raises(TicketMismatch):
        check(underpaid_and_expired)
    expired_and_used = signed(body())
    with pytest.raises(TicketExpired):
        check(expired_and_used, now_ms=SIGNED + 10**7, redeemed={expired_and_used.hash})


def test_the_expiry_bound_counts_from_the_entrys_own_time() -> None:
    limit = SIGNED + ECONOMY.ticket_seconds * 1000
    assert check(signed(body(expires_ms=limit))).expires_ms == limit
    later = signed(body(expires_ms=limit + 5000), time=SIGNED + 5000)
    assert check(later).expires_ms == limit + 5000


# ---- refunds --------------------------------------------------------------------------


def test_refund_amount_sends_back_what_was_not_served() -> None:
    ticket = Ticket.from_entry(signed(body(amount=10)))  # 100 tokens x 4 blocks at 10 = 4
    assert refund_amount(ticket, ECONOMY, 0) == 10
    assert refund_amount(ticket, ECONOMY, 50) == 8  # 50 x 4 x 10 / 1000 = 2
    assert refund_amount(ticket, ECONOMY, 1) == 9  # 0.04 rounds up to 1
    assert refund_amount(ticket, ECONOMY, 100) == 6
    assert refund_amount(ticket, ECONOMY, 10_000) == 0  # served more than bought: nothing back
    assert refund_amount(ticket, ECONOMY, -5) == 10
    private = Ticket.from_entry(signed(body(cls="private", amount=10)))
    assert refund_amount(private, ECONOMY, 50) == 5  # 50 x 4 x 25 / 1000


@FUZZ
@given(
    price=st.integers(0, 1000),
    tokens=st.integers(1, 5000),
    blocks=st.integers(1, 64),
    extra=st.integers(0, 10**6),
    data=st.data(),
)
def test_refund_plus_cost_is_the_amount_for_any_served_length(
    price: int, tokens: int, blocks: int, extra: int, data: st.DataObject
) -> None:
    economy = Economy(priority_price=price)
    amount = max(1, ticket_price(price, tokens, blocks) + extra)
    ticket = Ticket.from_entry(
        signed(body(start=0, end=blocks, tokens=tokens, amount=amount, expires_ms=SIGNED + 1))
    )
    served = data.draw(st.integers(0, tokens), label="served")
    refund = refund_amount(ticket, economy, served)
    assert refund + ticket_price(price, served, blocks) == amount
    beyond = data.draw(st.integers(-(10**6), 10**7), label="any served")
    assert 0 <= refund_amount(ticket, economy, beyond) <= amount


def test_refund_due_for_expired_tickets_and_tickets_that_can_never_pass() -> None:
    good = signed(body())
    assert not refund_due(good, ECONOMY, NOW)
    assert refund_due(good, ECONOMY, SIGNED + 60_000)
    bad_details = body()
    bad_details["details"] = {"class": "vip"}
    assert refund_due(signed(bad_details), ECONOMY, NOW)
    assert refund_due(signed(body(amount=3)), ECONOMY, NOW)  # underpaid
    assert refund_due(signed(body(expires_ms=SIGNED + 600_001)), ECONOMY, NOW)
    # for another session or server it is still redeemable by someone: not due
    assert not refund_due(signed(body(session="other", server=OTHER.account)), ECONOMY, NOW)
    assert not refund_due(signed({"to": SERVER.account, "amount": 3}, kind="send"), ECONOMY, NOW)


def test_a_refund_memo_names_its_ticket() -> None:
    ticket = signed(body())
    memo = refund_memo(ticket.hash)
    assert memo == f"refund {ticket.hash}"
    refund = signed({"to": CLIENT.account, "amount": 3, "memo": memo}, author=SERVER, kind="send")
    assert refunded_ticket(refund) == ticket.hash
    for other in ["refund", "refund xyz", f"refund {ticket.hash}0", f"thanks {ticket.hash}", ""]:
        send = signed({"to": CLIENT.account, "amount": 3, "memo": other}, kind="send")
        assert refunded_ticket(send) is None
    assert refunded_ticket(signed({"to": CLIENT.account, "amount": 3}, kind="send")) is None
    assert refunded_ticket(ticket) is None


# ---- lifecycle ------------------------------------------------------------------------


def test_the_lifecycle_moves_by_the_table() -> None:
    lifecycle = TicketLifecycle()
    assert lifecycle.state == "offered"
    assert lifecycle.apply("redeem") == "redeemed"
    assert lifecycle.apply("settle") == "settled"
    assert TicketLifecycle().apply("reject") == "rejected"
    assert TicketLifecycle().apply("refund") == "refunded"
    assert TicketLifecycle("rejected").apply("refund") == "refunded"
    assert set(TRANSITIONS.values()) <= set(TICKET_STATES)
    with pytest.raises(ValueError):
        TicketLifecycle("lost")


EVENTS = sorted({event for _, event in TRANSITIONS} | {"expire", "use"})


@pytest.mark.parametrize("state", TICKET_STATES)
def test_an_illegal_transition_raises_and_changes_nothing(state: str) -> None:
    for event in EVENTS:
        lifecycle = TicketLifecycle(state)
        if (state, event) in TRANSITIONS:
            assert lifecycle.can(event)
            continue
        assert not lifecycle.can(event)
        with pytest.raises(TicketError, match=f"a {state} ticket cannot {event}"):
            lifecycle.apply(event)
        assert lifecycle.state == state


def test_settled_and_refunded_are_final() -> None:
    for state in ("settled", "refunded"):
        assert not any(s == state for s, _ in TRANSITIONS)


# ---- economy and errors ---------------------------------------------------------------


def test_the_economy_has_ticket_prices_and_lifetime() -> None:
    economy = Economy()
    assert (economy.private_price, economy.ticket_seconds) == (1, 600)
    fields = {f.name: f for f in dataclasses.fields(Economy)}
    assert fields["private_price"].metadata["help"]
    assert fields["ticket_seconds"].metadata["help"]
    bad: list[dict[str, Any]] = [{"private_price": -1}, {"private_price": True}]
    bad += [{"private_price": 1.5}, {"ticket_seconds": 0}, {"ticket_seconds": False}]
    bad += [{"ticket_seconds": 2.5}]
    for changes in bad:
        with pytest.raises(GenesisError, match=next(iter(changes))):
            Economy(**changes)
    assert Economy(private_price=0).private_price == 0


def test_the_genesis_hashes_the_ticket_keys() -> None:
    validator = seeded_identity("tickets", "validator")
    base = make_genesis([validator])
    assert json.loads(base.to_bytes())["economy"]["ticket_seconds"] == 600
    for changes in [{"private_price": 2}, {"ticket_seconds": 601}]:
        other = dataclasses.replace(base, economy=Economy(**changes))
        assert other.swarm_id != base.swarm_id


TICKET_ERRORS: list[tuple[type[TicketError], str]] = [
    (TicketError, "bad_ticket"),
    (TicketUsed, "ticket_used"),
    (TicketExpired, "ticket_expired"),
    (TicketUnfunded, "ticket_unfunded"),
    (TicketForged, "ticket_forged"),
    (TicketWrongServer, "ticket_wrong_server"),
    (TicketMismatch, "ticket_mismatch"),
]


@pytest.mark.parametrize(("cls", "code"), TICKET_ERRORS)
def test_a_ticket_error_comes_back_to_the_client_as_itself(
    cls: type[TicketError], code: str
) -> None:
    assert cls.code == code
    assert issubclass(cls, TicketError) and issubclass(cls, RemoteError)
    reply = ErrorReply.from_exception(cls("no good"))
    assert reply.code == code
    back = reply.to_exception()
    assert type(back) is cls and str(back) == "no good"
    assert type(remote_error(code, "x")) is cls


def test_no_trusted_route_is_a_no_route_error() -> None:
    exc = NoTrustedRouteError()
    assert isinstance(exc, NoRouteError)
    assert str(exc) == "no trusted route covers the model"
    assert str(NoTrustedRouteError("only 2 of 3 blocks")) == "only 2 of 3 blocks"
