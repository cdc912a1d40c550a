"""Refereeing a failed spot-check, and the fraud proof it leaves. Pure.

A client whose spot-check failed sends a validator an `Evidence` record with
three tensors (the `Dispute` message):

- `history`: every input of the accused session up to the disputed step,
  `(batch, tokens, hidden)`, which `steps` cuts into the session's steps;
- `outputs`: the disputed row (one token's hidden state, `(1, 1, hidden)`)
  of what the accused server returned for that step;
- `checked`: what the checker returned for the same position.

`check_evidence` makes sure the record proves what it claims: both
commitments are signed; the history chains to the accused's signed
`inputs` step by step and to the checker's (as one step; for a quantised
accused, step by step too: its checker must have replayed the steps in the
same quantisation, and the referee does likewise, `replay_steps`); the
checker's forward travelled uncompressed, while the accused's step may have
travelled under its session's codec (the comparison allows the codec's
proven error); `outputs` is row
`row` of the accused's signed output (`accused_rows`) and `checked` the
checker's row for the same position. Only then does the referee recompute the span
on `history` (outside this module) and `rule` compares both answers with
the reference under the calibrated tolerance (`potluck.verify.fingerprint`):
whoever disagrees is guilty; if both agree, the accusation was false and the
accuser is.

The validator records a guilty server's slash with the evidence in the
ledger: the history in `audit` entries of at most `CHUNK_BYTES` each
(`history_chunks`), and the rest in the slash's `evidence` (`slash_evidence`).
Anyone holding the ledger and the model can re-verify it (`reverify`).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from potluck.errors import BadCommitment, InvalidEvidence, PotluckError
from potluck.verify.commitment import (
    ZERO_CHAIN,
    Commitment,
    chain_inputs,
    output_root,
    replay_chain,
    row_digests,
)
from potluck.verify.fingerprint import Comparison, compare
from potluck.wire.tensors import TensorMeta, tensor_from_bytes, tensor_to_bytes

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNKS",
    "Evidence",
    "Recompute",
    "Ruling",
    "check_evidence",
    "history_chunks",
    "history_from_chunks",
    "pack_tensor",
    "reference_row",
    "replay_steps",
    "reverify",
    "row_position",
    "rule",
    "slash_evidence",
    "step_rows",
    "unpack_tensor",
]

CHUNK_BYTES = 96 * 1024
"""Compressed history bytes per evidence `audit` entry (base64 keeps it under 256 KiB)."""
MAX_CHUNKS = 1024
"""Most evidence entries one case may take (about 96 MiB of compressed history)."""
MAX_EVIDENCE_TOKENS = 1 << 16


@dataclass(frozen=True)
class Evidence:
    """What a client claims when it disputes a step."""

    accused: Commitment  # the accused's commitment for the disputed step
    checker: Commitment  # the checker's commitment for its Forward of the history
    steps: tuple[int, ...]  # tokens in each step of the accused session, up to the disputed one
    rows: tuple[str, ...]  # the checker's row digests, all of them (batch x tokens)
    accused_rows: tuple[str, ...]  # the accused's row digests for the step (batch x step tokens)
    row: int  # the disputed row, an index into accused_rows

    @property
    def case(self) -> str:
        """The dispute's id: one per pair of conflicting commitments."""
        pair = bytes.fromhex(self.accused.signature) + bytes.fromhex(self.checker.signature)
        return hashlib.sha256(pair).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "accused": self.accused.to_json(),
            "checker": self.checker.to_json(),
            "steps": list(self.steps),
            "rows": list(self.rows),
            "accused_rows": list(self.accused_rows),
            "row": self.row,
        }

    @classmethod
    def from_json(cls, data: object) -> Evidence:
        if not isinstance(data, Mapping):
            raise InvalidEvidence("evidence must be an object")
        try:
            steps, rows, accused_rows, row = (
                data["steps"],
                data["rows"],
                data["accused_rows"],
                data["row"],
            )
            if not isinstance(steps, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps
            ):
                raise InvalidEvidence("evidence steps must be a list of positive token counts")
            for digests in (rows, accused_rows):
                if not isinstance(digests, list) or not all(isinstance(r, str) for r in digests):
                    raise InvalidEvidence("evidence rows must be lists of digests")
            if not isinstance(row, int) or isinstance(row, bool) or row < 0:
                raise InvalidEvidence("evidence row must be a row index")
            return cls(
                accused=Commitment.from_json(data["accused"]),
                checker=Commitment.from_json(data["checker"]),
                steps=tuple(steps),
                rows=tuple(rows),
                accused_rows=tuple(accused_rows),
                row=row,
            )
        except KeyError as exc:
            raise InvalidEvidence(f"evidence lacks {exc.args[0]!r}") from None
        except BadCommitment as exc:
            raise InvalidEvidence(str(exc)) from None


def step_rows(batch: int, total: int, last: int) -> list[int]:
    """Indexes, among the rows of a (batch, total) output, of the last `last` positions."""
    return [b * total + p for b in range(batch) for p in range(total - last, total)]


def row_position(row: int, total: int, last: int) -> tuple[int, int]:
    """`(batch index, position)` in the history of row `row` of a step of `last`
    tokens that ends at `total`."""
    return row // last, total - last + row % last


def check_evidence(
    evidence: Evidence, history: torch.Tensor, outputs: torch.Tensor, checked: torch.Tensor
) -> None:
    """Raise `InvalidEvidence` unless the record proves what it claims (see module doc)."""
    accused, checker = evidence.accused, evidence.checker
    try:
        accused.verify()
        checker.verify()
    except BadCommitment as exc:
        raise InvalidEvidence(str(exc)) from None
    if accused.swarm != checker.swarm:
        raise InvalidEvidence("the two commitments are for different swarms")
    if checker.session or checker.step:
        raise InvalidEvidence("the checker's commitment is not for a stateless forward")
    if accused.quant != "none" and checker.quant != accused.quant:
        raise InvalidEvidence(
            f"a {accused.quant} server's step must be checked in {accused.quant}, "
            f"not {checker.quant}"
        )
    if checker.codec != "float32":
        raise InvalidEvidence("a checker's forward travels uncompressed")
    if (accused.start, accused.end) != (checker.start, checker.end):
        raise InvalidEvidence("the checker computed other blocks than the accused")
    if len(evidence.steps) != accused.step + 1:
        raise InvalidEvidence(
            f"evidence lists {len(evidence.steps)} steps up to step {accused.step}"
        )
    if history.ndim != 3 or outputs.ndim != 3 or checked.ndim != 3:
        raise InvalidEvidence("history, outputs and checked must be (batch, tokens, hidden)")
    batch, total, hidden = history.shape
    if total != sum(evidence.steps) or total > MAX_EVIDENCE_TOKENS:
        raise InvalidEvidence(f"history has {total} tokens, the steps add up to another number")
    last = evidence.steps[-1]
    if outputs.shape != (1, 1, hidden) or checked.shape != outputs.shape:
        raise InvalidEvidence(f"outputs and checked must be one row, shape {(1, 1, hidden)}")
    if len(evidence.accused_rows) != batch * last or not evidence.row < batch * last:
        raise InvalidEvidence(f"the step has {batch * last} rows; row {evidence.row} is not one")
    chain, at = ZERO_CHAIN, 0
    for n in evidence.steps:
        chain = chain_inputs(chain, history[:, at : at + n])
        at += n
    if chain != accused.inputs:
        raise InvalidEvidence("the history does not chain to the accused's signed inputs")
    given = replay_chain(history, replay_steps(evidence))
    if given != checker.inputs:
        raise InvalidEvidence("the history is not what the checker was given")
    if output_root(list(evidence.accused_rows)) != accused.outputs:
        raise InvalidEvidence("the accused's rows do not match its signed outputs")
    if row_digests(outputs) != [evidence.accused_rows[evidence.row]]:
        raise InvalidEvidence("outputs is not the row the accused signed")
    if len(evidence.rows) != batch * total or output_root(list(evidence.rows)) != checker.outputs:
        raise InvalidEvidence("the checker's rows do not match its signed outputs")
    b, position = row_position(evidence.row, total, last)
    if row_digests(checked) != [evidence.rows[b * total + position]]:
        raise InvalidEvidence("checked is not what the checker returned for that position")


@dataclass(frozen=True)
class Ruling:
    """The referee's decision on one case."""

    case: str
    accused: Comparison  # the accused's output against the referee's recomputation
    checker: Comparison  # the checker's output against it

    def guilty(self, evidence: Evidence, accuser: str) -> list[tuple[str, str]]:
        """`(account, reason)` for everyone found wrong: reasons are `wrong_output`
        and `false_accusation`."""
        found = []
        if not self.accused.matches:
            found.append((evidence.accused.server, "wrong_output"))
        if not self.checker.matches:
            found.append((evidence.checker.server, "wrong_output"))
        if not found:
            found.append((accuser, "false_accusation"))
        return found


def replay_steps(evidence: Evidence) -> tuple[int, ...]:
    """How the disputed span must be recomputed: the accused session's steps, one call
    each, for quantised weights (only a replay is bit-identical,
    `potluck.verify.fingerprint`); `()`, one call over the whole history, otherwise."""
    return evidence.steps if evidence.accused.quant != "none" else ()


#: `recompute(history, start, end, quant, steps)`: blocks [start, end) over the history
#: with weights quantised as `quant`, replaying `steps` (one call if empty), as float32.
Recompute = Callable[[torch.Tensor, int, int, str, tuple[int, ...]], torch.Tensor]


def reference_row(evidence: Evidence, recomputed: torch.Tensor) -> torch.Tensor:
    """The disputed row, `(1, 1, hidden)`, of a recomputation over the whole history."""
    total = sum(evidence.steps)
    b, position = row_position(evidence.row, total, evidence.steps[-1])
    return recomputed[b : b + 1, position : position + 1]


def rule(
    evidence: Evidence,
    outputs: torch.Tensor,
    checked: torch.Tensor,
    reference: torch.Tensor,
    *,
    referee_dtype: str,
) -> Ruling:
    """Compare both answers with the referee's `reference` row (`reference_row`)."""
    accused, checker = evidence.accused, evidence.checker
    return Ruling(
        case=evidence.case,
        accused=compare(
            outputs,
            reference,
            accused.dtype,
            referee_dtype,
            quant=accused.quant,
            codec=accused.codec,
        ),
        checker=compare(
            checked,
            reference,
            checker.dtype,
            referee_dtype,
            quant=checker.quant,
            codec=checker.codec,
        ),
    )


# --- evidence in the ledger ---------------------------------------------------


def pack_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    """A tensor as JSON without floats: dtype, shape and zlib-compressed base64 bytes."""
    meta, data = tensor_to_bytes(tensor)
    return {
        "dtype": meta.dtype,
        "shape": list(meta.shape),
        "data": base64.b64encode(zlib.compress(data, 6)).decode("ascii"),
    }


def unpack_tensor(obj: object, *, max_bytes: int = 1 << 28) -> torch.Tensor:
    """The tensor `pack_tensor` packed; `InvalidEvidence` for anything malformed."""
    if not isinstance(obj, Mapping) or set(obj) != {"dtype", "shape", "data"}:
        raise InvalidEvidence("a packed tensor has exactly dtype, shape and data")
    try:
        meta = TensorMeta(obj["dtype"], tuple(obj["shape"]))
        if meta.nbytes > max_bytes:
            raise InvalidEvidence("packed tensor is too large")
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(obj["data"], validate=True), meta.nbytes + 1)
        return tensor_from_bytes(meta, raw)
    except InvalidEvidence:
        raise
    except (PotluckError, ValueError, TypeError, zlib.error) as exc:
        raise InvalidEvidence(f"bad packed tensor: {exc}") from None


def history_chunks(history: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
    """The history as a header (dtype, shape, sha256) and base64 pieces of its
    compressed bytes, each small enough for one ledger entry; `InvalidEvidence`
    past `MAX_CHUNKS` pieces."""
    meta, data = tensor_to_bytes(history)
    packed = zlib.compress(data, 6)
    if len(packed) > MAX_CHUNKS * CHUNK_BYTES:
        raise InvalidEvidence(f"the history is too long to record ({len(packed)} bytes packed)")
    pieces = [
        base64.b64encode(packed[i : i + CHUNK_BYTES]).decode("ascii")
        for i in range(0, len(packed), CHUNK_BYTES)
    ]
    header = {
        "dtype": meta.dtype,
        "shape": list(meta.shape),
        "sha256": hashlib.sha256(packed).hexdigest(),
    }
    return header, pieces


def history_from_chunks(header: object, pieces: Sequence[str]) -> torch.Tensor:
    if not isinstance(header, Mapping):
        raise InvalidEvidence("history header must be an object")
    try:
        packed = b"".join(base64.b64decode(p, validate=True) for p in pieces)
    except ValueError as exc:
        raise InvalidEvidence(f"bad history chunk: {exc}") from None
    if hashlib.sha256(packed).hexdigest() != header.get("sha256"):
        raise InvalidEvidence("the history chunks do not add up to the recorded digest")
    try:
        meta = TensorMeta(header["dtype"], tuple(header["shape"]))
        raw = zlib.decompressobj().decompress(packed, meta.nbytes + 1)
        return tensor_from_bytes(meta, raw)
    except (KeyError, PotluckError, ValueError, TypeError, zlib.error) as exc:
        raise InvalidEvidence(f"bad history: {exc}") from None


def slash_evidence(
    evidence: Evidence,
    outputs: torch.Tensor,
    checked: torch.Tensor,
    *,
    accuser: str,
    history: Mapping[str, Any],
    chunks: Sequence[str],
) -> dict[str, Any]:
    """The `evidence` object of a slash: the case, the record, both answers, the
    accuser and where the history is (`chunks`: hashes of its audit entries)."""
    return {
        "case": evidence.case,
        "record": evidence.to_json(),
        "outputs": pack_tensor(outputs),
        "checked": pack_tensor(checked),
        "accuser": accuser,
        "history": dict(history),
        "chunks": list(chunks),
    }


def reverify(
    body: Mapping[str, Any],
    chunk_data: Callable[[str], str],
    recompute: Recompute,
    *,
    referee_dtype: str = "float32",
) -> tuple[Ruling, list[tuple[str, str]]]:
    """Re-run the referee on a slash's evidence, from the ledger alone.

    `chunk_data(hash)` returns the `data` of the evidence audit entry with that
    hash; `recompute` (a `Recompute`) runs the disputed blocks over the history
    as `replay_steps` says, in the accused's quantisation. Returns the ruling and
    who it finds guilty, which must include the slashed account for the slash to
    stand."""
    evidence_obj = body.get("evidence")
    if not isinstance(evidence_obj, Mapping):
        raise InvalidEvidence("the slash carries no evidence")
    evidence = Evidence.from_json(evidence_obj.get("record"))
    if evidence_obj.get("case") != evidence.case:
        raise InvalidEvidence("the slash names another case than its evidence")
    chunks = evidence_obj.get("chunks")
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise InvalidEvidence("the slash's history chunks must be a list of entry hashes")
    history = history_from_chunks(evidence_obj.get("history"), [chunk_data(c) for c in chunks])
    outputs = unpack_tensor(evidence_obj.get("outputs"))
    checked = unpack_tensor(evidence_obj.get("checked"))
    check_evidence(evidence, history, outputs, checked)
    accused = evidence.accused
    recomputed = recompute(
        history, accused.start, accused.end, accused.quant, replay_steps(evidence)
    )
    reference = reference_row(evidence, recomputed)
    ruling = rule(evidence, outputs, checked, reference, referee_dtype=referee_dtype)
    accuser = evidence_obj.get("accuser")
    return ruling, ruling.guilty(evidence, accuser if isinstance(accuser, str) else "")
