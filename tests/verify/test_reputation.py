"""Reputation: recent probe answers, zero once slashed, none before any audit."""

from __future__ import annotations

from potluck.ledger.economy import capacity_audit_body
from potluck.ledger.entry import Entry, make_entry
from potluck.p2p.identity import Identity
from potluck.verify.reputation import reputation

SWARM = "ab" * 32
VALIDATOR = Identity.generate()
OUTSIDER = Identity.generate()
SERVER = "cd" * 32


def entry(author: Identity, seq: int, kind: str, body: dict[str, object]) -> Entry:
    return make_entry(
        author,
        swarm=SWARM,
        seq=seq,
        prev="0" * 64 if seq == 1 else f"{seq:064x}",
        time=1000 * seq,
        kind=kind,
        body=body,
        balance=0,
    )


def capacity(author: Identity, seq: int, probes: int, answered: int, mismatches: int = 0) -> Entry:
    body = capacity_audit_body(
        server=SERVER,
        epoch=seq,
        start=0,
        end=6,
        probes=probes,
        answered=answered,
        milli_tokens_per_s=1000,
        mismatches=mismatches,
    )
    return entry(author, seq, "audit", body)


validators = {VALIDATOR.public_bytes.hex()}


def test_no_audit_no_reputation() -> None:
    assert reputation(SERVER, [], [], validators=validators) is None


def test_reputation_is_the_mean_share_of_good_answers_over_the_latest_audits() -> None:
    audits = [
        capacity(VALIDATOR, 1, 4, 4),
        capacity(VALIDATOR, 2, 4, 2),
        capacity(VALIDATOR, 3, 4, 4, 1),
    ]
    assert reputation(SERVER, audits, [], validators=validators) == (1 + 0.5 + 0.75) / 3
    assert reputation(SERVER, audits, [], validators=validators, window=1) == 0.75


def test_only_validators_audits_count() -> None:
    audits = [capacity(VALIDATOR, 1, 4, 2), capacity(OUTSIDER, 1, 4, 4)]
    assert reputation(SERVER, audits, [], validators=validators) == 0.5


def test_a_slash_for_a_wrong_output_zeroes_it_for_good() -> None:
    audits = [capacity(VALIDATOR, 1, 4, 4)]
    slash = entry(VALIDATOR, 2, "slash", {"account": SERVER, "reason": "wrong_output", "amount": 1})
    assert reputation(SERVER, audits, [slash], validators=validators) == 0.0
    fee = entry(
        VALIDATOR, 2, "slash", {"account": SERVER, "reason": "false_accusation", "amount": 1}
    )
    assert reputation(SERVER, audits, [fee], validators=validators) == 1.0
    forged = entry(OUTSIDER, 1, "slash", {"account": SERVER, "reason": "wrong_output", "amount": 1})
    assert reputation(SERVER, audits, [forged], validators=validators) == 1.0
