"""Compressed hidden states: the documented error bounds hold for any finite input,
non-finite input is refused, and untrusted tensors decode or raise `TensorError`."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from potluck.errors import CodecRangeError, MessageError, TensorError
from potluck.wire.compress import (
    DEFAULT_BLOCK_SIZE,
    INT8_ERROR_FACTOR,
    MAX_BLOCK_SIZE,
    MAX_SCALE,
    MIN_BLOCK_SIZE,
    WIRE_CODECS,
    EncodedHidden,
    WireCodec,
    wire_bytes,
)
from potluck.wire.tensors import DTYPES, TensorMeta, tensor_from_bytes, tensor_to_bytes

FLT_MAX = torch.finfo(torch.float32).max
TINY = 2.0**-149  # the smallest float32 subnormal
BLOCK_SIZES = [2**k for k in range(4, 13)]
SPECIAL = [0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30, TINY, -TINY, 2.0**-126, FLT_MAX, -FLT_MAX, 0.5]
ROUNDING = {"float16": (2.0**-11, 2.0**-25), "bfloat16": (2.0**-8, 2.0**-134)}
INT8 = WireCodec("int8-block")


@st.composite
def hidden_states(draw: st.DrawFn, limit: float = FLT_MAX, max_hidden: int = 300) -> torch.Tensor:
    """Finite float32 (batch, seq, hidden) with |x| <= limit: zeros, a normal
    distribution at any scale, or magnitudes spread over the whole float32 range
    (denormals included), overlaid with drawn values (outliers, +-0, extremes)."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, max_hidden)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["zeros", "normal", "wide"]))
    if kind == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif kind == "normal":
        spread = 2.0 ** draw(st.integers(-150, 126))
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    else:
        exponents = torch.empty(shape, dtype=torch.float64).uniform_(-150, 128, generator=gen)
        signs = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
        x = signs * torch.exp2(exponents)
    x = x.clamp(-limit, limit).to(torch.float32)
    values = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(SPECIAL)
    flat = x.view(-1)
    for index, value in draw(
        st.lists(st.tuples(st.integers(0, x.numel() - 1), values), max_size=12)
    ):
        flat[index] = max(-limit, min(limit, value))
    return x


def block_absmax(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per element, the absolute maximum of its block (batch, seq, hidden), float64."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for start in range(0, x.shape[-1], size):
        block = x[..., start : start + size].to(torch.float64).abs()
        out[..., start : start + size] = block.amax(dim=-1, keepdim=True)
    return out


def scale_of_element(scales: torch.Tensor, size: int, hidden: int) -> torch.Tensor:
    """Per element, its block's scale (batch, seq, hidden), float64."""
    return scales.to(torch.float64)[..., torch.arange(hidden) // size]


# --- blockwise 8-bit ---------------------------------------------------------


@settings(deadline=None, max_examples=150)
@given(hidden_states(), st.sampled_from(BLOCK_SIZES))
@example(torch.zeros(1, 1, 70), 64)
@example(torch.tensor([[[1e30, 1e-30, -1e-30, 0.0, -0.0, 3.0]]]), 16)
@example(torch.full((2, 3, 5), -0.0), 16)
@example(torch.tensor([[[178 * TINY, TINY, -3 * TINY]]]), 16)  # scale below the normal range
@example(torch.tensor([[[FLT_MAX, -FLT_MAX, 1.0, FLT_MAX / 127 * 126.5]]]), 16)
def test_int8_round_trip_within_bound(x: torch.Tensor, size: int) -> None:
    codec = WireCodec("int8-block", size)
    encoded = codec.encode(x)
    batch, seq, hidden = x.shape
    assert encoded.hidden.dtype == torch.int8 and encoded.hidden.shape == x.shape
    assert encoded.scales.dtype == torch.float32
    assert encoded.scales.shape == (batch, seq, math.ceil(hidden / size))
    assert int(encoded.hidden.min()) >= -127 and int(encoded.hidden.max()) <= 127

    decoded = codec.decode(encoded.hidden, encoded.scales)  # through validation, as received
    assert decoded.dtype == torch.float32 and decoded.shape == x.shape
    assert bool(torch.isfinite(decoded).all())

    # The scale is the smallest float32 >= m / 127, checked exactly in binary64.
    m = block_absmax(x, size)
    s = scale_of_element(encoded.scales, size, hidden)
    assert bool((s * 127 >= m).all())
    below = torch.nextafter(s.to(torch.float32), torch.zeros_like(s, dtype=torch.float32))
    assert bool(((below.to(torch.float64) * 127 < m) | (s == 0)).all())
    assert bool(((s == 0) == (m == 0)).all())

    # The bound, exact: |x - x'| is exact in binary64 (x' = 0 or within a few
    # binades of x), and s * (1/2 + 2^-16) is exact (24 + 16 significant bits).
    error = (x.to(torch.float64) - decoded.to(torch.float64)).abs()
    assert bool((error <= s * INT8_ERROR_FACTOR).all())
    assert torch.equal(encoded.error_bound(), s * INT8_ERROR_FACTOR)
    # ... and in terms of the block's absolute maximum.
    assert bool((error <= m / 254 * (1 + 2.0**-14) + TINY).all())
    assert bool((decoded[m == 0] == 0).all())


def test_int8_bound_is_attained() -> None:
    # Block [127, 0.5]: s = 1, and 0.5 is a tie that rounds to the even code 0.
    encoded = INT8.encode(torch.tensor([[[127.0, 0.5, -0.5, 1.5]]]))
    assert encoded.scales.tolist() == [[[1.0]]]
    assert encoded.hidden.tolist() == [[[127, 0, 0, 2]]]
    error = (encoded.decode() - torch.tensor([[[127.0, 0.5, -0.5, 1.5]]])).abs()
    assert error.tolist() == [[[0.0, 0.5, 0.5, 0.5]]]


@pytest.mark.parametrize("size", [64, 256, 4096])
def test_int8_error_spread_values_near_the_bound(size: int) -> None:
    # Values spread evenly over [-1, 1]: the worst error is close to s/2 and the
    # mean close to s/4, so the bound is neither loose nor violated.
    gen = torch.Generator().manual_seed(size)
    x = torch.rand((1, 4, 4096), generator=gen) * 2 - 1
    codec = WireCodec("int8-block", size)
    encoded = codec.encode(x)
    s = scale_of_element(encoded.scales, size, 4096)
    relative = (x.to(torch.float64) - encoded.decode().to(torch.float64)).abs() / s
    assert 0.49 <= float(relative.max()) <= INT8_ERROR_FACTOR
    assert 0.23 <= float(relative.mean()) <= 0.27


def test_int8_max_scale_and_extremes() -> None:
    below = torch.nextafter(torch.tensor(MAX_SCALE), torch.tensor(0.0))
    assert MAX_SCALE * 127 >= FLT_MAX > float(below) * 127
    encoded = INT8.encode(torch.tensor([[[FLT_MAX, -FLT_MAX, 0.0]]]))
    assert encoded.scales.tolist() == [[[MAX_SCALE]]]
    assert encoded.decode().tolist() == [[[FLT_MAX, -FLT_MAX, 0.0]]]  # clamped, not inf


def test_int8_tail_block_and_shapes() -> None:
    x = torch.arange(1, 2 * 3 * 70 + 1, dtype=torch.float32).reshape(2, 3, 70)
    encoded = INT8.encode(x)
    assert encoded.hidden.shape == (2, 3, 70) and encoded.scales.shape == (2, 3, 2)
    # Each row's second block holds its last 6 elements only.
    tail = WireCodec("int8-block", 16).encode(x[..., 64:])  # one block of the same 6
    assert torch.equal(encoded.scales[..., 1:], tail.scales)
    assert torch.equal(encoded.hidden[..., 64:], tail.hidden)


def test_encode_accepts_half_inputs_and_leaves_input_alone() -> None:
    x = torch.randn(1, 2, 100, requires_grad=True)
    copy = x.detach().clone()
    INT8.encode(x)
    assert torch.equal(x.detach(), copy)
    for dtype in (torch.float16, torch.bfloat16):
        half = x.detach().to(dtype)
        assert torch.equal(INT8.encode(half).decode(), INT8.encode(half.to(torch.float32)).decode())


# --- float codecs -------------------------------------------------------------


@settings(deadline=None)
@given(hidden_states())
def test_float32_is_exact(x: torch.Tensor) -> None:
    codec = WireCodec("float32")
    encoded = codec.encode(x)
    assert encoded.scales.shape == (*x.shape[:2], 0)
    decoded = codec.decode(encoded.hidden, encoded.scales)
    assert torch.equal(decoded.view(torch.int32), x.view(torch.int32))  # -0.0 too
    assert not bool(encoded.error_bound().any())


@settings(deadline=None)
@given(st.data(), st.sampled_from(["float16", "bfloat16"]))
def test_half_codecs_within_bound(data: st.DataObject, name: str) -> None:
    codec = WireCodec(name)
    limit = torch.finfo(codec.wire_dtype).max
    x = data.draw(hidden_states(limit=limit))
    encoded = codec.encode(x)
    assert encoded.hidden.dtype == codec.wire_dtype and encoded.hidden.shape == x.shape
    decoded = codec.decode(encoded.hidden, encoded.scales)
    assert decoded.dtype == torch.float32 and bool(torch.isfinite(decoded).all())
    unit, floor = ROUNDING[name]
    exact, received = x.to(torch.float64), decoded.to(torch.float64)
    error = (exact - received).abs()
    assert bool((error <= (exact.abs() * unit).clamp(min=floor)).all())
    assert bool((error <= encoded.error_bound()).all())
    assert torch.equal(encoded.error_bound(), (received.abs() * unit).clamp(min=floor))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_codecs_refuse_overflow(name: str) -> None:
    codec = WireCodec(name)
    limit = torch.finfo(codec.wire_dtype).max
    edge = torch.tensor([[[limit, -limit, 1.0]]])
    assert torch.equal(codec.encode(edge).decode(), edge)
    above = torch.nextafter(torch.tensor(limit), torch.tensor(math.inf))
    for value in (float(above), -float(above), FLT_MAX):
        x = torch.zeros(1, 2, 8)
        x[0, 1, 3] = value
        with pytest.raises(CodecRangeError, match="overflow"):  # a TensorError
            codec.encode(x)
    assert limit == (65504.0 if name == "float16" else float.fromhex("0x1.fep+127"))


# --- non-finite input ----------------------------------------------------------


@settings(deadline=None)
@given(
    hidden_states(max_hidden=100),
    st.sampled_from(WIRE_CODECS),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(0, 10**6),
)
def test_nan_or_inf_anywhere_is_refused(x: torch.Tensor, name: str, bad: float, where: int) -> None:
    x.view(-1)[where % x.numel()] = bad
    with pytest.raises(TensorError, match="NaN or infinity cannot be compressed"):
        WireCodec(name).encode(x)


@pytest.mark.parametrize("name", WIRE_CODECS)
def test_encode_refuses_what_is_not_hidden_states(name: str) -> None:
    codec = WireCodec(name)
    for bad in (
        [[[1.0]]],
        torch.ones(1, 1, 4, dtype=torch.float64),
        torch.ones(1, 1, 4, dtype=torch.int32),
        torch.ones(1, 4),
        torch.ones(1, 1, 1, 4),
        torch.ones(1, 0, 4),
    ):
        with pytest.raises(TensorError):
            codec.encode(bad)  # type: ignore[arg-type]


# --- untrusted tensors ----------------------------------------------------------

_GARBAGE_DTYPES = [torch.int8, torch.float32, torch.float16, torch.bfloat16, torch.int32]


@st.composite
def received(draw: st.DrawFn) -> tuple[WireCodec, torch.Tensor, torch.Tensor]:
    """A codec and two tensors of arbitrary bits; each thing that can be wrong with
    them (dtype, rank, shape, values) is wrong in about a quarter of the cases."""
    name = draw(st.sampled_from(WIRE_CODECS))
    codec = WireCodec(name, draw(st.sampled_from(BLOCK_SIZES[:3])) if name == "int8-block" else 0)

    def sometimes() -> bool:
        return draw(st.integers(0, 3)) == 0

    def tensor(dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        raw = draw(st.binary(min_size=size, max_size=size))
        return torch.tensor(list(raw), dtype=torch.uint8).view(dtype).reshape(shape)

    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 64))]
    if sometimes():  # a wrong rank or an empty dimension
        shape = draw(st.lists(st.integers(0, 3), max_size=4))
    dtype = draw(st.sampled_from(_GARBAGE_DTYPES)) if sometimes() else codec.wire_dtype
    hidden = tensor(dtype, shape)
    if not sometimes():  # keep the bits, but no code -128, NaN or infinity
        if dtype == torch.int8:
            hidden = hidden.clamp(min=-127)
        elif dtype.is_floating_point:
            hidden = torch.nan_to_num(hidden, nan=0.0, posinf=1.0, neginf=-1.0)

    scale_shape = [*shape[:2], codec.blocks(shape[-1]) if len(shape) == 3 else 1]
    if sometimes():
        scale_shape[-1] = max(0, scale_shape[-1] + draw(st.sampled_from([-1, 1])))
    if sometimes():
        scales = tensor(draw(st.sampled_from(_GARBAGE_DTYPES)), scale_shape)
    else:  # float32: valid scales, or any value at all (negative, NaN, inf, too large)
        count = math.prod(scale_shape)
        values = st.floats(width=32) if sometimes() else st.floats(0, MAX_SCALE, width=32)
        floats = draw(st.lists(values, min_size=count, max_size=count))
        scales = torch.tensor(floats, dtype=torch.float32).reshape(scale_shape)
    return codec, hidden, scales


@settings(deadline=None, max_examples=300)
@given(received())
def test_untrusted_tensors_decode_or_raise_tensor_error(
    case: tuple[WireCodec, torch.Tensor, torch.Tensor],
) -> None:
    codec, hidden, scales = case
    try:
        decoded = codec.decode(hidden, scales)
    except TensorError:
        event("refused")
        return
    event("decoded")
    assert decoded.dtype == torch.float32 and decoded.shape == hidden.shape
    assert bool(torch.isfinite(decoded).all())
    bound = EncodedHidden(codec, hidden, scales).error_bound()
    assert bound.shape == hidden.shape and bool(torch.isfinite(bound).all())


_CODES = torch.zeros(1, 1, 64, dtype=torch.int8)
_ONE = torch.ones(1, 1, 1)
_ABOVE_MAX_SCALE = float(torch.nextafter(torch.tensor(MAX_SCALE), torch.tensor(math.inf)))
_HALF = WireCodec("float16")


@pytest.mark.parametrize(
    ("codec", "hidden", "scales", "match"),
    [
        (INT8, _CODES.clone().fill_(-128), _ONE, "codes must be in"),
        *[
            (INT8, _CODES, torch.full((1, 1, 1), bad), "scales must be")
            for bad in (-1.0, -0.0, math.nan, math.inf, -math.inf, _ABOVE_MAX_SCALE)
        ],
        (INT8, _CODES, torch.ones(1, 1, 2), "shape"),  # 64 codes are one block of 64
        (INT8, _CODES, _ONE.to(torch.float64), "float32"),
        (INT8, _CODES.to(torch.int32), _ONE, r"must be torch\.int8"),
        (INT8, _CODES[0], _ONE, "shape"),
        (INT8, _CODES, torch.ones(1, 1, 1, device="meta"), "meta"),
        (INT8, _CODES, None, r"torch\.Tensor"),
        (_HALF, torch.tensor([[[1.0, math.inf]]], dtype=torch.float16), _ONE[..., :0], "finite"),
        (_HALF, torch.tensor([[[math.nan]]], dtype=torch.float16), _ONE[..., :0], "finite"),
        (_HALF, torch.ones(1, 1, 2, dtype=torch.float16), _ONE, "shape"),
        (_HALF, torch.ones(1, 1, 2), _ONE[..., :0], r"must be torch\.float16"),
    ],
)
def test_decode_refuses_invalid_tensors(
    codec: WireCodec, hidden: torch.Tensor, scales: torch.Tensor, match: str
) -> None:
    with pytest.raises(TensorError, match=match):
        codec.decode(hidden, scales)


def test_decode_largest_scale_is_finite() -> None:
    assert torch.equal(INT8.decode(_CODES, _ONE), torch.zeros(1, 1, 64))
    top = INT8.decode(_CODES.clone().fill_(127), torch.full((1, 1, 1), MAX_SCALE))
    assert bool((top == FLT_MAX).all())  # 127 * MAX_SCALE rounds to infinity: clamped


# --- codecs ------------------------------------------------------------------------


def test_codec_names_and_block_sizes() -> None:
    assert WIRE_CODECS == ("float32", "float16", "bfloat16", "int8-block")
    assert WireCodec() == WireCodec("float32", 0)
    assert WireCodec("int8-block", DEFAULT_BLOCK_SIZE) == INT8 and INT8.block_size == 64
    assert [WireCodec("int8-block", size).block_size for size in BLOCK_SIZES] == BLOCK_SIZES
    assert (MIN_BLOCK_SIZE, MAX_BLOCK_SIZE) == (16, 4096)
    for size in (8, 24, 100, 8192, -64, True, 64.0, "64", None):
        with pytest.raises(MessageError, match="block_size"):
            WireCodec("int8-block", size)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="int8-block only"):
        WireCodec("float16", 64)
    for name in ("int8", "float64", "FLOAT32", "", None, 3):
        with pytest.raises(MessageError, match="codec must be"):
            WireCodec(name)  # type: ignore[arg-type]
    assert [WireCodec(name).blocks(576) for name in WIRE_CODECS] == [0, 0, 0, 9]
    assert WireCodec("int8-block", 128).blocks(576) == 5


def test_codec_labels_round_trip_and_are_canonical() -> None:
    codecs = [WireCodec(name) for name in WIRE_CODECS[:3]]
    codecs += [WireCodec("int8-block", size) for size in BLOCK_SIZES]
    labels = [codec.label for codec in codecs]
    assert labels[:4] == ["float32", "float16", "bfloat16", "int8-block/16"]
    assert [WireCodec.from_label(label) for label in labels] == codecs
    for bad in (
        "int8-block",
        "int8-block/064",
        "int8-block/63",
        "int8-block/8192",
        "int8-block/",
        "int8-block/64 ",
        "float64",
        "Float16",
        "",
        None,
        64,
        ["float32"],
    ):
        with pytest.raises(MessageError):
            WireCodec.from_label(bad)


def test_wire_bytes_per_token() -> None:
    table = {
        name: [wire_bytes(WireCodec(name), hidden) for hidden in (576, 2048)]
        for name in WIRE_CODECS
    }
    assert table == {
        "float32": [2304, 8192],
        "float16": [1152, 4096],
        "bfloat16": [1152, 4096],
        "int8-block": [612, 2176],  # 1 byte per element + 4 per 64-element block
    }
    assert wire_bytes(WireCodec("int8-block", 4096), 576, 10) == 10 * (576 + 4)
    assert wire_bytes(INT8, 2048, 0) == 0
    for hidden, tokens in ((0, 1), (1, -1), (True, 1), (4, 1.5)):
        with pytest.raises(ValueError):
            wire_bytes(INT8, hidden, tokens)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", WIRE_CODECS)
def test_wire_bytes_match_the_encoded_tensors(name: str) -> None:
    codec = WireCodec(name)
    for shape in ((1, 1, 576), (2, 3, 70), (1, 5, 1)):
        encoded = codec.encode(torch.randn(shape))
        sizes = sum(t.numel() * t.element_size() for t in (encoded.hidden, encoded.scales))
        assert sizes == wire_bytes(codec, shape[-1], shape[0] * shape[1])


@pytest.mark.parametrize("name", WIRE_CODECS)
def test_encoded_tensors_travel_as_wire_tensors(name: str) -> None:
    if name == "int8-block" and "int8" not in DTYPES:
        pytest.skip("potluck.wire.tensors does not carry int8 yet")
    codec = WireCodec(name)
    encoded = codec.encode(torch.randn(2, 3, 100))
    arrived = []
    for tensor in (encoded.hidden, encoded.scales):
        meta, data = tensor_to_bytes(tensor)
        assert len(data) == meta.nbytes
        arrived.append(tensor_from_bytes(TensorMeta(meta.dtype, meta.shape), data))
    assert torch.equal(codec.decode(*arrived), encoded.decode())
