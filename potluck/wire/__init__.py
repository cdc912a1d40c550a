"""The Potluck wire protocol: frames, messages and tensors as bytes.

Pure code with no I/O. A stream carries frames (`framing`), each frame's
payload is one message (`messages`), and a message's tensors travel as raw
little-endian bytes after its JSON header (`tensors`). The module docstrings
of those three modules are the byte-level specification.

Decoding untrusted bytes either yields a valid message or raises a
`potluck.errors.WireError` (`FrameError`, `FrameTooLarge`, `MessageError`,
`TensorError`).
"""

from __future__ import annotations

from potluck.wire.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    FrameDecoder,
    encode_frame,
    parse_header,
)
from potluck.wire.messages import (
    MAX_ADDRS,
    MAX_BLOCKS,
    MAX_ECHO_ELEMENTS,
    MAX_ERROR_MESSAGE,
    MAX_LEDGER_ENTRIES,
    MAX_SERVERS,
    MAX_SESSION_LENGTH,
    MESSAGE_TYPES,
    AccountReply,
    AccountRequest,
    CloseSession,
    Echo,
    ErrorReply,
    Forward,
    ForwardResult,
    InferenceStep,
    InfoRequest,
    LedgerAck,
    LedgerPush,
    LedgerSync,
    LedgerSyncReply,
    Message,
    OpenSession,
    ServerInfo,
    SessionClosed,
    SessionOpened,
    StepResult,
    SwarmRequest,
    SwarmView,
    decode_message,
    encode_message,
    expect,
)
from potluck.wire.tensors import (
    DTYPES,
    MAX_TENSOR_DIMS,
    TensorMeta,
    tensor_from_bytes,
    tensor_to_bytes,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DTYPES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_ADDRS",
    "MAX_BLOCKS",
    "MAX_ECHO_ELEMENTS",
    "MAX_ERROR_MESSAGE",
    "MAX_LEDGER_ENTRIES",
    "MAX_SERVERS",
    "MAX_SESSION_LENGTH",
    "MAX_TENSOR_DIMS",
    "MESSAGE_TYPES",
    "VERSION",
    "AccountReply",
    "AccountRequest",
    "CloseSession",
    "Echo",
    "ErrorReply",
    "Forward",
    "ForwardResult",
    "FrameDecoder",
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
    "TensorMeta",
    "decode_message",
    "encode_frame",
    "encode_message",
    "expect",
    "parse_header",
    "tensor_from_bytes",
    "tensor_to_bytes",
]
