"""Signed commitments: which output a server returned for which input. Pure.

Every `StepResult` and `ForwardResult` carries the server's Ed25519 signature
over a `Commitment`::

    DOMAIN || canonical JSON {"codec", "dtype", "end", "inputs", "outputs", "quant",
                              "server", "session", "start", "step", "swarm"}

- `inputs` is the session's **input chain** after this step:
  `sha256(previous chain || sha256(tensor bytes of this step's input))`,
  starting from 64 zeros. It binds the whole history the server's cache
  holds, not only the new tokens, so a server cannot later claim it was fed
  something else. A stateless `Forward` is a chain of one step.
- `outputs` is the **root of the output's row digests**: the output
  `(batch, seq, hidden)` is cut into `batch x seq` rows of `hidden` values,
  each row is hashed (`row_digests`), and the root is the sha256 of the
  concatenated row digests. One row (one token's hidden state) can then be
  shown to belong to a commitment with the list of row digests alone.

- `dtype` and `quant` say how the server computed (its compute dtype and the
  quantisation of its weights, `QUANT_MODES`): they set the tolerance of any
  comparison with the output. `codec` is the session's wire codec
  (`potluck.wire.WireCodec.label`): hidden states travel encoded, and both the
  input chain and the output rows are over the **decoded** float32 tensors,
  which both sides compute bit-identically from what travelled.

Tensors are hashed as their little-endian bytes together with dtype and
shape, so two tensors with equal digests are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from potluck.errors import BadCommitment, PotluckError
from potluck.p2p.identity import Identity
from potluck.wire import QUANT_MODES, StepResult, WireCodec

__all__ = [
    "COMPUTE_DTYPES",
    "DOMAIN",
    "ZERO_CHAIN",
    "Commitment",
    "chain_inputs",
    "decoded_output",
    "output_root",
    "replay_chain",
    "row_digests",
    "step_commitment",
    "tensor_digest",
]

DOMAIN = b"potluck/commitment/v2\x00"
ZERO_CHAIN = "0" * 64
COMPUTE_DTYPES = ("float32", "bfloat16")
"""The dtypes a server may compute in: those with a calibrated comparison threshold."""
_HEX = frozenset("0123456789abcdef")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (contiguous, as stored)."""
    flat = tensor.detach().contiguous().view(torch.uint8).reshape(-1)
    head = f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}".encode()
    h = hashlib.sha256(head)
    h.update(flat.numpy().tobytes())
    return h.hexdigest()


def chain_inputs(previous: str, hidden: torch.Tensor) -> str:
    """The input chain after a step whose input is `hidden`."""
    step = bytes.fromhex(tensor_digest(hidden))
    return hashlib.sha256(bytes.fromhex(previous) + step).hexdigest()


def replay_chain(hidden: torch.Tensor, steps: tuple[int, ...] = ()) -> str:
    """The input chain of `hidden` (batch, tokens, h) sent as steps of `steps` tokens
    each (one step of all of it when `steps` is empty): what a session of those
    steps, or a `Forward` replaying them, signs."""
    chain, at = ZERO_CHAIN, 0
    for n in steps or (hidden.shape[1],):
        chain = chain_inputs(chain, hidden[:, at : at + n])
        at += n
    return chain


def row_digests(hidden: torch.Tensor) -> list[str]:
    """sha256 of each (batch, position) row of a (batch, seq, hidden) tensor."""
    rows = hidden.detach().contiguous().reshape(-1, hidden.shape[-1])  # (batch*seq, hidden)
    return [tensor_digest(row) for row in rows]


def output_root(rows: list[str]) -> str:
    """The digest that a commitment signs for an output with these row digests."""
    return hashlib.sha256(b"".join(bytes.fromhex(r) for r in rows)).hexdigest()


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


@dataclass(frozen=True)
class Commitment:
    """What a server signs for one step: `(swarm, session, step, span, inputs, outputs)`."""

    swarm: str
    session: str  # the inference session id; "" for a stateless Forward
    step: int
    start: int
    end: int
    inputs: str  # input chain after this step
    outputs: str  # output_root of the output's rows
    dtype: str  # the dtype the server computed in (sets the comparison's tolerance)
    server: str  # the signer's Ed25519 public key, hex (its ledger account)
    signature: str = ""
    quant: str = "none"  # how the server's weights were quantised
    codec: str = "float32"  # how the hidden states travelled (a WireCodec label)

    def __post_init__(self) -> None:
        for name in ("swarm", "inputs", "outputs", "server"):
            if not _is_hex(getattr(self, name), 64):
                raise BadCommitment(f"commitment {name} must be 64 hex digits")
        if not isinstance(self.session, str) or len(self.session) > 64:
            raise BadCommitment("commitment session must be a string of at most 64 characters")
        for name in ("step", "start", "end"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadCommitment(f"commitment {name} must be a whole number")
        if self.dtype not in COMPUTE_DTYPES:
            raise BadCommitment(f"commitment dtype {self.dtype!r} is not a compute dtype")
        if self.quant not in QUANT_MODES:
            raise BadCommitment(f"commitment quant {self.quant!r} is not one of {QUANT_MODES}")
        try:
            WireCodec.from_label(self.codec)
        except PotluckError:
            raise BadCommitment(f"commitment codec {self.codec!r} is not a codec label") from None
        if not self.start < self.end:
            raise BadCommitment("commitment span must have start < end")
        if not isinstance(self.signature, str) or (
            self.signature and not _is_hex(self.signature, 128)
        ):
            raise BadCommitment("commitment signature must be 128 hex digits")

    def payload(self) -> bytes:
        """The bytes the server signs."""
        body = {
            "codec": self.codec,
            "dtype": self.dtype,
            "end": self.end,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "quant": self.quant,
            "server": self.server,
            "session": self.session,
            "start": self.start,
            "step": self.step,
            "swarm": self.swarm,
        }
        return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, identity: Identity) -> Commitment:
        """This commitment signed by `identity`, which must be `server`."""
        if identity.public_bytes.hex() != self.server:
            raise BadCommitment("a server can only sign its own commitments")
        signature = identity.sign(self.payload()).hex()
        return Commitment(**{**self.to_json(), "signature": signature})

    def verify(self) -> None:
        """Raise `BadCommitment` unless `signature` is `server`'s over `payload()`."""
        if not self.signature:
            raise BadCommitment("the commitment is not signed")
        key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.server))
        try:
            key.verify(bytes.fromhex(self.signature), self.payload())
        except _BadSignature:
            raise BadCommitment(
                f"commitment for step {self.step} has a bad signature by {self.server[:12]}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "swarm": self.swarm,
            "session": self.session,
            "step": self.step,
            "start": self.start,
            "end": self.end,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "dtype": self.dtype,
            "server": self.server,
            "signature": self.signature,
            "quant": self.quant,
            "codec": self.codec,
        }

    @classmethod
    def from_json(cls, data: object) -> Commitment:
        """A commitment from `to_json()` output; `BadCommitment` for anything else."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise BadCommitment("a commitment is an object with exactly its twelve fields")
        try:
            return cls(**data)
        except TypeError as exc:
            raise BadCommitment(f"malformed commitment: {exc}") from None


def decoded_output(reply: StepResult) -> torch.Tensor:
    """A step's output hidden states as float32, decoded with the reply's codec
    (`TensorError` if they are not a valid encoding)."""
    assert reply.scales is not None  # set by StepResult itself
    return WireCodec.from_label(reply.codec).decode(reply.hidden, reply.scales)


def step_commitment(
    reply: StepResult,
    *,
    server: str,
    start: int,
    end: int,
    inputs: str,
    outputs: torch.Tensor | None = None,
) -> Commitment:
    """The commitment a step's reply carries, rebuilt from what the receiver knows
    (`server` is the sender's account, `inputs` the input chain after the step,
    `outputs` the decoded output if already at hand); call `verify()` on it."""
    decoded = decoded_output(reply) if outputs is None else outputs
    return Commitment(
        swarm=reply.swarm or ZERO_CHAIN,
        session=reply.session_id,
        step=reply.step,
        start=start,
        end=end,
        inputs=inputs,
        outputs=output_root(row_digests(decoded)),
        dtype=reply.dtype,
        server=server,
        signature=reply.signature,
        quant=reply.quant,
        codec=reply.codec,
    )
