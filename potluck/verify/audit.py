"""Re-verifying every slash in a ledger by recomputation.

A `wrong_output` or `false_accusation` slash carries its evidence (see
`potluck.verify.referee`); the history it was judged on lives in the
validator's `audit` entries of result `evidence`, named by hash. Anyone with
a replica and the model's blocks can redo the referee's work:
`audit_slashes` finds each slash, gathers its chunks, recomputes the span
and checks that the ruling names the slashed account for the stated reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from potluck.errors import InvalidEvidence
from potluck.ledger.core import Ledger
from potluck.verify.referee import reverify

__all__ = ["SlashCheck", "audit_slashes"]


@dataclass(frozen=True)
class SlashCheck:
    """The outcome of re-verifying one slash."""

    entry: str  # the slash entry's hash
    account: str
    reason: str
    amount: int
    ok: bool
    detail: str


def audit_slashes(
    ledger: Ledger,
    recompute: Callable[[torch.Tensor, int, int], torch.Tensor],
    *,
    referee_dtype: str = "float32",
) -> list[SlashCheck]:
    """Re-verify every slash in `ledger` (see the module docstring)."""
    validators = ledger.validators
    results = []
    for slash in ledger.backend.by_kind("slash"):
        body = slash.body
        account, reason = str(body["account"]), str(body["reason"])
        amount = int(body.get("amount", 0))

        def chunk(entry_hash: str) -> str:
            entry = ledger.backend.get(entry_hash)
            if (
                entry is None
                or entry.kind != "audit"
                or entry.author not in validators
                or entry.body.get("result") != "evidence"
            ):
                raise InvalidEvidence(f"evidence chunk {entry_hash[:12]} is not in the ledger")
            data = entry.body.get("details", {}).get("data")
            if not isinstance(data, str):
                raise InvalidEvidence(f"evidence chunk {entry_hash[:12]} holds no data")
            return data

        try:
            ruling, guilty = reverify(body, chunk, recompute, referee_dtype=referee_dtype)
        except InvalidEvidence as exc:
            results.append(SlashCheck(slash.hash, account, reason, amount, False, str(exc)))
            continue
        ok = (account, reason) in guilty
        detail = (
            f"accused error {ruling.accused.max_error:.2e}, checker error "
            f"{ruling.checker.max_error:.2e}, tolerance {ruling.accused.threshold:.1e}"
        )
        results.append(SlashCheck(slash.hash, account, reason, amount, ok, detail))
    return results
