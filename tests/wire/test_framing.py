"""Frames: the header layout, size limits and incremental decoding."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.errors import FrameError, FrameTooLarge
from potluck.wire import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    FrameDecoder,
    encode_frame,
    parse_header,
)


def header(length: int, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    return magic + bytes([version]) + struct.pack(">I", length)


def test_layout_is_magic_version_length_payload() -> None:
    assert encode_frame(b"hello") == b"PLK\x01\x00\x00\x00\x05hello"
    assert encode_frame(b"") == b"PLK\x01\x00\x00\x00\x00"
    assert HEADER_SIZE == 8
    assert DEFAULT_MAX_FRAME == 64 * 1024 * 1024


def test_encode_refuses_payload_over_max_size() -> None:
    assert encode_frame(b"x" * 10, max_size=10) == header(10) + b"x" * 10
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 11, max_size=10)


def test_parse_header_returns_payload_length() -> None:
    assert parse_header(header(1234), max_size=1234) == 1234
    assert parse_header(header(0), max_size=0) == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        header(1)[:7],
        header(1) + b"\x00",
        header(1, magic=b"PLX"),
        header(1, magic=b"plk"),
        header(1, version=0),
        header(1, version=2),
    ],
)
def test_parse_header_rejects_malformed_headers(bad: bytes) -> None:
    with pytest.raises(FrameError) as info:
        parse_header(bad, max_size=DEFAULT_MAX_FRAME)
    assert type(info.value) is FrameError


def test_parse_header_refuses_oversized_length() -> None:
    with pytest.raises(FrameTooLarge):
        parse_header(header(101), max_size=100)
    with pytest.raises(FrameTooLarge):
        parse_header(header(2**32 - 1), max_size=DEFAULT_MAX_FRAME)


def test_decoder_refuses_oversized_frame_from_header_alone() -> None:
    decoder = FrameDecoder(max_size=100)
    decoder.feed(header(101)[:5])  # not a full header yet: nothing to judge
    with pytest.raises(FrameTooLarge):
        decoder.feed(header(101)[5:])  # no body byte has been fed
    # The stream cannot be resynchronised: the decoder stays failed.
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"more")


def test_decoder_rejects_bad_magic_on_first_byte() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b"G")  # e.g. someone speaking HTTP ("GET /")


def test_decoder_rejects_bad_version_before_length_arrives() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(MAGIC + b"\x07")


def test_decoder_waits_for_whole_frame() -> None:
    frame = encode_frame(b"abcdef")
    decoder = FrameDecoder()
    for i, byte in enumerate(frame[:-1]):
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None
        assert decoder.buffered == i + 1
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == b"abcdef"
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_decoder_returns_frames_before_a_bad_one() -> None:
    decoder = FrameDecoder(max_size=10)
    decoder.feed(encode_frame(b"ok") + header(11))
    assert decoder.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_decoder_accepts_buffers_of_any_kind() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"xyz")
    decoder.feed(bytearray(frame[:4]))
    decoder.feed(memoryview(frame)[4:])
    assert decoder.next_frame() == b"xyz"


def test_decoder_refuses_negative_max_size() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_size=-1)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@given(payloads=st.lists(st.binary(max_size=300), max_size=8), data=st.data())
def test_round_trip_any_payloads_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p, max_size=300) for p in payloads)
    decoder = FrameDecoder(max_size=300)
    received: list[bytes] = []
    for chunk in data.draw(chunked(stream)):
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            received.append(frame)
    assert received == payloads
    assert decoder.buffered == 0


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_garbage_streams_raise_only_frame_errors(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_size=64)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while decoder.next_frame() is not None:
                pass
    except FrameError:
        pass


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE), st.integers(0, 2**32))
def test_parse_header_raises_only_frame_errors(raw: bytes, max_size: int) -> None:
    try:
        length = parse_header(raw, max_size)
    except FrameError:
        return
    assert raw[:4] == MAGIC + bytes([VERSION])
    assert 0 <= length <= max_size
