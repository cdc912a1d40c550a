"""Tensors as bytes: bit-exact round trips and strict metadata."""

from __future__ import annotations

import struct
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.errors import TensorError
from potluck.wire import DTYPES, MAX_TENSOR_DIMS, TensorMeta, tensor_from_bytes, tensor_to_bytes

_BITS = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.int64: torch.int64,
    torch.int32: torch.int32,
    torch.int8: torch.int8,
}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN payloads included), dtype and shape too."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(_BITS[a.dtype]), b.contiguous().view(_BITS[b.dtype]))


@st.composite
def wire_tensors(draw: st.DrawFn, max_dims: int = 4) -> tuple[TensorMeta, bytes]:
    """Any allowed dtype and a small shape, filled with arbitrary bit patterns."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=max_dims)))
    meta = TensorMeta(dtype, shape)
    return meta, draw(st.binary(min_size=meta.nbytes, max_size=meta.nbytes))


def test_dtypes_are_the_six_allowed() -> None:
    assert set(DTYPES) == {"float32", "float16", "bfloat16", "int64", "int32", "int8"}
    assert MAX_TENSOR_DIMS == 8


@settings(deadline=None)
@given(wire_tensors())
def test_bytes_round_trip_bit_exact(case: tuple[TensorMeta, bytes]) -> None:
    meta, data = case
    tensor = tensor_from_bytes(meta, data)
    assert tuple(tensor.shape) == meta.shape
    assert tensor_to_bytes(tensor) == (meta, data)


@settings(deadline=None)
@given(wire_tensors(), st.booleans())
def test_tensor_round_trip_bit_exact(case: tuple[TensorMeta, bytes], transpose: bool) -> None:
    meta, data = case
    tensor = tensor_from_bytes(meta, data)
    if transpose and tensor.dim() >= 2:
        tensor = tensor.transpose(0, -1)  # non-contiguous input
    out_meta, out_data = tensor_to_bytes(tensor)
    assert out_meta == TensorMeta.of(tensor)
    assert same_bits(tensor_from_bytes(out_meta, out_data), tensor)


def test_layout_is_little_endian_row_major() -> None:
    tensor = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    meta, data = tensor_to_bytes(tensor)
    assert meta == TensorMeta("int32", (2, 2))
    assert data == struct.pack("<4i", 1, 2, 3, 4)
    assert tensor_to_bytes(tensor.T)[1] == struct.pack("<4i", 1, 3, 2, 4)


def test_bfloat16_is_the_upper_half_of_float32() -> None:
    _, data = tensor_to_bytes(torch.tensor([1.0, -2.5], dtype=torch.bfloat16))
    expected = [struct.pack("<f", x)[2:] for x in (1.0, -2.5)]
    assert data == b"".join(expected)


@pytest.mark.parametrize(
    ("dtype", "patterns"),
    [
        ("float32", [0x7FC00001, 0xFFA00000, 0x7F800001, 0x80000000]),  # quiet/signalling NaN, -0
        ("float16", [0x7E01, 0xFC01, 0x7C01, 0x8000]),
        ("bfloat16", [0x7FC1, 0xFF81, 0x7F81, 0x8000]),
    ],
)
def test_nan_payloads_survive(dtype: str, patterns: list[int]) -> None:
    fmt = f"<{len(patterns)}{'I' if dtype == 'float32' else 'H'}"
    data = struct.pack(fmt, *patterns)
    meta = TensorMeta(dtype, (len(patterns),))
    tensor = tensor_from_bytes(meta, data)
    assert tensor_to_bytes(tensor) == (meta, data)
    assert tensor_to_bytes(tensor.clone()) == (meta, data)


def test_decoded_tensor_is_writable_and_owns_its_memory() -> None:
    meta = TensorMeta("float32", (2, 3))
    source = bytearray(meta.nbytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_bytes = tensor_from_bytes(meta, bytes(source))
        from_view = tensor_from_bytes(meta, memoryview(source))
    source[:4] = struct.pack("<f", 7.0)
    assert from_view[0, 0].item() == 0.0  # not aliasing the caller's buffer
    from_bytes.add_(1.0)
    assert torch.equal(from_bytes, torch.ones(2, 3))


def test_scalar_and_empty_tensors() -> None:
    scalar = torch.tensor(3, dtype=torch.int64)
    meta, data = tensor_to_bytes(scalar)
    assert meta == TensorMeta("int64", ())
    assert meta.nbytes == 8
    assert torch.equal(tensor_from_bytes(meta, data), scalar)
    empty = torch.zeros(0, 4, dtype=torch.bfloat16)
    meta, data = tensor_to_bytes(empty)
    assert data == b""
    assert tensor_from_bytes(meta, data).shape == (0, 4)


def test_tensors_needing_grad_are_encoded_detached() -> None:
    tensor = torch.ones(2, requires_grad=True)
    meta, data = tensor_to_bytes(tensor * 2)
    assert torch.equal(tensor_from_bytes(meta, data), torch.full((2,), 2.0))


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.uint8, torch.int16, torch.bool, torch.complex64]
)
def test_other_dtypes_are_refused(dtype: torch.dtype) -> None:
    with pytest.raises(TensorError):
        tensor_to_bytes(torch.zeros(2, dtype=dtype))


def test_nbytes() -> None:
    assert TensorMeta("float32", (2, 3)).nbytes == 24
    assert TensorMeta("bfloat16", (2, 3)).nbytes == 12
    assert TensorMeta("int64", ()).nbytes == 8
    assert TensorMeta("int32", (5, 0)).nbytes == 0


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        ("float64", (1,)),
        ("Float32", (1,)),
        ("", (1,)),
        (None, (1,)),
        ("float32", [1, 2]),
        ("float32", (-1,)),
        ("float32", (True,)),
        ("float32", (1.0,)),
        ("float32", ("1",)),
        ("float32", (2**63,)),
        ("float32", (1,) * (MAX_TENSOR_DIMS + 1)),
    ],
)
def test_bad_metadata_is_refused(dtype: object, shape: object) -> None:
    with pytest.raises(TensorError):
        TensorMeta(dtype, shape)  # type: ignore[arg-type]


def test_max_dims_is_allowed() -> None:
    meta = TensorMeta("int32", (1,) * MAX_TENSOR_DIMS)
    assert tensor_from_bytes(meta, bytes(4)).dim() == MAX_TENSOR_DIMS


@given(wire_tensors(max_dims=3), st.integers(-8, 8).filter(lambda n: n != 0))
def test_wrong_byte_count_is_refused(case: tuple[TensorMeta, bytes], delta: int) -> None:
    meta, data = case
    wrong = data + bytes(delta) if delta > 0 else data[:delta]
    if len(wrong) == len(data):  # cutting an empty buffer leaves it right
        return
    with pytest.raises(TensorError):
        tensor_from_bytes(meta, wrong)


def test_huge_declared_shape_is_refused_by_byte_count() -> None:
    meta = TensorMeta("float32", (2**40,) * MAX_TENSOR_DIMS)
    with pytest.raises(TensorError):
        tensor_from_bytes(meta, bytes(16))
