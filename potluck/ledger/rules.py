"""The rules an entry must pass against the entries it depends on. Pure.

`check_entry` takes an entry together with everything it depends on (the
author's previous entry, the transfer a receive takes, whether this chain
already received that transfer) and raises the typed `LedgerError` of the
first rule it breaks. It reads no clock, no disk and no network, so the
same inputs always give the same answer on every replica.

The rules, in the order they are checked:

1. Validator-only kinds (`VALIDATOR_KINDS`) need an author listed in genesis
   (`NotValidator`).
2. Seq 1 follows nothing; any other seq follows the author's entry at
   seq - 1 whose hash is `prev` (`SeqGap` when it is missing,
   `WrongPrevHash` when `prev` names some other entry).
3. `send` and `ticket` lower the balance by the amount, to another account,
   and never below zero (`InsufficientBalance`).
4. `receive` raises it by the amount of a `grant`, `mint`, `send` or `ticket`
   to the author (`UnknownSource`, `NotReceivable`) that no earlier entry of
   the same chain received (`AlreadyReceived`).
5. Every other kind leaves the balance as it was.
6. `balance` must be exactly the result (`WrongBalance`).
"""

from __future__ import annotations

from potluck.errors import (
    AlreadyReceived,
    InsufficientBalance,
    MalformedEntry,
    NotReceivable,
    NotValidator,
    SeqGap,
    UnknownSource,
    WrongBalance,
    WrongPrevHash,
)
from potluck.ledger.entry import DEBIT_KINDS, MAX_AMOUNT, TRANSFER_KINDS, VALIDATOR_KINDS, Entry


def next_balance(kind: str, amount: int, previous_balance: int, source: Entry | None) -> int:
    """The balance after an entry of `kind` moving `amount` (its body's, for a debit),
    which may be negative (an overdraft)."""
    if kind in DEBIT_KINDS:
        return previous_balance - amount
    if kind == "receive":
        assert source is not None
        return previous_balance + source.amount
    return previous_balance


def balance_after(entry: Entry, previous_balance: int, source: Entry | None) -> int:
    """The balance the entry's effect gives, which may be negative (an overdraft)."""
    return next_balance(entry.kind, entry.amount, previous_balance, source)


def check_entry(
    entry: Entry,
    *,
    validators: frozenset[str],
    previous: Entry | None,
    source: Entry | None,
    already_received: bool,
) -> None:
    """Raise the `LedgerError` for the first rule `entry` breaks, else return."""
    short = f"{entry.kind} {entry.author[:12]}#{entry.seq}"
    if entry.kind in VALIDATOR_KINDS and entry.author not in validators:
        raise NotValidator(f"{short}: only a genesis validator may write a {entry.kind}")
    if entry.seq == 1:
        previous_balance = 0
    else:
        if previous is None:
            raise SeqGap(
                f"{short}: the entry at seq {entry.seq - 1} ({entry.prev[:12]}) is missing"
            )
        if (
            previous.hash != entry.prev
            or previous.author != entry.author
            or previous.seq != entry.seq - 1
        ):
            raise WrongPrevHash(
                f"{short}: prev {entry.prev[:12]} is not this author's entry at seq {entry.seq - 1}"
            )
        previous_balance = previous.balance
    if entry.kind in TRANSFER_KINDS and entry.to == entry.author:
        raise MalformedEntry(f"{short}: an account cannot transfer points to itself")
    if entry.kind == "receive":
        if source is None:
            raise UnknownSource(f"{short}: source {entry.source} is missing")
        if source.kind not in TRANSFER_KINDS or source.to != entry.author:
            raise NotReceivable(
                f"{short}: {source.kind} {source.hash[:12]} is not a transfer to it"
            )
        if already_received:
            raise AlreadyReceived(f"{short}: this chain already received {source.hash[:12]}")
    expected = balance_after(entry, previous_balance, source)
    if expected < 0:
        raise InsufficientBalance(
            f"{short}: spends {entry.amount} but the balance is {previous_balance}"
        )
    if expected > MAX_AMOUNT:
        raise WrongBalance(f"{short}: the balance would pass {MAX_AMOUNT}")
    if entry.balance != expected:
        raise WrongBalance(f"{short}: balance after is {expected}, not {entry.balance}")
