"""Length-prefixed frames: how messages are cut out of a byte stream.

Every message on a Potluck stream travels in exactly one frame::

    offset  size  field
    0       3     magic     b"PLK"
    3       1     version   1
    4       4     length    payload length in bytes, uint32 big-endian
    8       n     payload   `length` bytes (see `potluck.wire.messages`)

The header has a fixed size so that a reader can fetch it, learn the payload
length and refuse an oversized frame (`FrameTooLarge`) before it reads or
buffers a single byte of the body. Any other bad header is a `FrameError`.
A stream cannot be resynchronised after a bad header: the reader must drop it.

This module does no I/O. `FrameDecoder` is fed whatever bytes arrive and hands
back whole payloads, in the manner of h11's `Connection`.
"""

from __future__ import annotations

import struct

from potluck.errors import FrameError, FrameTooLarge

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "FrameDecoder",
    "encode_frame",
    "parse_header",
]

MAGIC = b"PLK"
VERSION = 1
HEADER_SIZE = 8
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

_HEADER = struct.Struct(">3sBI")
_MAX_LENGTH = 2**32 - 1  # what the uint32 length field can express


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """The frame carrying `payload`; `FrameTooLarge` if it is over `max_size` bytes."""
    if len(payload) > min(max_size, _MAX_LENGTH):
        raise FrameTooLarge(f"payload of {len(payload)} bytes is over the {max_size}-byte limit")
    return _HEADER.pack(MAGIC, VERSION, len(payload)) + payload


def parse_header(header: bytes, max_size: int = DEFAULT_MAX_FRAME) -> int:
    """The payload length a frame header announces.

    Raises `FrameError` for a header of the wrong size, magic or version and
    `FrameTooLarge` for a length over `max_size`, so the caller can refuse the
    frame before reading its body.
    """
    if len(header) != HEADER_SIZE:
        raise FrameError(f"frame header must be {HEADER_SIZE} bytes, got {len(header)}")
    magic, version, length = _HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}, expected {VERSION}")
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes is over the {max_size}-byte limit")
    return int(length)


def _check_partial_header(prefix: bytes | bytearray) -> None:
    """Reject the start of a header as soon as its magic or version is wrong."""
    expected = MAGIC + bytes([VERSION])
    start = bytes(prefix[: len(expected)])
    if start != expected[: len(start)]:
        raise FrameError(f"bad frame header start {start!r}, expected {expected!r}")


class FrameDecoder:
    """Incremental frame decoder: `feed` it bytes, then take payloads with `next_frame`.

    A header is checked as soon as it reaches the front of the buffer, so an
    oversized or malformed frame is refused before its body is buffered. After
    any `FrameError` the decoder is dead: every later call raises it again.

    At the end of the stream, a non-zero `buffered` means a truncated frame.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self._buffer = bytearray()
        self._length: int | None = None  # payload length of the frame at the front
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the stream; raises `FrameError` on a bad header."""
        self._raise_if_failed()
        self._buffer += data
        self._check_front_header()

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None until more bytes are fed."""
        self._raise_if_failed()
        self._check_front_header()
        if self._length is None:
            return None
        end = HEADER_SIZE + self._length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        self._length = None
        return payload

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _check_front_header(self) -> None:
        if self._length is not None:
            return
        try:
            if len(self._buffer) < HEADER_SIZE:
                _check_partial_header(self._buffer)
            else:
                self._length = parse_header(bytes(self._buffer[:HEADER_SIZE]), self.max_size)
        except FrameError as exc:
            self._error = exc
            raise
