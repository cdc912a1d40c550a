"""Messages: validation on construction, canonical encoding, hostile payloads."""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potluck.errors import (
    ConfigError,
    FrameError,
    MessageError,
    RemoteError,
    SessionLimitExceeded,
    TensorError,
    UnknownSession,
    WireError,
)
from potluck.wire import (
    MAX_ADDRS,
    MAX_ATTESTATIONS,
    MAX_BLOCKS,
    MAX_ERROR_MESSAGE,
    MAX_SERVERS,
    MAX_SESSION_LENGTH,
    MAX_TICKET_TEXT,
    MESSAGE_TYPES,
    PRIORITIES,
    AccountReply,
    AccountRequest,
    CloseSession,
    Dispute,
    Echo,
    ErrorReply,
    Forward,
    ForwardResult,
    FrameDecoder,
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
    TensorMeta,
    Verdict,
    WireCodec,
    decode_message,
    encode_frame,
    encode_message,
    expect,
    tensor_from_bytes,
)
from tests.wire.test_tensors import same_bits

# --- strategies ----------------------------------------------------------------

session_ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)
steps = st.integers(0, 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def spans(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(st.integers(0, MAX_BLOCKS - 1))
    return start, draw(st.integers(start + 1, MAX_BLOCKS))


@st.composite
def hidden_states(draw: st.DrawFn) -> torch.Tensor:
    """A (batch, seq, hidden) tensor of arbitrary bits, NaNs and infinities included."""
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    shape = draw(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6)))
    meta = TensorMeta(dtype, shape)
    return tensor_from_bytes(meta, draw(st.binary(min_size=meta.nbytes, max_size=meta.nbytes)))


@st.composite
def server_infos(draw: st.DrawFn) -> ServerInfo:
    start, end = draw(spans())
    return ServerInfo(
        peer_id=draw(st.text(min_size=1, max_size=128)),
        addrs=tuple(draw(st.lists(st.text(min_size=1, max_size=40), max_size=MAX_ADDRS))),
        model=draw(st.text(min_size=1, max_size=60)),
        start=start,
        end=end,
        throughput=draw(st.floats(min_value=0.0, allow_infinity=False)),
        free_cache_tokens=draw(st.integers(0, 2**63 - 1)),
        version=draw(st.text(min_size=1, max_size=64)),
        expires_at=draw(finite),
        load=draw(st.integers(0, 2**63 - 1)),
        bandwidth=draw(st.floats(min_value=0.0, allow_infinity=False)),
        validator=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "bfloat16"])),
        attestations=tuple(draw(st.lists(signed_entries, max_size=MAX_ATTESTATIONS))),
    )


signed_entries = st.tuples(
    st.text(min_size=2, max_size=60), st.from_regex(r"[0-9a-f]{128}", fullmatch=True)
)


@st.composite
def span_messages(draw: st.DrawFn, cls: type[OpenSession | SessionOpened]) -> Message:
    start, end = draw(spans())
    max_length = draw(st.integers(1, MAX_SESSION_LENGTH))
    if cls is OpenSession:
        ticket = draw(st.just(()) | signed_entries)
        return OpenSession(draw(session_ids), start, end, max_length, ticket)
    priority = draw(st.sampled_from(PRIORITIES))
    return SessionOpened(draw(session_ids), start, end, max_length, priority, draw(st.text()))


@st.composite
def forwards(draw: st.DrawFn) -> Forward:
    start, end = draw(spans())
    return Forward(start, end, draw(hidden_states()))


hex64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
signatures = st.from_regex(r"[0-9a-f]{128}", fullmatch=True) | st.just("")
dtypes = st.sampled_from(["float32", "bfloat16"])
wire_entries = st.lists(
    st.tuples(
        st.text(min_size=2, max_size=40),
        st.from_regex(r"[0-9a-f]{128}", fullmatch=True),
    ),
    max_size=3,
).map(tuple)
summaries = st.lists(
    st.tuples(hex64, st.integers(1, 10**6), st.integers(1, 10**6), hex64, hex64), max_size=3
).map(tuple)
ledger_peers = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20),
        st.lists(st.text(min_size=1, max_size=30), max_size=2).map(tuple),
    ),
    max_size=3,
).map(tuple)

MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    OpenSession: span_messages(OpenSession),
    SessionOpened: span_messages(SessionOpened),
    InferenceStep: st.builds(InferenceStep, session_ids, steps, steps, hidden_states()),
    StepResult: st.builds(
        StepResult, session_ids, steps, hidden_states(), hex64 | st.just(""), dtypes, signatures
    ),
    CloseSession: st.builds(CloseSession, session_ids, steps, signatures),
    SessionClosed: st.builds(SessionClosed, session_ids, st.booleans()),
    Forward: forwards(),
    ForwardResult: st.builds(
        ForwardResult, hidden_states(), hex64 | st.just(""), dtypes, signatures
    ),
    Echo: st.integers(0, 64).map(lambda n: Echo(torch.randn(n))),
    InfoRequest: st.just(InfoRequest()),
    SwarmRequest: st.just(SwarmRequest()),
    ServerInfo: server_infos(),
    SwarmView: st.builds(
        SwarmView,
        st.lists(server_infos(), max_size=3).map(tuple),
        st.lists(st.text(min_size=1, max_size=20), max_size=2).map(tuple),
    ),
    ErrorReply: st.builds(
        ErrorReply,
        st.from_regex(r"[a-z_]{1,64}", fullmatch=True),
        st.text(max_size=300),
    ),
    LedgerPush: st.builds(LedgerPush, wire_entries, st.booleans()),
    LedgerAck: st.builds(
        LedgerAck,
        st.integers(0, 10**6),
        st.lists(
            st.tuples(hex64, st.from_regex(r"[a-z_]{1,64}", fullmatch=True), st.text(max_size=40)),
            max_size=3,
        ).map(tuple),
    ),
    LedgerSync: st.builds(
        LedgerSync,
        summaries,
        st.integers(1, 20000),
        st.lists(st.text(min_size=1, max_size=30), max_size=2).map(tuple),
    ),
    LedgerSyncReply: st.builds(
        LedgerSyncReply, wire_entries, summaries, st.booleans(), ledger_peers
    ),
    AccountRequest: st.builds(AccountRequest, hex64, st.integers(0, 20000), st.integers(0, 10**9)),
    AccountReply: st.builds(
        AccountReply,
        hex64,
        st.integers(0, 2**53),
        st.integers(0, 10**9),
        hex64,
        st.booleans(),
        wire_entries,
        wire_entries,
        st.integers(0, 2**53),
    ),
    Dispute: st.builds(
        Dispute, st.text(min_size=1, max_size=80), hidden_states(), hidden_states(), hidden_states()
    ),
    Verdict: st.builds(
        Verdict,
        hex64,
        st.lists(hex64, max_size=3).map(tuple),
        st.lists(hex64, max_size=3).map(tuple),
        st.text(max_size=80),
    ),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


# --- helpers ---------------------------------------------------------------------


def assert_same(a: Message, b: Message) -> None:
    """Equal messages, comparing tensors bit for bit."""
    assert type(a) is type(b)
    for field in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert same_bits(x, y), field.name
        else:
            assert x == y, field.name


def split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A payload's header as JSON and its tensor bytes."""
    (length,) = struct.unpack_from(">I", payload)
    header = json.loads(payload[4 : 4 + length])
    assert isinstance(header, dict)
    return header, payload[4 + length :]


def join(header: object, body: bytes = b"", *, raw: bytes | None = None) -> bytes:
    """A payload from any header (NaN allowed, no key sorting) or raw header bytes."""
    text = json.dumps(header).encode() if raw is None else raw
    return struct.pack(">I", len(text)) + text + body


def decode_or_wire_error(payload: bytes) -> Message | None:
    try:
        msg = decode_message(payload)
    except WireError:
        return None
    assert isinstance(msg, Message)
    assert_same(decode_message(encode_message(msg)), msg)  # what decodes is valid
    return msg


def hidden(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def server(**changes: Any) -> ServerInfo:
    fields: dict[str, Any] = {
        "peer_id": "12D3KooWExample",
        "addrs": ("/ip4/127.0.0.1/tcp/4001",),
        "model": "HuggingFaceTB/SmolLM2-135M",
        "start": 0,
        "end": 30,
        "throughput": 12.5,
        "free_cache_tokens": 4096,
        "version": "0.1.0",
        "expires_at": 1_800_000_000.0,
    }
    fields.update(changes)
    return ServerInfo(**fields)


# --- round trips ------------------------------------------------------------------


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES.values())
    assert {cls.__name__ for cls in MESSAGE_TYPES.values()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", list(MESSAGE_STRATEGIES), ids=lambda cls: cls.__name__)
@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(MESSAGE_STRATEGIES[cls])
    payload = encode_message(msg)
    decoded = decode_message(payload)
    assert_same(decoded, msg)
    assert encode_message(decoded) == payload  # one encoding per message


@settings(deadline=None, max_examples=50)
@given(messages)
def test_encoding_is_canonical_json(msg: Message) -> None:
    payload = encode_message(msg)
    header, body = split(payload)
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert payload[4 : 4 + len(canonical)] == canonical.encode("ascii")
    assert set(header) == {"type", "fields", "tensors"}
    assert MESSAGE_TYPES[header["type"]] is type(msg)
    assert len(body) == sum(
        TensorMeta(t["dtype"], tuple(t["shape"])).nbytes for t in header["tensors"]
    )


def test_inference_step_layout() -> None:
    msg = InferenceStep("ab", step=1, position=7, hidden=torch.ones(1, 1, 2))
    payload = encode_message(msg)
    header = (
        b'{"fields":{"position":7,"session_id":"ab","step":1},'
        b'"tensors":[{"dtype":"float32","name":"hidden","shape":[1,1,2]},'
        b'{"dtype":"float32","name":"scales","shape":[1,1,0]}],'
        b'"type":"InferenceStep"}'
    )
    assert payload == struct.pack(">I", len(header)) + header + struct.pack("<2f", 1.0, 1.0)


def test_swarm_view_nests_server_fields() -> None:
    view = SwarmView((server(), server(peer_id="other", addrs=())))
    header, body = split(encode_message(view))
    assert body == b""
    assert header["fields"]["servers"][1]["addrs"] == []
    assert header["fields"]["servers"][0]["peer_id"] == "12D3KooWExample"
    assert decode_message(encode_message(view)) == view


def test_frames_carry_messages_through_a_decoder() -> None:
    sent = [OpenSession("ab", 0, 4, 128), ForwardResult(torch.randn(2, 3, 4)), SwarmRequest()]
    stream = b"".join(encode_frame(encode_message(m)) for m in sent)
    decoder = FrameDecoder()
    decoder.feed(stream)
    received = []
    while (payload := decoder.next_frame()) is not None:
        received.append(decode_message(payload))
    for a, b in zip(received, sent, strict=True):
        assert_same(a, b)


# --- hostile payloads ----------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_wire_error(payload: bytes) -> None:
    decode_or_wire_error(payload)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_header_bytes_decode_or_raise_wire_error(header: bytes) -> None:
    decode_or_wire_error(join(None, raw=header))


@settings(deadline=None, max_examples=300)
@given(messages, st.data())
def test_mutated_encodings_decode_or_raise_wire_error(msg: Message, data: st.DataObject) -> None:
    payload = bytearray(encode_message(msg))
    mutation = data.draw(st.sampled_from(["flip", "flip_header", "truncate", "append", "cut"]))
    if mutation == "flip":
        for index in data.draw(st.lists(st.integers(0, len(payload) - 1), min_size=1)):
            payload[index] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "flip_header":  # hit the JSON rather than the tensor bytes
        end = 4 + struct.unpack_from(">I", payload)[0]
        index = data.draw(st.integers(4, end - 1))
        payload[index] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "truncate":
        del payload[data.draw(st.integers(0, len(payload) - 1)) :]
    elif mutation == "append":
        payload += data.draw(st.binary(min_size=1, max_size=8))
    else:
        start = data.draw(st.integers(0, len(payload) - 1))
        del payload[start : data.draw(st.integers(start + 1, len(payload)))]
    decode_or_wire_error(bytes(payload))


@settings(deadline=None, max_examples=300)
@given(messages, st.data())
def test_mutated_headers_decode_or_raise_wire_error(msg: Message, data: st.DataObject) -> None:
    """Replace, add or drop one JSON value anywhere in a valid header."""
    header, body = split(encode_message(msg))
    targets: list[dict[str, Any]] = [header, header["fields"], *header["tensors"]]
    for server_fields in header["fields"].get("servers", []):
        targets.append(server_fields)
    target = data.draw(st.sampled_from(targets))
    key = data.draw(st.sampled_from([*target, "extra"]) if target else st.just("extra"))
    if data.draw(st.booleans()):
        target[key] = data.draw(json_values)
    else:
        target.pop(key, None)
    decode_or_wire_error(join(header, body))


def test_valid_header_shuffled_keys_still_decode() -> None:
    fields = {"tokens": 3, "receipt": "", "session_id": "ab"}
    payload = join({"tensors": [], "type": "CloseSession", "fields": fields})
    assert decode_message(payload) == CloseSession("ab", 3)


def forward_header(**fields: Any) -> dict[str, Any]:
    return {
        "type": "Forward",
        "fields": {"start": 0, "end": 2, "steps": [], "quant": "", **fields},
        "tensors": [{"name": "hidden", "dtype": "float32", "shape": [1, 1, 2]}],
    }


def forward_tensor(body: bytes = bytes(8), **entry: Any) -> bytes:
    """A Forward payload whose tensor entry has `entry` changed."""
    tensor = {"name": "hidden", "dtype": "float32", "shape": [1, 1, 2], **entry}
    return join({**forward_header(), "tensors": [tensor]}, body)


def bare(type_: str, **fields: Any) -> bytes:
    """A payload with no tensors."""
    return join({"type": type_, "fields": fields, "tensors": []})


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", MessageError),
        (b"\x00\x00\x00", MessageError),
        (b"\x00\x00\x00\x10{}", MessageError),  # header runs past the end
        (join(None, raw=b"\xff\xfe"), MessageError),  # not UTF-8
        (join(None, raw=b"[" * 100_000 + b"]" * 100_000), MessageError),  # deep nesting
        (join(None, raw=b'{"a":1,"a":2}'), MessageError),  # duplicate keys
        (join(None, raw=b"9" * 5000), MessageError),  # integer too long to parse
        (join([]), MessageError),
        (bare("Nope"), MessageError),
        (bare("Message"), MessageError),
        (join({"type": ["InfoRequest"], "fields": {}, "tensors": []}), MessageError),
        (join({"type": "InfoRequest", "fields": {}}), MessageError),
        (join({"type": "InfoRequest", "fields": {}, "tensors": [], "x": 1}), MessageError),
        (join({"type": "InfoRequest", "fields": [], "tensors": []}), MessageError),
        (join({"type": "InfoRequest", "fields": {}, "tensors": {}}), MessageError),
        (join({"type": "InfoRequest", "fields": {}, "tensors": []}, b"\x00"), MessageError),
        (bare("InfoRequest", a=1), MessageError),
        (bare("CloseSession"), MessageError),
        (bare("CloseSession", session_id=1), MessageError),
        (bare("CloseSession", session_id="AB"), MessageError),
        (join(forward_header(), bytes(7)), TensorError),  # one byte short
        (join(forward_header(), bytes(9)), MessageError),  # one byte trailing
        (join(forward_header(start=True), bytes(8)), MessageError),  # bool for int
        (join(forward_header(start=0.0), bytes(8)), MessageError),  # float for int
        (join(forward_header(end=float("nan")), bytes(8)), MessageError),  # NaN literal
        (join(forward_header(end=float("inf")), bytes(8)), MessageError),
        (join(forward_header(end="2"), bytes(8)), MessageError),
        (join(forward_header(extra=1), bytes(8)), MessageError),
        (join({**forward_header(), "tensors": []}), MessageError),
        (forward_tensor(name="h"), MessageError),
        (forward_tensor(x=0), MessageError),
        (forward_tensor(bytes(16), dtype="float64"), TensorError),
        (forward_tensor(dtype="int32"), TensorError),
        (forward_tensor(dtype=None), TensorError),
        (forward_tensor(shape=[1, 2]), TensorError),
        (forward_tensor(b"", shape=[0, 1, 2]), TensorError),
        (forward_tensor(shape="x"), TensorError),
        (forward_tensor(shape=[1, 1, 2.0]), TensorError),
        (forward_tensor(shape=[2**62] * 3), TensorError),
        (bare("SwarmView", servers={}), MessageError),
        (bare("SwarmView", servers=[1]), MessageError),
        (bare("SwarmView", servers=[{}] * (MAX_SERVERS + 1)), MessageError),
        (bare("ServerInfo"), MessageError),
        (bare("ErrorReply", code="x", message="\ud800"), MessageError),  # lone surrogate
    ],
)
def test_malformed_payloads_raise_typed_errors(payload: bytes, error: type[WireError]) -> None:
    with pytest.raises(error):
        decode_message(payload)


def test_wire_errors_are_not_frame_errors() -> None:
    with pytest.raises(WireError) as info:
        decode_message(b"garbage!")
    assert not isinstance(info.value, FrameError)


# --- validation on construction ---------------------------------------------------


@pytest.mark.parametrize("cls", [OpenSession, SessionOpened])
@pytest.mark.parametrize(
    "args",
    [
        ("", 0, 1, 1),
        ("A", 0, 1, 1),
        ("g", 0, 1, 1),
        ("a" * 65, 0, 1, 1),
        ("ab\n", 0, 1, 1),
        (1, 0, 1, 1),
        ("ab", -1, 1, 1),
        ("ab", 1, 1, 1),
        ("ab", 2, 1, 1),
        ("ab", 0, MAX_BLOCKS + 1, 1),
        ("ab", False, 1, 1),
        ("ab", 0, True, 1),
        ("ab", 0, 1.0, 1),
        ("ab", 0, 1, 0),
        ("ab", 0, 1, MAX_SESSION_LENGTH + 1),
    ],
)
def test_session_spans_are_checked(cls: type[OpenSession], args: tuple[Any, ...]) -> None:
    with pytest.raises(MessageError):
        cls(*args)


def test_span_limits_are_inclusive() -> None:
    assert OpenSession("0" * 64, MAX_BLOCKS - 1, MAX_BLOCKS, MAX_SESSION_LENGTH).end == MAX_BLOCKS
    assert SessionOpened("f", 0, 1, 1).start == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"step": -1}, MessageError),
        ({"step": True}, MessageError),
        ({"step": 2**63}, MessageError),
        ({"position": -1}, MessageError),
        ({"position": 1.0}, MessageError),
        ({"session_id": "xyz"}, MessageError),
        ({"hidden": [[[0.0]]]}, TensorError),
        ({"hidden": hidden(1, 2)}, TensorError),
        ({"hidden": hidden(1, 2, 3, 4)}, TensorError),
        ({"hidden": hidden(0, 2, 3)}, TensorError),
        ({"hidden": hidden(1, 0, 3)}, TensorError),
        ({"hidden": hidden(1, 2, 0)}, TensorError),
        ({"hidden": hidden(1, 2, 3, dtype=torch.float64)}, TensorError),
        ({"hidden": hidden(1, 2, 3, dtype=torch.int32)}, TensorError),
        ({"hidden": hidden(1, 2, 3, dtype=torch.int64)}, TensorError),
    ],
)
def test_inference_step_is_checked(kwargs: dict[str, Any], error: type[WireError]) -> None:
    args: dict[str, Any] = {"session_id": "ab", "step": 0, "position": 0, "hidden": hidden(1, 2, 3)}
    args.update(kwargs)
    with pytest.raises(error):
        InferenceStep(**args)


def test_tensor_messages_check_their_hidden_states() -> None:
    for bad in (hidden(2, 3), hidden(1, 2, 3, dtype=torch.int32)):
        with pytest.raises(TensorError):
            StepResult("ab", 0, bad)
        with pytest.raises(TensorError):
            Forward(0, 1, bad)
        with pytest.raises(TensorError):
            ForwardResult(bad)
    with pytest.raises(MessageError):
        Forward(3, 3, hidden(1, 1, 1))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert ForwardResult(hidden(1, 1, 1, dtype=dtype)).hidden.dtype == dtype


def test_session_id_messages() -> None:
    assert CloseSession("deadbeef") == CloseSession("deadbeef")
    with pytest.raises(MessageError):
        CloseSession("DEADBEEF")
    with pytest.raises(MessageError):
        SessionClosed("")


@pytest.mark.parametrize(
    "changes",
    [
        {"peer_id": ""},
        {"peer_id": "p" * 129},
        {"peer_id": b"peer"},
        {"addrs": ["/ip4/1.2.3.4/tcp/1"]},
        {"addrs": ("a",) * (MAX_ADDRS + 1)},
        {"addrs": ("",)},
        {"addrs": ("a" * 257,)},
        {"addrs": (1,)},
        {"addrs": ("\udc80",)},
        {"model": ""},
        {"model": "m" * 257},
        {"start": 5, "end": 5},
        {"end": MAX_BLOCKS + 1},
        {"throughput": -0.1},
        {"throughput": float("nan")},
        {"throughput": float("inf")},
        {"throughput": True},
        {"throughput": "1"},
        {"throughput": 10**400},
        {"free_cache_tokens": -1},
        {"free_cache_tokens": 1.5},
        {"free_cache_tokens": False},
        {"version": ""},
        {"expires_at": float("-inf")},
        {"expires_at": float("nan")},
        {"expires_at": None},
    ],
)
def test_server_info_is_checked(changes: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        server(**changes)


def test_server_info_numbers_become_floats() -> None:
    info = server(throughput=3, expires_at=10)
    assert isinstance(info.throughput, float)
    assert isinstance(info.expires_at, float)
    assert info == server(throughput=3.0, expires_at=10.0)
    assert server(addrs=("a" * 256,) * MAX_ADDRS, model="m" * 256).addrs[0] == "a" * 256


def test_server_info_covers() -> None:
    info = server(start=10, end=20)
    assert info.covers(10, 20)
    assert info.covers(12, 13)
    assert not info.covers(9, 20)
    assert not info.covers(10, 21)
    assert not info.covers(15, 15)


def test_swarm_view_is_checked() -> None:
    assert SwarmView(()).servers == ()
    with pytest.raises(MessageError):
        SwarmView([server()])  # type: ignore[arg-type]
    with pytest.raises(MessageError):
        SwarmView((server(), "server"))  # type: ignore[arg-type]
    with pytest.raises(MessageError):
        SwarmView((server(),) * (MAX_SERVERS + 1))


def test_messages_are_frozen() -> None:
    msg = OpenSession("ab", 0, 1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.start = 1  # type: ignore[misc]
    step = InferenceStep("ab", 0, 0, hidden(1, 1, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.hidden = hidden(1, 1, 2)  # type: ignore[misc]


# --- errors and expect ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [("", "x"), ("Bad", "x"), ("bad-code", "x"), ("a" * 65, "x"), (1, "x"), ("ok", "m" * 4097)],
)
def test_error_reply_is_checked(code: Any, message: str) -> None:
    with pytest.raises(MessageError):
        ErrorReply(code, message)


def test_error_reply_from_exception() -> None:
    reply = ErrorReply.from_exception(UnknownSession("no session ab"))
    assert reply == ErrorReply("unknown_session", "no session ab")
    assert ErrorReply.from_exception(TensorError("bad")).code == "bad_tensor"
    assert ErrorReply.from_exception(ConfigError("oops")).code == "internal"  # no code
    assert ErrorReply.from_exception(RemoteError("x", code="Not-A-Code")).code == "internal"
    long = ErrorReply.from_exception(MessageError("m" * 10_000))
    assert len(long.message) == MAX_ERROR_MESSAGE
    assert ErrorReply.from_exception(MessageError("\ud800")).message == "?"


def test_error_reply_to_exception() -> None:
    error = ErrorReply("session_limit", "full").to_exception()
    assert isinstance(error, SessionLimitExceeded)
    assert str(error) == "full"
    assert ErrorReply("something_new", "?").to_exception().code == "something_new"


def test_expect() -> None:
    msg: Message = SessionOpened("ab", 0, 1, 1)
    opened = expect(msg, SessionOpened)
    assert opened.max_length == 1
    assert expect(msg, ErrorReply, SessionOpened) is msg
    with pytest.raises(MessageError, match="expected StepResult or ForwardResult"):
        expect(msg, StepResult, ForwardResult)


@pytest.mark.parametrize(
    "ticket",
    [("{}",), ("{}", "zz"), ("{}", ""), ("", "ab" * 64), ("x" * (MAX_TICKET_TEXT + 1), "ab" * 64)],
)
def test_a_malformed_ticket_is_refused(ticket: tuple[str, ...]) -> None:
    with pytest.raises(MessageError, match="ticket"):
        OpenSession("ab", 0, 1, 1, ticket)


def test_session_opened_names_a_known_priority_and_servers_few_attestations() -> None:
    with pytest.raises(MessageError, match="priority"):
        SessionOpened("ab", 0, 1, 1, "vip")
    entry = ("{}", "ab" * 64)
    info = ServerInfo("p", (), "m", 0, 1, 1.0, 1, "v", 1.0, attestations=(entry,))
    assert info.attestations == (entry,)
    with pytest.raises(MessageError, match="attestations"):
        ServerInfo("p", (), "m", 0, 1, 1.0, 1, "v", 1.0, attestations=(entry,) * 5)


# -- codecs, scales, quantisation and replays ------------------------------------------


def test_compressed_steps_round_trip_with_their_scales() -> None:
    encoded = WireCodec("int8-block", 16).encode(torch.randn(2, 3, 40))
    step = InferenceStep("ab", 0, 0, encoded.hidden, encoded.scales)
    back = decode_message(encode_message(step))
    assert isinstance(back, InferenceStep) and back.scales is not None
    assert torch.equal(back.hidden, encoded.hidden) and torch.equal(back.scales, encoded.scales)
    result = StepResult("ab", 0, encoded.hidden, quant="nf4", codec="int8-block/16")
    again = decode_message(encode_message(dataclasses.replace(result, scales=encoded.scales)))
    assert isinstance(again, StepResult) and (again.quant, again.codec) == ("nf4", "int8-block/16")
    plain = InferenceStep("ab", 0, 0, torch.ones(1, 2, 4))
    assert plain.scales is not None and tuple(plain.scales.shape) == (1, 2, 0)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: OpenSession("ab", 0, 1, 8, codec="int8-block"), MessageError),  # not canonical
        (lambda: OpenSession("ab", 0, 1, 8, codec="int4"), MessageError),
        (lambda: SessionOpened("ab", 0, 1, 8, codec="int8-block/3"), MessageError),
        (lambda: StepResult("ab", 0, torch.ones(1, 1, 4), quant="int4"), MessageError),
        (lambda: StepResult("ab", 0, torch.ones(1, 1, 4), codec=""), MessageError),
        (lambda: InferenceStep("ab", 0, 0, torch.ones(1, 2, 4), torch.ones(1, 1, 1)), TensorError),
        (lambda: InferenceStep("ab", 0, 0, torch.ones(1, 2, 4), torch.ones(1, 2)), TensorError),
        (
            lambda: InferenceStep("ab", 0, 0, torch.ones(1, 2, 4), torch.ones(1, 2, 1).half()),
            TensorError,
        ),
        (lambda: Forward(0, 1, torch.ones(1, 3, 4, dtype=torch.int8)), TensorError),
        (lambda: Forward(0, 1, torch.ones(1, 3, 4), (1, 1)), MessageError),  # 2 of 3 tokens
        (lambda: Forward(0, 1, torch.ones(1, 3, 4), (3, 0)), MessageError),
        (lambda: Forward(0, 1, torch.ones(1, 3, 4), quant="fp8"), MessageError),
        (lambda: ForwardResult(torch.ones(1, 1, 4), quant=""), MessageError),
    ],
)
def test_bad_codecs_scales_quantisations_and_replays_are_typed_errors(
    build: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        build()
