"""Tensors as raw bytes.

A tensor travels as a `TensorMeta` (dtype name and shape, carried in the
message header) plus its elements in row-major (C) order, each stored
little-endian with no padding::

    dtype      element  bytes
    float32    IEEE 754 binary32          4
    float16    IEEE 754 binary16          2
    bfloat16   upper half of a binary32   2
    int64      two's complement           8
    int32      two's complement           4
    int8       two's complement           1

so the data of a tensor is exactly `TensorMeta.nbytes` =
`prod(shape) * element size` bytes. At most `MAX_TENSOR_DIMS` dimensions; a
0-dimensional tensor holds one element. Encoding and decoding are bit-exact,
NaN payloads included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from potluck.errors import TensorError

__all__ = [
    "DTYPES",
    "MAX_TENSOR_DIMS",
    "TensorMeta",
    "tensor_from_bytes",
    "tensor_to_bytes",
]

MAX_TENSOR_DIMS = 8
_MAX_DIM = 2**63 - 1  # torch sizes are int64

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
}
# Little-endian numpy dtype holding the same bits; numpy has no bfloat16.
_WIRE_ARRAY_DTYPES: dict[str, np.dtype[np.generic]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<i2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int8": np.dtype("i1"),
}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in _TORCH_DTYPES.items()}

DTYPES: tuple[str, ...] = tuple(_TORCH_DTYPES)
"""Names of the dtypes that can go on the wire."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class TensorMeta:
    """A tensor's dtype name (one of `DTYPES`) and shape."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str) or self.dtype not in _TORCH_DTYPES:
            raise TensorError(f"dtype must be one of {', '.join(DTYPES)}, got {_show(self.dtype)}")
        if not isinstance(self.shape, tuple):
            raise TensorError(f"shape must be a tuple, got {_show(self.shape)}")
        if len(self.shape) > MAX_TENSOR_DIMS:
            raise TensorError(f"at most {MAX_TENSOR_DIMS} dimensions, got {len(self.shape)}")
        for dim in self.shape:
            if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= _MAX_DIM:
                raise TensorError(f"shape must hold sizes >= 0, got {_show(self.shape)}")

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorMeta:
        """The metadata of `tensor`; `TensorError` if its dtype cannot go on the wire."""
        name = _NAMES.get(tensor.dtype)
        if name is None:
            raise TensorError(f"dtype {tensor.dtype} cannot go on the wire; use one of {DTYPES}")
        return cls(name, tuple(tensor.shape))

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return math.prod(self.shape) * _WIRE_ARRAY_DTYPES[self.dtype].itemsize


def tensor_to_bytes(t: torch.Tensor) -> tuple[TensorMeta, bytes]:
    """The metadata and little-endian row-major bytes of `t` (any device, any strides)."""
    meta = TensorMeta.of(t)
    cpu = t.detach().to(device="cpu").contiguous()
    if cpu.dtype == torch.bfloat16:
        cpu = cpu.view(torch.int16)  # same bits; numpy has no bfloat16
    array = cpu.numpy()
    return meta, array.astype(_WIRE_ARRAY_DTYPES[meta.dtype], copy=False).tobytes()


def tensor_from_bytes(meta: TensorMeta, data: bytes | memoryview) -> torch.Tensor:
    """A new writable CPU tensor decoded from `data`, which must be `meta.nbytes` long."""
    raw = memoryview(data).cast("B")
    if raw.nbytes != meta.nbytes:
        raise TensorError(
            f"{meta.dtype} tensor of shape {list(meta.shape)} needs {meta.nbytes} bytes, "
            f"got {raw.nbytes}"
        )
    wire_dtype = _WIRE_ARRAY_DTYPES[meta.dtype]
    # astype copies into memory the tensor owns, in native byte order.
    array = np.frombuffer(raw, dtype=wire_dtype).astype(wire_dtype.newbyteorder("="))
    tensor = torch.from_numpy(array)
    if meta.dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor.reshape(meta.shape)
