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

Quantised weights (`quant` other than ``"none"``) change this: their honest
variation against any *other* computation is large (an int8 server against
a float32 checker 0.38, nf4 1.0; the same mode in one stateless forward
0.17 and 0.023, dynamic int8 1.5), far above the corruptions worth catching.
But a checker in the same mode that **replays** the server's calls (the
same steps into a fresh KV cache, `Forward.steps`) was bit-identical on
every row measured (`benchmarks/quantization.py`, 1 or 2 threads either
side, span loaded again). Quantised outputs are therefore only compared
with such a replay, under `REPLAY_THRESHOLD`.

A session's wire codec adds a proven error to the outputs the client
receives (`potluck.wire.compress`): each element within its bound of the
server's float32 output. Against a same-mode replay, which is bit-identical
to the server's own output, the reference is encoded and decoded the same
way first, and the received output must then match it exactly (encoding is
deterministic), so even a corruption far below the codec's quantum is seen
wherever it moves a code. Otherwise `compare` subtracts the codec's bound
(computed from the reference encoded the same way) from each element's
difference before taking the row's relative error: compression never counts
as dishonesty, but a corruption smaller than the codec's error can hide in
it (measured in docs/verification.md).

A whole-tensor fingerprint such as TOPLOC's top-k values is not needed here:
everyone who compares (the client, a validator refereeing) holds both
tensors, and the commitment binds each row exactly by its digest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potluck.errors import TensorError
from potluck.wire import EncodedHidden, WireCodec

__all__ = [
    "REPLAY_THRESHOLD",
    "THRESHOLDS",
    "Comparison",
    "codec_roundtrip",
    "codec_slack",
    "compare",
    "relative_errors",
    "threshold_for",
]

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


REPLAY_THRESHOLD = 1e-5
"""Tolerance for a quantised output against a replay in the same mode: every honest
row measured was bit-identical; this only absorbs a last-bit difference, and a
1e-3 corruption is 100x over it."""


def threshold_for(*dtypes: str, quant: str = "none") -> float:
    """The tolerance for comparing outputs computed in `dtypes` (the loosest wins);
    for weights quantised as `quant`, against a same-mode replay (`REPLAY_THRESHOLD`)."""
    if quant != "none":
        return REPLAY_THRESHOLD
    try:
        return max(THRESHOLDS[d] for d in dtypes)
    except KeyError as exc:
        raise ValueError(f"no calibrated threshold for dtype {exc.args[0]!r}") from None


def _encoded(codec: str, reference: torch.Tensor) -> EncodedHidden | None:
    """`reference` encoded under `codec`; None for float32 or a non-finite reference
    (which never matches anyway)."""
    wire = WireCodec.from_label(codec)
    if wire.name == "float32":
        return None
    try:
        return wire.encode(reference.detach().float())
    except TensorError:
        return None


def codec_slack(codec: str, reference: torch.Tensor) -> torch.Tensor | None:
    """Per element, how far an honest output received under `codec` (a label) may be
    from `reference`'s float32 values by compression alone: the codec's proven bound
    for `reference` encoded the same way (None: no allowance)."""
    encoded = _encoded(codec, reference)
    return None if encoded is None else encoded.error_bound()


def codec_roundtrip(codec: str, reference: torch.Tensor) -> torch.Tensor:
    """`reference` as a receiver would see it after travelling under `codec`."""
    encoded = _encoded(codec, reference)
    return reference if encoded is None else encoded.decode()


def relative_errors(
    output: torch.Tensor, reference: torch.Tensor, slack: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row `||output - reference|| / ||reference||`, shape (batch * seq,); with
    `slack` (per element, like `reference`), each element's difference less its slack
    (never below 0).

    A row with a non-finite value on either side has an infinite error."""
    if output.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(output.shape)} vs {tuple(reference.shape)}")
    a = output.detach().reshape(-1, output.shape[-1]).double()  # (rows, hidden)
    b = reference.detach().reshape(-1, reference.shape[-1]).double()
    diff = a - b
    if slack is not None:
        room = slack.detach().reshape(-1, reference.shape[-1]).double()
        diff = (diff.abs() - room).clamp_min(0.0)
    err = diff.norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
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


def compare(
    output: torch.Tensor,
    reference: torch.Tensor,
    *dtypes: str,
    quant: str = "none",
    codec: str = "float32",
) -> Comparison:
    """Whether `output` is an honest computation of what `reference` is, for
    outputs computed in `dtypes` (default float32) with weights quantised as
    `quant` (then `reference` must be a same-mode replay) and received under
    `codec` (`reference` is float32, as computed)."""
    threshold = threshold_for(*(dtypes or ("float32",)), quant=quant)
    if (
        output.shape == reference.shape
        and torch.equal(output, reference)
        and bool(torch.isfinite(output).all())
    ):
        rows = output.numel() // output.shape[-1]
        return Comparison(0.0, threshold, rows, 0)
    if quant != "none":  # a same-mode replay: the honest output is exactly its encoding
        errors = relative_errors(output, codec_roundtrip(codec, reference))
    else:
        errors = relative_errors(output, reference, codec_slack(codec, reference))
    over = int((errors > threshold).sum())
    return Comparison(float(errors.max()), threshold, errors.numel(), over)
