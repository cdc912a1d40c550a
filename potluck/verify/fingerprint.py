"""Comparing hidden states that should be equal up to float noise. Pure.

Two servers that run the same blocks on the same input rarely produce
bit-identical outputs: a checker recomputes a decode step as part of one
prefill, with other matrix shapes and so another summation order, and in
bfloat16 the rounding of every layer compounds. The comparison is therefore:

1. **Exact**, where both sides are bit-reproducible: equal row digests (see
   `potluck.verify.commitment.row_digests`) match without further ado.
2. Otherwise a **relative-error bound** per row (one token's hidden state):
   `||a - b|| / ||b||`, compared with a threshold chosen from the honest
   variation measured for the dtypes of both sides (`THRESHOLDS`, calibrated
   in docs/verification.md with `benchmarks/calibrate.py`).

A whole-tensor fingerprint such as TOPLOC's top-k values is not needed here:
everyone who compares (the client, a validator refereeing) holds both
tensors, and the commitment binds each row exactly by its digest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["THRESHOLDS", "Comparison", "compare", "relative_errors", "threshold_for"]

THRESHOLDS: dict[str, float] = {
    "float32": 1e-3,
    "bfloat16": 1e-1,
}
"""Largest per-row relative error still counted as honest, per compute dtype.

Each is the honest maximum measured in docs/verification.md times a safety
margin; a comparison between two dtypes uses the larger threshold."""


def threshold_for(*dtypes: str) -> float:
    """The tolerance for comparing outputs computed in `dtypes` (the loosest wins)."""
    try:
        return max(THRESHOLDS[d] for d in dtypes)
    except KeyError as exc:
        raise ValueError(f"no calibrated threshold for dtype {exc.args[0]!r}") from None


def relative_errors(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row `||output - reference|| / ||reference||`, shape (batch * seq,).

    Non-finite values in `output` give an infinite error."""
    if output.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(output.shape)} vs {tuple(reference.shape)}")
    a = output.detach().reshape(-1, output.shape[-1]).double()  # (rows, hidden)
    b = reference.detach().reshape(-1, reference.shape[-1]).double()
    err = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
    return torch.where(torch.isfinite(a).all(dim=-1), err, torch.full_like(err, float("inf")))


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing an output with a reference computation."""

    max_error: float
    threshold: float
    rows: int
    rows_over: int

    @property
    def matches(self) -> bool:
        return self.rows_over == 0


def compare(output: torch.Tensor, reference: torch.Tensor, *dtypes: str) -> Comparison:
    """Whether `output` is an honest computation of what `reference` is, for
    outputs computed in `dtypes` (default float32)."""
    threshold = threshold_for(*(dtypes or ("float32",)))
    if output.shape == reference.shape and torch.equal(output, reference):
        rows = output.numel() // output.shape[-1]
        return Comparison(0.0, threshold, rows, 0)
    errors = relative_errors(output, reference)
    over = int((errors > threshold).sum())
    return Comparison(float(errors.max()), threshold, errors.numel(), over)
