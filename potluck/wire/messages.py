"""Protocol messages and their payload encoding.

A message is the payload of one frame (see `potluck.wire.framing`)::

    offset  size  field
    0       4     header length h, uint32 big-endian
    4       h     header, canonical JSON (below)
    4 + h   ...   the raw bytes of each tensor in header order, back to back
                  (see `potluck.wire.tensors`), and nothing after them

The header is JSON encoded as UTF-8 with sorted keys, no whitespace and only
ASCII characters (``ensure_ascii``); NaN and infinities are not allowed::

    {"fields": {<name>: <value>, ...},
     "tensors": [{"dtype": "float32", "name": "hidden", "shape": [1, 4, 576]}, ...],
     "type": "InferenceStep"}

`type` is the message's class name, `fields` holds exactly its non-tensor
fields (tuples as JSON lists, `SwarmView.servers` as a list of `ServerInfo`
field objects) and `tensors` lists its tensor fields in declaration order.

Messages, by exchange:

    OpenSession(session_id, start, end, max_length)     -> SessionOpened(same fields)
    InferenceStep(session_id, step, position, hidden)   -> StepResult(session_id, step, hidden,
                                                                      swarm, dtype, signature)
    CloseSession(session_id, tokens, receipt)           -> SessionClosed(session_id, recorded)
    Forward(start, end, hidden)                         -> ForwardResult(hidden, swarm, dtype,
                                                                         signature)
    Dispute(evidence, history, outputs, checked)        -> Verdict(case, guilty, entries, message)
    Echo(payload)                                       -> Echo(payload)
    InfoRequest()                                       -> ServerInfo(...)
    SwarmRequest()                                      -> SwarmView(servers)
    LedgerPush(entries)                                 -> LedgerAck(accepted, rejected)
    LedgerSync(summary, limit, addrs)                   -> LedgerSyncReply(entries, summary,
                                                                           more, peers)
    AccountRequest(account, history, before_seq)        -> AccountReply(account, balance, seq,
                                                             head, frozen, receivable, history)
    any request                                         -> ErrorReply(code, message)

A result's `signature` signs a `potluck.verify.Commitment` that the receiver
rebuilds from what it sent and received (see `potluck.verify.commitment`).

Every message is a frozen dataclass that validates itself on construction and
raises `MessageError` (or `TensorError` for a bad tensor), so a decoded message
is always a valid one. `decode_message` raises nothing but `WireError`s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

import torch

from potluck.errors import MessageError, PotluckError, RemoteError, TensorError, remote_error
from potluck.wire.compress import WireCodec
from potluck.wire.tensors import TensorMeta, tensor_from_bytes, tensor_to_bytes

__all__ = [
    "MAX_ADDRS",
    "MAX_ATTESTATIONS",
    "MAX_BLOCKS",
    "MAX_ECHO_ELEMENTS",
    "MAX_ERROR_MESSAGE",
    "MAX_LEDGER_ENTRIES",
    "MAX_REPLAY_CALLS",
    "MAX_SERVERS",
    "MAX_SESSION_LENGTH",
    "MAX_TICKET_TEXT",
    "MESSAGE_TYPES",
    "PRIORITIES",
    "QUANT_MODES",
    "AccountReply",
    "AccountRequest",
    "CloseSession",
    "Dispute",
    "Echo",
    "ErrorReply",
    "Forward",
    "ForwardResult",
    "InferenceStep",
    "InfoRequest",
    "LedgerAck",
    "LedgerPush",
    "LedgerSync",
    "LedgerSyncReply",
    "Message",
    "OpenSession",
    "ServerInfo",
    "SessionClosed",
    "SessionOpened",
    "StepResult",
    "SwarmRequest",
    "SwarmView",
    "Verdict",
    "decode_message",
    "encode_message",
    "expect",
]

MAX_BLOCKS = 100_000
"""Spans are `start <= block < end` with `0 <= start < end <= MAX_BLOCKS`."""
MAX_ECHO_ELEMENTS = 1 << 20
"""An `Echo` payload holds at most this many float32 values (4 MiB)."""
MAX_SESSION_LENGTH = 1_000_000
"""Most tokens an inference session may hold."""
MAX_ADDRS = 16
MAX_SERVERS = 4096
MAX_ERROR_MESSAGE = 4096

_MAX_INT64 = 2**63 - 1
_MAX_ADDR = 256
_MAX_MODEL = 256
_MAX_PEER_ID = 128
_MAX_VERSION = 64
_SESSION_ID = re.compile(r"[0-9a-f]{1,64}")
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
_HIDDEN_DTYPES = ("float32", "float16", "bfloat16", "int8")
QUANT_MODES = ("none", "int8", "nf4", "dynamic-int8")
"""How a server may quantise the weights of its blocks (`potluck.model.quant`)."""
MAX_REPLAY_CALLS = MAX_SESSION_LENGTH
"""Most calls a replaying `Forward` may split its history into (one per token at most)."""
_HEADER_LENGTH = struct.Struct(">I")
_HEADER_KEYS = frozenset({"type", "fields", "tensors"})
_TENSOR_KEYS = frozenset({"name", "dtype", "shape"})


# --- validation helpers -----------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_int(name: str, value: object, low: int, high: int = _MAX_INT64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{name} must be an integer in [{low}, {high}], got {_show(value)}")
    return value


_SIGNATURE = re.compile(r"(?:[0-9a-f]{128})?")
_SWARM = re.compile(r"(?:[0-9a-f]{64})?")


def _check_commitment_fields(swarm: object, signature: object) -> None:
    """A result's commitment: the swarm id and the server's signature (both or neither)."""
    if not isinstance(swarm, str) or _SWARM.fullmatch(swarm) is None:
        raise MessageError("swarm must be empty or 64 lowercase hex digits")
    if not isinstance(signature, str) or _SIGNATURE.fullmatch(signature) is None:
        raise MessageError("signature must be empty or 128 lowercase hex digits")


def _check_str(name: str, value: object, max_len: int, min_len: int = 1) -> None:
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        raise MessageError(f"{name} must be a string of {min_len}..{max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError(f"{name} must be valid Unicode (no lone surrogates)") from None


def _check_session_id(value: object) -> None:
    if not isinstance(value, str) or _SESSION_ID.fullmatch(value) is None:
        raise MessageError(f"session_id must be 1..64 lowercase hex digits, got {_show(value)}")


def _check_span(start: object, end: object) -> None:
    if not _check_int("start", start, 0) < _check_int("end", end, 1, MAX_BLOCKS):
        raise MessageError(f"span must have start < end, got [{start}, {end})")


def _check_hidden(value: object, *, floating: bool = False) -> None:
    """Hidden states: a (batch, seq, hidden) tensor, every size >= 1, of a float
    dtype or int8 (blockwise 8-bit codes, `potluck.wire.compress`) unless `floating`."""
    if not isinstance(value, torch.Tensor):
        raise TensorError(f"hidden must be a torch.Tensor, got {type(value).__name__}")
    meta = TensorMeta.of(value)
    allowed = _HIDDEN_DTYPES[:-1] if floating else _HIDDEN_DTYPES
    if meta.dtype not in allowed:
        raise TensorError(f"hidden must be one of {allowed}, got {meta.dtype}")
    if len(meta.shape) != 3 or min(meta.shape) < 1:
        raise TensorError(f"hidden must have shape (batch, seq, hidden) >= 1, got {meta.shape}")


def _scales_field(scales: object, hidden: torch.Tensor) -> torch.Tensor:
    """The scales that travel with `hidden`: float32 (batch, seq, n); None is n = 0.

    Whether n and the values fit the session's codec is checked where the codec is
    known (`WireCodec.decode`)."""
    if scales is None:
        return torch.empty((*hidden.shape[:2], 0), dtype=torch.float32)
    if not isinstance(scales, torch.Tensor):
        raise TensorError(f"scales must be a torch.Tensor, got {type(scales).__name__}")
    meta = TensorMeta.of(scales)
    if meta.dtype != "float32" or len(meta.shape) != 3 or meta.shape[:2] != hidden.shape[:2]:
        raise TensorError(
            f"scales must be float32 of shape {[*hidden.shape[:2], 'n']}, "
            f"got {meta.dtype} of shape {list(meta.shape)}"
        )
    return scales


def _check_quant(value: object) -> None:
    if value not in QUANT_MODES:
        raise MessageError(f"quant must be one of {QUANT_MODES}, got {_show(value)}")


def _check_codec(value: object) -> None:
    WireCodec.from_label(value)  # MessageError unless a canonical codec label


_COMPUTE_DTYPES = ("float32", "bfloat16")


def _check_dtype(value: object) -> None:
    """A compute dtype: one with a calibrated spot-check tolerance."""
    if value not in _COMPUTE_DTYPES:
        raise MessageError(f"dtype must be one of {_COMPUTE_DTYPES}, got {_show(value)}")


def _float_field(name: str, value: object, *, minimum: float | None = None) -> float:
    """`value` as a finite float (ints accepted, bools not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"{name} must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise MessageError(f"{name} is out of range") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise MessageError(f"{name} must be a finite number{bound}, got {_show(value)}")
    return number


# --- messages ----------------------------------------------------------------


class Message:
    """Base of every protocol message; see `MESSAGE_TYPES` for the full set."""

    __slots__ = ()

    _TENSORS: ClassVar[tuple[str, ...]] = ()
    """Names of the fields that hold tensors; they travel outside the JSON header."""

    def _json_fields(self) -> dict[str, object]:
        """The header's `fields` object (everything but the tensors)."""
        out: dict[str, object] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            if field.name not in self._TENSORS:
                value = getattr(self, field.name)
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def _from_json_fields(
        cls, fields: Mapping[str, object], tensors: Mapping[str, torch.Tensor]
    ) -> Self:
        """The message for a decoded header `fields` object and its tensors."""
        args = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in fields.items()
        }
        return cls(**args, **tensors)

    @classmethod
    def _json_field_names(cls) -> frozenset[str]:
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return frozenset(names.difference(cls._TENSORS))


_M = TypeVar("_M", bound=Message)


MAX_TICKET_TEXT = 8192
"""Most characters of a ticket entry's JSON in an `OpenSession` (tickets are small)."""
MAX_ATTESTATIONS = 4
"""Most validator attestations one `ServerInfo` carries."""
PRIORITIES = ("paid", "private", "normal")
"""Scheduling classes a server grants a session, best first (`potluck.scheduler`)."""


def _signed_entry(name: str, value: object) -> tuple[str, str]:
    """A ledger entry in its wire form `(canonical JSON, signature hex)`; the ledger
    checks the rest."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise MessageError(f"{name} must be a [json, signature] pair")
    raw, sig = value
    if not isinstance(raw, str) or not 2 <= len(raw) <= MAX_TICKET_TEXT:
        raise MessageError(f"{name}'s JSON must be a string of at most {MAX_TICKET_TEXT} chars")
    if not isinstance(sig, str) or _SIGNATURE.fullmatch(sig) is None or not sig:
        raise MessageError(f"{name}'s signature must be 128 lowercase hex digits")
    return raw, sig


@dataclass(frozen=True)
class OpenSession(Message):
    """Ask a server to open an inference session over blocks [start, end).

    `ticket`, when not empty, is the client's signed `ticket` ledger entry
    (wire form) that buys this session a better class (`potluck.ledger.tickets`).
    `codec` (a `WireCodec.label`) is how the session's hidden states travel, both
    ways."""

    session_id: str
    start: int
    end: int
    max_length: int
    ticket: tuple[str, ...] = ()
    codec: str = "float32"

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        _check_span(self.start, self.end)
        _check_int("max_length", self.max_length, 1, MAX_SESSION_LENGTH)
        _check_codec(self.codec)
        if self.ticket != ():
            object.__setattr__(self, "ticket", _signed_entry("ticket", self.ticket))


@dataclass(frozen=True)
class SessionOpened(Message):
    """The server opened the session; echoes what it agreed to (blocks, length,
    codec), the class it schedules the session in, and why it did not honour a
    ticket (`note`)."""

    session_id: str
    start: int
    end: int
    max_length: int
    priority: str = "normal"
    note: str = ""
    codec: str = "float32"

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        _check_span(self.start, self.end)
        _check_int("max_length", self.max_length, 1, MAX_SESSION_LENGTH)
        _check_codec(self.codec)
        if self.priority not in PRIORITIES:
            raise MessageError(f"priority must be one of {PRIORITIES}, got {_show(self.priority)}")
        _check_str("note", self.note, MAX_ERROR_MESSAGE, min_len=0)


@dataclass(frozen=True, eq=False)
class InferenceStep(Message):
    """Run new tokens' hidden states through the session's blocks.

    `hidden` and `scales` are the new tokens' states encoded with the session's
    codec (`potluck.wire.compress`; `scales` is empty but for ``int8-block``)."""

    _TENSORS: ClassVar[tuple[str, ...]] = ("hidden", "scales")

    session_id: str
    step: int
    position: int  # index in the session of the first token in `hidden`
    hidden: torch.Tensor  # (batch, seq, hidden)
    scales: torch.Tensor | None = None  # (batch, seq, blocks); None: no scales

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        _check_int("step", self.step, 0)
        _check_int("position", self.position, 0)
        _check_hidden(self.hidden)
        object.__setattr__(self, "scales", _scales_field(self.scales, self.hidden))


@dataclass(frozen=True, eq=False)
class StepResult(Message):
    """The hidden states after the session's blocks, for step `step`, encoded with
    the session's codec (`hidden`, `scales`), and what the commitment binds."""

    _TENSORS: ClassVar[tuple[str, ...]] = ("hidden", "scales")

    session_id: str
    step: int
    hidden: torch.Tensor  # (batch, seq, hidden)
    swarm: str = ""  # the swarm id the commitment is for
    dtype: str = "float32"  # the dtype the server computed in
    signature: str = ""  # the server's signature over the step's Commitment
    quant: str = "none"  # how the server's weights are quantised
    codec: str = "float32"  # the session's codec (the commitment binds decoded outputs)
    scales: torch.Tensor | None = None  # (batch, seq, blocks); None: no scales

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        _check_int("step", self.step, 0)
        _check_hidden(self.hidden)
        object.__setattr__(self, "scales", _scales_field(self.scales, self.hidden))
        _check_commitment_fields(self.swarm, self.signature)
        _check_dtype(self.dtype)
        _check_quant(self.quant)
        _check_codec(self.codec)


@dataclass(frozen=True)
class CloseSession(Message):
    """Ask the server to drop the session and free its cache.

    With `receipt`, the client's signature over a usage receipt for `tokens`
    tokens through the session's blocks (`potluck.ledger.economy`), which
    the server records in the ledger."""

    session_id: str
    tokens: int = 0
    receipt: str = ""

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        _check_int("tokens", self.tokens, 0)
        if not isinstance(self.receipt, str) or _SIGNATURE.fullmatch(self.receipt) is None:
            raise MessageError("receipt must be empty or 128 lowercase hex digits")


@dataclass(frozen=True)
class SessionClosed(Message):
    """The server dropped the session; `recorded` if it took the usage receipt."""

    session_id: str
    recorded: bool = False

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        if not isinstance(self.recorded, bool):
            raise MessageError("recorded must be a boolean")


@dataclass(frozen=True, eq=False)
class Forward(Message):
    """Run float hidden states through blocks [start, end) with no session kept.

    With `steps` (token counts adding up to the sequence), the server *replays*
    them: one call per count into a fresh KV cache, as a session made of those
    steps would have, instead of one call over the whole sequence. `quant` asks
    for the blocks in that quantisation ("": whatever the server runs); a server
    without it answers `QuantMismatch`."""

    _TENSORS: ClassVar[tuple[str, ...]] = ("hidden",)

    start: int
    end: int
    hidden: torch.Tensor  # (batch, seq, hidden)
    steps: tuple[int, ...] = ()
    quant: str = ""

    def __post_init__(self) -> None:
        _check_span(self.start, self.end)
        _check_hidden(self.hidden, floating=True)
        if not isinstance(self.steps, tuple) or len(self.steps) > MAX_REPLAY_CALLS:
            raise MessageError(f"steps must be a tuple of at most {MAX_REPLAY_CALLS} counts")
        for n in self.steps:
            _check_int("steps[]", n, 1)
        if self.steps and sum(self.steps) != self.hidden.shape[1]:
            raise MessageError(
                f"steps add up to {sum(self.steps)} tokens, hidden holds {self.hidden.shape[1]}"
            )
        if self.quant != "":
            _check_quant(self.quant)


@dataclass(frozen=True, eq=False)
class ForwardResult(Message):
    """The hidden states after a `Forward`, with the server's commitment (computed
    in `dtype` and `quant`, sent uncompressed)."""

    _TENSORS: ClassVar[tuple[str, ...]] = ("hidden",)

    hidden: torch.Tensor  # (batch, seq, hidden)
    swarm: str = ""
    dtype: str = "float32"
    signature: str = ""
    quant: str = "none"

    def __post_init__(self) -> None:
        _check_hidden(self.hidden, floating=True)
        _check_commitment_fields(self.swarm, self.signature)
        _check_dtype(self.dtype)
        _check_quant(self.quant)


@dataclass(frozen=True, eq=False)
class Echo(Message):
    """Bytes to send straight back: how a node measures its network throughput."""

    _TENSORS: ClassVar[tuple[str, ...]] = ("payload",)

    payload: torch.Tensor  # (n,) float32, at most MAX_ECHO_ELEMENTS

    def __post_init__(self) -> None:
        if not isinstance(self.payload, torch.Tensor):
            raise TensorError("payload must be a tensor")
        if self.payload.dtype != torch.float32 or self.payload.ndim != 1:
            raise TensorError("payload must be a 1-D float32 tensor")
        if self.payload.numel() > MAX_ECHO_ELEMENTS:
            raise TensorError(f"payload holds at most {MAX_ECHO_ELEMENTS} elements")


@dataclass(frozen=True)
class InfoRequest(Message):
    """Ask a server for its `ServerInfo`."""


@dataclass(frozen=True)
class SwarmRequest(Message):
    """Ask a peer for the servers it knows, as a `SwarmView`."""


@dataclass(frozen=True)
class ServerInfo(Message):
    """What a server announces: who it is, which blocks it serves, how fast, until when."""

    peer_id: str
    addrs: tuple[str, ...]  # multiaddrs
    model: str
    start: int
    end: int
    throughput: float  # tokens per second, as measured by the server
    free_cache_tokens: int
    version: str  # potluck version
    expires_at: float  # unix time after which this announcement is stale
    load: int = 0  # inference sessions open on the server when it announced
    bandwidth: float = 0.0  # bytes/s the server measured to a peer (0: not measured)
    validator: bool = False  # a validator: a spot-checker and referee, not a route hop
    dtype: str = "float32"  # the dtype the server computes in
    quant: str = "none"  # how its weights are quantised (QUANT_MODES)
    #: validators' signed `attest` entries for this server (wire form), for private routes
    attestations: tuple[tuple[str, str], ...] = ()
    signature: str = ""  # hex Ed25519 signature by peer_id's key (potluck.p2p.announce)

    def __post_init__(self) -> None:
        _check_str("peer_id", self.peer_id, _MAX_PEER_ID)
        if not isinstance(self.attestations, tuple) or len(self.attestations) > MAX_ATTESTATIONS:
            raise MessageError(f"attestations must be a tuple of at most {MAX_ATTESTATIONS}")
        attestations = tuple(_signed_entry("attestation", a) for a in self.attestations)
        object.__setattr__(self, "attestations", attestations)
        if not isinstance(self.validator, bool):
            raise MessageError("validator must be a boolean")
        _check_dtype(self.dtype)
        _check_quant(self.quant)
        if not isinstance(self.addrs, tuple) or len(self.addrs) > MAX_ADDRS:
            raise MessageError(f"addrs must be a tuple of at most {MAX_ADDRS} strings")
        for addr in self.addrs:
            _check_str("addrs[]", addr, _MAX_ADDR)
        _check_str("model", self.model, _MAX_MODEL)
        _check_span(self.start, self.end)
        throughput = _float_field("throughput", self.throughput, minimum=0.0)
        object.__setattr__(self, "throughput", throughput)
        _check_int("free_cache_tokens", self.free_cache_tokens, 0)
        _check_str("version", self.version, _MAX_VERSION)
        object.__setattr__(self, "expires_at", _float_field("expires_at", self.expires_at))
        _check_int("load", self.load, 0)
        bandwidth = _float_field("bandwidth", self.bandwidth, minimum=0.0)
        object.__setattr__(self, "bandwidth", bandwidth)
        if not isinstance(self.signature, str) or _SIGNATURE.fullmatch(self.signature) is None:
            raise MessageError("signature must be empty or 128 lowercase hex digits")

    def covers(self, start: int, end: int) -> bool:
        """Whether this server serves every block of the non-empty span [start, end)."""
        return self.start <= start < end <= self.end


@dataclass(frozen=True)
class SwarmView(Message):
    """The servers a peer knows about, and the peers its ledger shows slashed."""

    servers: tuple[ServerInfo, ...]
    excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.servers, tuple) or len(self.servers) > MAX_SERVERS:
            raise MessageError(f"servers must be a tuple of at most {MAX_SERVERS} ServerInfo")
        for server in self.servers:
            if not isinstance(server, ServerInfo):
                raise MessageError(f"servers must hold ServerInfo, got {type(server).__name__}")
        if not isinstance(self.excluded, tuple) or len(self.excluded) > MAX_SERVERS:
            raise MessageError(f"excluded must be a tuple of at most {MAX_SERVERS} peer ids")
        for peer in self.excluded:
            _check_str("excluded[]", peer, _MAX_PEER_ID)

    def _json_fields(self) -> dict[str, object]:
        return {
            "servers": [server._json_fields() for server in self.servers],
            "excluded": list(self.excluded),
        }

    @classmethod
    def _from_json_fields(
        cls, fields: Mapping[str, object], tensors: Mapping[str, torch.Tensor]
    ) -> Self:
        servers = fields["servers"]
        if not isinstance(servers, list) or len(servers) > MAX_SERVERS:
            raise MessageError(f"servers must be a list of at most {MAX_SERVERS} objects")
        excluded = fields.get("excluded", [])
        if not isinstance(excluded, list):
            raise MessageError("excluded must be a list of peer ids")
        return cls(tuple(_build(ServerInfo, server, {}) for server in servers), tuple(excluded))


@dataclass(frozen=True)
class ErrorReply(Message):
    """A request failed; `code` names the `PotluckError` kind (see `potluck.errors`)."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or _ERROR_CODE.fullmatch(self.code) is None:
            raise MessageError(f"code must be 1..64 of [a-z_], got {_show(self.code)}")
        _check_str("message", self.message, MAX_ERROR_MESSAGE, min_len=0)

    @classmethod
    def from_exception(cls, exc: PotluckError) -> ErrorReply:
        """The reply reporting `exc`: its `code` (else "internal") and truncated message."""
        code = getattr(exc, "code", None)
        if not isinstance(code, str) or _ERROR_CODE.fullmatch(code) is None:
            code = "internal"
        text = str(exc).encode("utf-8", "replace").decode("utf-8")
        if len(text) > MAX_ERROR_MESSAGE:
            text = text[: MAX_ERROR_MESSAGE - 3] + "..."
        return cls(code, text)

    def to_exception(self) -> RemoteError:
        """The `RemoteError` subclass this reply stands for, to raise on the client."""
        return remote_error(self.code, self.message)


# --- ledger replication -------------------------------------------------------

MAX_LEDGER_ENTRIES = 20_000
"""Most entries one ledger message carries."""
MAX_LEDGER_AUTHORS = 200_000
"""Most authors a ledger summary lists."""
MAX_LEDGER_PEERS = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_MAX_ENTRY_TEXT = 1 << 20


def _check_hex64(name: str, value: object) -> None:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise MessageError(f"{name} must be 64 lowercase hex digits, got {_show(value)}")


def _entries_field(value: object) -> tuple[tuple[str, str], ...]:
    """Entries as `(canonical JSON, signature hex)` pairs; the ledger decodes the JSON."""
    if not isinstance(value, tuple) or len(value) > MAX_LEDGER_ENTRIES:
        raise MessageError(f"entries must be a tuple of at most {MAX_LEDGER_ENTRIES} pairs")
    out = []
    for item in value:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise MessageError("each entry is a [json, signature] pair")
        raw, sig = item
        if not isinstance(raw, str) or not 2 <= len(raw) <= _MAX_ENTRY_TEXT:
            raise MessageError("an entry's JSON must be a string of at most 1 MiB")
        if not isinstance(sig, str) or _HEX_SIGNATURE.fullmatch(sig) is None:
            raise MessageError("an entry's signature must be 128 lowercase hex digits")
        out.append((raw, sig))
    return tuple(out)


def _peers_field(value: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, tuple) or len(value) > MAX_LEDGER_PEERS:
        raise MessageError(f"peers must be a tuple of at most {MAX_LEDGER_PEERS} pairs")
    out = []
    for item in value:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise MessageError("each peer is a [peer_id, [addrs]] pair")
        peer_id, addrs = item
        _check_str("peer_id", peer_id, _MAX_PEER_ID)
        if not isinstance(addrs, (tuple, list)) or len(addrs) > MAX_ADDRS:
            raise MessageError(f"a peer has at most {MAX_ADDRS} addrs")
        for addr in addrs:
            _check_str("addrs[]", addr, _MAX_ADDR)
        out.append((peer_id, tuple(addrs)))
    return tuple(out)


def _summary_field(value: object) -> tuple[tuple[str, int, int, str, str], ...]:
    """Per author: `(author, top seq, entry count, XOR of entry hashes, a hash at top)`."""
    if not isinstance(value, tuple) or len(value) > MAX_LEDGER_AUTHORS:
        raise MessageError(f"summary must be a tuple of at most {MAX_LEDGER_AUTHORS} rows")
    out = []
    for item in value:
        if not isinstance(item, (tuple, list)) or len(item) != 5:
            raise MessageError("each summary row is [author, top, count, digest, head]")
        author, top, count, digest, head = item
        _check_hex64("author", author)
        _check_int("top", top, 1)
        _check_int("count", count, 1)
        _check_hex64("digest", digest)
        _check_hex64("head", head)
        out.append((author, top, count, digest, head))
    return tuple(out)


def _cursors_field(value: object) -> tuple[tuple[str, int], ...]:
    """Per author: the last seq a sync page sent of a range it did not finish."""
    if not isinstance(value, tuple) or len(value) > MAX_LEDGER_AUTHORS:
        raise MessageError(f"cursors must be a tuple of at most {MAX_LEDGER_AUTHORS} pairs")
    out = []
    for item in value:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise MessageError("each cursor is [author, seq]")
        author, seq = item
        _check_hex64("author", author)
        _check_int("seq", seq, 0)
        out.append((author, seq))
    return tuple(out)


@dataclass(frozen=True)
class LedgerPush(Message):
    """New entries: submitted by a wallet (`relay` false) or relayed by a replica."""

    entries: tuple[tuple[str, str], ...]
    relay: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", _entries_field(self.entries))
        if not isinstance(self.relay, bool):
            raise MessageError("relay must be a boolean")


@dataclass(frozen=True)
class LedgerAck(Message):
    """What the replica did with a push: every rejection as `(hash, code, message)`.

    An entry is acknowledged (durably stored) when it is not among `rejected`."""

    accepted: int
    rejected: tuple[tuple[str, str, str], ...]

    def __post_init__(self) -> None:
        _check_int("accepted", self.accepted, 0)
        if not isinstance(self.rejected, tuple) or len(self.rejected) > MAX_LEDGER_ENTRIES:
            raise MessageError("rejected must be a tuple of (hash, code, message)")
        out = []
        for item in self.rejected:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise MessageError("each rejection is [hash, code, message]")
            entry_hash, code, message = item
            _check_str("hash", entry_hash, 64, min_len=0)
            if not isinstance(code, str) or _ERROR_CODE.fullmatch(code) is None:
                raise MessageError(f"code must be 1..64 of [a-z_], got {_show(code)}")
            _check_str("message", message, MAX_ERROR_MESSAGE, min_len=0)
            out.append((entry_hash, code, message))
        object.__setattr__(self, "rejected", tuple(out))


@dataclass(frozen=True)
class LedgerSync(Message):
    """Anti-entropy: here is what I hold per author; send me what I lack.

    `addrs` are the requester's listen addresses, so the responder can push
    to it and pass it on to other peers."""

    summary: tuple[tuple[str, int, int, str, str], ...]
    limit: int
    addrs: tuple[str, ...] = ()
    cursors: tuple[tuple[str, int], ...] = ()  # the previous reply's, to resume its ranges

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", _summary_field(self.summary))
        object.__setattr__(self, "cursors", _cursors_field(self.cursors))
        _check_int("limit", self.limit, 1, MAX_LEDGER_ENTRIES)
        if not isinstance(self.addrs, tuple) or len(self.addrs) > MAX_ADDRS:
            raise MessageError(f"addrs must be a tuple of at most {MAX_ADDRS} strings")
        for addr in self.addrs:
            _check_str("addrs[]", addr, _MAX_ADDR)


@dataclass(frozen=True)
class LedgerSyncReply(Message):
    """Entries the requester lacks (at most `limit`; `more` if there are others),
    the responder's own summary (so the requester can push back what the
    responder lacks) and some ledger peers the responder knows."""

    entries: tuple[tuple[str, str], ...]
    summary: tuple[tuple[str, int, int, str, str], ...]
    more: bool
    peers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    cursors: tuple[tuple[str, int], ...] = ()  # per unfinished range: the last seq sent

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", _entries_field(self.entries))
        object.__setattr__(self, "summary", _summary_field(self.summary))
        object.__setattr__(self, "cursors", _cursors_field(self.cursors))
        if not isinstance(self.more, bool):
            raise MessageError("more must be a boolean")
        object.__setattr__(self, "peers", _peers_field(self.peers))


@dataclass(frozen=True)
class AccountRequest(Message):
    """Ask a replica for an account's state and the transfers it can receive."""

    account: str
    history: int = 0  # also return up to this many of its latest entries
    before_seq: int = 0  # with history: only entries below this seq (0: the latest)

    def __post_init__(self) -> None:
        _check_hex64("account", self.account)
        _check_int("history", self.history, 0, MAX_LEDGER_ENTRIES)
        _check_int("before_seq", self.before_seq, 0)


@dataclass(frozen=True)
class AccountReply(Message):
    """An account as the replica sees it (see `potluck.ledger.core.AccountState`)."""

    account: str
    balance: int
    seq: int
    head: str
    frozen: bool
    receivable: tuple[tuple[str, str], ...]
    history: tuple[tuple[str, str], ...] = ()
    slashed: int = 0  # points that validators' slashes took from the balance

    def __post_init__(self) -> None:
        _check_hex64("account", self.account)
        _check_int("balance", self.balance, 0)
        _check_int("slashed", self.slashed, 0)
        _check_int("seq", self.seq, 0)
        _check_hex64("head", self.head)
        if not isinstance(self.frozen, bool):
            raise MessageError("frozen must be a boolean")
        object.__setattr__(self, "receivable", _entries_field(self.receivable))
        object.__setattr__(self, "history", _entries_field(self.history))


# --- verification --------------------------------------------------------------

MAX_EVIDENCE_TEXT = 1 << 20
"""Longest `Dispute.evidence` JSON, in characters."""
MAX_VERDICT_ENTRIES = 4096
"""Most accounts or entry hashes a `Verdict` lists."""


@dataclass(frozen=True, eq=False)
class Dispute(Message):
    """Ask a validator to referee a spot-check that failed.

    `evidence` is JSON (see `potluck.verify.referee.Evidence`): the accused's
    and the checker's commitments and the shape of the session's steps.
    `history` holds every input of the accused session up to the disputed
    step, `outputs` the disputed row of the accused's output for that step and
    `checked` the checker's row for the same position."""

    _TENSORS: ClassVar[tuple[str, ...]] = ("history", "outputs", "checked")

    evidence: str
    history: torch.Tensor  # (batch, tokens so far, hidden)
    outputs: torch.Tensor  # (1, 1, hidden)
    checked: torch.Tensor  # (1, 1, hidden)

    def __post_init__(self) -> None:
        _check_str("evidence", self.evidence, MAX_EVIDENCE_TEXT)
        for name in self._TENSORS:
            _check_hidden(getattr(self, name))


@dataclass(frozen=True)
class Verdict(Message):
    """A validator's ruling on a `Dispute`: who was wrong, and the ledger entries
    (hashes) that record it."""

    case: str
    guilty: tuple[str, ...]  # ledger accounts found wrong (the accused, a checker, the accuser)
    entries: tuple[str, ...]
    message: str

    def __post_init__(self) -> None:
        _check_hex64("case", self.case)
        for name in ("guilty", "entries"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) > MAX_VERDICT_ENTRIES:
                raise MessageError(f"{name} must be a short tuple of hex ids")
            for item in value:
                _check_hex64(f"{name}[]", item)
        _check_str("message", self.message, MAX_ERROR_MESSAGE, min_len=0)


MESSAGE_TYPES: Mapping[str, type[Message]] = {
    "OpenSession": OpenSession,
    "SessionOpened": SessionOpened,
    "InferenceStep": InferenceStep,
    "StepResult": StepResult,
    "CloseSession": CloseSession,
    "SessionClosed": SessionClosed,
    "Forward": Forward,
    "ForwardResult": ForwardResult,
    "Echo": Echo,
    "InfoRequest": InfoRequest,
    "SwarmRequest": SwarmRequest,
    "ServerInfo": ServerInfo,
    "SwarmView": SwarmView,
    "ErrorReply": ErrorReply,
    "LedgerPush": LedgerPush,
    "LedgerAck": LedgerAck,
    "LedgerSync": LedgerSync,
    "LedgerSyncReply": LedgerSyncReply,
    "AccountRequest": AccountRequest,
    "AccountReply": AccountReply,
    "Dispute": Dispute,
    "Verdict": Verdict,
}
"""Every message class by its wire name (the `type` in the header)."""

_WIRE_NAMES: dict[type[Message], str] = {cls: name for name, cls in MESSAGE_TYPES.items()}


def expect(msg: Message, *types: type[_M]) -> _M:
    """`msg` if it is one of `types`; `MessageError` otherwise."""
    if isinstance(msg, types):
        return msg
    wanted = " or ".join(cls.__name__ for cls in types)
    raise MessageError(f"expected {wanted}, got {type(msg).__name__}")


# --- encoding ----------------------------------------------------------------


def _canonical_json(value: object) -> bytes:
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def encode_message(msg: Message) -> bytes:
    """The payload bytes for `msg` (put it in a frame with `encode_frame`)."""
    name = _WIRE_NAMES.get(type(msg))
    if name is None:
        raise MessageError(f"{type(msg).__name__} is not a protocol message")
    metas: list[dict[str, object]] = []
    blobs: list[bytes] = []
    for tensor_name in msg._TENSORS:
        meta, data = tensor_to_bytes(getattr(msg, tensor_name))
        metas.append({"name": tensor_name, "dtype": meta.dtype, "shape": list(meta.shape)})
        blobs.append(data)
    header = _canonical_json({"type": name, "fields": msg._json_fields(), "tensors": metas})
    return b"".join([_HEADER_LENGTH.pack(len(header)), header, *blobs])


# --- decoding ----------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise MessageError(f"header holds {name}, which JSON does not allow")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MessageError("header has an object with a duplicate key")
    return out


def _parse_header(data: memoryview) -> object:
    try:
        text = str(data, "utf-8")
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_object)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError, JSONDecodeError
        raise MessageError(f"header is not valid UTF-8 JSON: {_show(str(exc))}") from None


def _build(cls: type[_M], fields: object, tensors: Mapping[str, torch.Tensor]) -> _M:
    """Construct `cls` from a decoded `fields` object, checking its exact key set."""
    if not isinstance(fields, dict):
        raise MessageError(f"{cls.__name__} fields must be an object")
    expected = cls._json_field_names()
    if fields.keys() != expected:
        missing = sorted(expected - fields.keys())
        extra = sorted(fields.keys() - expected)
        raise MessageError(f"{cls.__name__} fields: missing {missing}, unexpected {extra}")
    return cls._from_json_fields(fields, tensors)


def _tensor_metas(cls: type[Message], entries: object) -> list[TensorMeta]:
    """The `tensors` list of the header, which must name `cls`'s tensor fields in order."""
    if not isinstance(entries, list):
        raise MessageError("header tensors must be a list")
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries]
    if names != list(cls._TENSORS):
        raise MessageError(f"{cls.__name__} tensors must be {list(cls._TENSORS)}")
    metas = []
    for entry in entries:
        if entry.keys() != _TENSOR_KEYS:
            raise MessageError(f"tensor entries must have exactly the keys {sorted(_TENSOR_KEYS)}")
        shape = entry["shape"]
        if not isinstance(shape, list):
            raise TensorError(f"tensor shape must be a list, got {_show(shape)}")
        metas.append(TensorMeta(entry["dtype"], tuple(shape)))
    return metas


def decode_message(payload: bytes) -> Message:
    """The message in `payload`; raises only `WireError`s (`MessageError`, `TensorError`)."""
    view = memoryview(payload)
    if len(view) < _HEADER_LENGTH.size:
        raise MessageError(f"payload of {len(view)} bytes is too short for a header length")
    (header_length,) = _HEADER_LENGTH.unpack_from(view)
    body_start = _HEADER_LENGTH.size + header_length
    if body_start > len(view):
        raise MessageError(f"header length {header_length} runs past the payload")
    header = _parse_header(view[_HEADER_LENGTH.size : body_start])
    if not isinstance(header, dict) or header.keys() != _HEADER_KEYS:
        raise MessageError(f"header must be an object with exactly {sorted(_HEADER_KEYS)}")
    name = header["type"]
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {_show(name)}")

    metas = _tensor_metas(cls, header["tensors"])
    tensors: dict[str, torch.Tensor] = {}
    offset = body_start
    for tensor_name, meta in zip(cls._TENSORS, metas, strict=True):
        if meta.nbytes > len(view) - offset:
            raise TensorError(
                f"tensor {tensor_name} needs {meta.nbytes} bytes, "
                f"only {len(view) - offset} left in the payload"
            )
        tensors[tensor_name] = tensor_from_bytes(meta, view[offset : offset + meta.nbytes])
        offset += meta.nbytes
    if offset != len(view):
        raise MessageError(f"{len(view) - offset} trailing bytes after the message")
    return _build(cls, header["fields"], tensors)
