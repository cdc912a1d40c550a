"""Re-verifying every slash in a ledger by recomputation.

A `wrong_output` or `false_accusation` slash carries its evidence (see
`potluck.verify.referee`); the history it was judged on lives in the
validator's `audit` entries of result `evidence`, named by hash. Anyone with
a replica and the model's blocks can redo the referee's work:
`audit_slashes` finds each slash, gathers its chunks, recomputes the span
and checks that the ruling names the slashed account for the stated reason.

`audit_ledger` does that for a node's ledger file, together with
`potluck.ledger.tools.audit_balances` (every balance equals grants plus mints
plus sends received, minus spends, less slashes): `potluck ledger audit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from potluck.errors import ConfigError, InvalidEvidence
from potluck.ledger.core import Ledger
from potluck.ledger.genesis import Genesis
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.ledger.tools import BalanceAudit, audit_balances
from potluck.verify.referee import Recompute, reverify

__all__ = ["LedgerAudit", "SlashCheck", "audit_ledger", "audit_slashes"]


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
    recompute: Recompute,
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


@dataclass(frozen=True)
class LedgerAudit:
    balances: BalanceAudit
    slashes: list[SlashCheck]
    recomputed: bool  # whether slashes were re-verified (a model was given)

    @property
    def ok(self) -> bool:
        return self.balances.ok and all(check.ok for check in self.slashes)


def audit_ledger(data_dir: Path, genesis: Genesis, *, model: str | None = None) -> LedgerAudit:
    """Audit the balances of the ledger in `data_dir` and, given the swarm's `model`
    (a name or folder), re-verify every slash by recomputation. Read-only."""
    from potluck.model import BlockSpan, load_config, model_identity, num_blocks, resolve_model

    spans: dict[str, BlockSpan] = {}  # per quantisation, loaded when a slash needs it
    path = None
    if model is not None:
        path = resolve_model(model)
        if model_identity(path) != genesis.model_identity:
            raise ConfigError(f"{model} is not the model of swarm {genesis.name!r}")
        blocks = num_blocks(load_config(path))
    with SqliteBackend(data_dir / LEDGER_FILE, readonly=True) as backend:
        backend.claim_swarm(genesis.swarm_id)
        ledger = Ledger(genesis, backend)
        balances = audit_balances(ledger)
        slashes: list[SlashCheck] = []
        if path is not None:
            model_path = path

            def recompute(
                history: torch.Tensor, start: int, end: int, quant: str, steps: tuple[int, ...]
            ) -> torch.Tensor:
                if quant not in spans:
                    spans[quant] = BlockSpan.load(model_path, 0, blocks, quant=quant)
                span = spans[quant]
                if steps:
                    return span.replay(history, steps, start=start, end=end).float()
                return span.forward(history, None, start=start, end=end).float()

            slashes = audit_slashes(ledger, recompute)
    return LedgerAudit(balances, slashes, path is not None)
