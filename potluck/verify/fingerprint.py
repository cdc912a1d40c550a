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
    "float32": 2e-4,
    "bfloat16": 0.3,
}
"""Largest per-row relative error still counted as honest, per compute dtype.

Measured (`benchmarks/calibrate.py`, docs/verification.md): a span run step
by step with its KV cache against one stateless forward over the same
inputs, 1 or 2 torch threads on either side. Honest maxima: float32 3.6e-6
on SmolLM2 and 2.2e-5 on a tiny random Llama with wide weights (its blocks
amplify their input ~200x); bfloat16 on both sides 3.9e-2; a bfloat16
server against a float32 checker 7.2e-2 on SmolLM2 (all 30 blocks on one
server), 0.22 on the wide tiny Llama. float32's threshold is 9x its largest
honest error and 50x below a 1e-2 corruption, which is always caught, as is
1e-3. bfloat16's is 4x SmolLM2's largest error: a 1e-2 corruption, even a
0.1 one, is inside bfloat16's honest noise and cannot be told apart; only
corruptions of about 0.5 (added noise) to 0.7 (multiplicative) relative
error are caught reliably. A comparison between two dtypes uses the larger
threshold."""


def threshold_for(*dtypes: str) -> float:
    """The tolerance for comparing outputs computed in `dtypes` (the loosest wins)."""
    try:
        return max(THRESHOLDS[d] for d in dtypes)
    except KeyError as exc:
        raise ValueError(f"no calibrated threshold for dtype {exc.args[0]!r}") from None


def relative_errors(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row `||output - reference|| / ||reference||`, shape (batch * seq,).

    A row with a non-finite value on either side has an infinite error."""
    if output.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(output.shape)} vs {tuple(reference.shape)}")
    a = output.detach().reshape(-1, output.shape[-1]).double()  # (rows, hidden)
    b = reference.detach().reshape(-1, reference.shape[-1]).double()
    err = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
    finite = torch.isfinite(a).all(dim=-1) & torch.isfinite(b).all(dim=-1)
    return torch.where(finite, err, torch.full_like(err, float("inf")))


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
    if (
        output.shape == reference.shape
        and torch.equal(output, reference)
        and bool(torch.isfinite(output).all())
    ):
        rows = output.numel() // output.shape[-1]
        return Comparison(0.0, threshold, rows, 0)
    errors = relative_errors(output, reference)
    over = int((errors > threshold).sum())
    return Comparison(float(errors.max()), threshold, errors.numel(), over)
