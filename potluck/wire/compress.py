"""Hidden states on the wire: float32, float16, bfloat16 or blockwise 8-bit.

A session's **codec** (`WireCodec`) says how the hidden states of its steps
travel. The tensors do not carry it: both sides already know it (the client
proposes it in `OpenSession.codec`, the server echoes it, and every
commitment of the session records it; `WireCodec.label` is its text form,
one of ``float32``, ``float16``, ``bfloat16`` and ``int8-block/<B>``). Encoding hidden states of
shape ``(batch, seq, h)`` gives two tensors, meant to travel as two tensor
fields of a message, their bytes as in `potluck.wire.tensors`::

    codec          hidden (batch, seq, h)   scales (batch, seq, n)      bytes per token
    float32        float32                  float32, n = 0              4h
    float16        float16                  float32, n = 0              2h
    bfloat16       bfloat16                 float32, n = 0              2h
    int8-block/B   int8 codes               float32, n = ceil(h / B)    h + 4 * ceil(h / B)

(`wire_bytes` computes the last column; int8 is one byte, two's complement.)
The block size `B` is a power of two from 16 to 4096, 64 by default.

Blockwise 8-bit. Each row (one token's `h` values) is cut into blocks of `B`
consecutive elements: block `k` holds elements ``[kB, min((k+1)B, h))``, so
the last block of a row is shorter when `B` does not divide `h`. Nothing is
padded, so the codes have exactly the shape of the input. For a block whose
largest magnitude is `m`, and each element `x` in it::

    scale    s  = the smallest float32 >= m / 127     (0 when m = 0)
    code     q  = round(x / s), x / s a float32 division, rounded to the
                  nearest integer, ties to even (0 when s = 0); always in
                  [-127, 127]
    decoded  x' = q * s, a float32 product, clamped to [-FLT_MAX, FLT_MAX]

(All float32 arithmetic is IEEE 754, round to nearest even, subnormals kept.)

**Error bound.** For every element, ``|x - x'| <= s * (1/2 + 2^-16)``
(`INT8_ERROR_FACTOR`), where `s` is the block's scale as sent. When
``m >= 127 * 2^-126`` (the scale is a normal float32), ``s < m/127 * (1 + 2^-23)``,
so ``|x - x'| < m/254 * (1 + 2^-14)``; for smaller `m`, ``s < m/127 + 2^-149``.
Proof: `s >= m/127`, so the exact ratio `r = x/s` has ``|r| <= 127``;
rounding is monotonic and 127 is a float32, so the computed ratio is within
[-127, 127] too (no code needs clamping), and it is off from `r` by at most
``2^-24 * |r| <= 127 * 2^-24`` (or 2^-150 below 2^-126, where `q` is 0
anyway). So ``|r - q| <= 1/2 + 127 * 2^-24``, that is
``|x - q*s| <= s/2 + 127 * 2^-24 * s``. The product `q*s` is an integer
multiple of 2^-149, as `s` is: below 2^-126 in magnitude it is exact in
float32, and above that rounding moves it by at most
``2^-24 * |q*s| <= 127 * 2^-24 * s``; past FLT_MAX the clamp moves it toward
`x` (``|x| <= FLT_MAX``), which cannot add error. In all:
``s * (1/2 + 254 * 2^-24) < s * (1/2 + 2^-16)``. The bound is tight: in a
block holding 127 and 0.5, `s = 1` and 0.5 decodes to 0. A block of zeros
decodes to exact zeros; the sign of a zero is not kept.

float16 and bfloat16 round to nearest even, so
``|x - x'| <= max(2^-11 * |x'|, 2^-25)`` for float16 and
``|x - x'| <= max(2^-8 * |x'|, 2^-134)`` for bfloat16 (both also hold with
`|x|` in place of `|x'|`); float32 is exact. `EncodedHidden.error_bound`
gives each element's bound from what was received.

**Validation.** Encoding takes a ``(batch, seq, h)`` float32, float16 or
bfloat16 tensor, every size at least 1, and raises `TensorError` for NaN or
infinity anywhere (every codec), and, for float16 and bfloat16,
`CodecRangeError` (a `TensorError`) for any magnitude above the dtype's
largest finite value (65504 and about 3.3895e38) instead of letting it
become infinite. Decoding untrusted tensors (`WireCodec.decode`,
`EncodedHidden`) raises `TensorError` unless `hidden` has the codec's dtype
and a ``(batch, seq, h)`` shape with every size at least 1, `scales` is
float32 of shape ``(batch, seq, n)`` as above, no code is -128, every
scale is +0.0 or a positive float32 no larger than `MAX_SCALE` (the scale
of a block holding FLT_MAX), and float hidden states are finite. Anything
that passes decodes to a finite float32 tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from potluck.errors import CodecRangeError, MessageError, TensorError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FLOAT32_CODEC",
    "INT8_ERROR_FACTOR",
    "MAX_BLOCK_SIZE",
    "MAX_SCALE",
    "MIN_BLOCK_SIZE",
    "WIRE_CODECS",
    "EncodedHidden",
    "WireCodec",
    "wire_bytes",
]

WIRE_CODECS: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8-block")
"""Names of the ways hidden states can travel."""
DEFAULT_BLOCK_SIZE = 64
MIN_BLOCK_SIZE = 16
MAX_BLOCK_SIZE = 4096
INT8_ERROR_FACTOR = 0.5 + 2.0**-16
"""Blockwise 8-bit decodes every element to within this many times its block's scale."""
MAX_SCALE = float.fromhex("0x1.020408p+121")
"""The largest scale: the smallest float32 >= FLT_MAX / 127 (about 2.6794e36)."""

_INT8 = "int8-block"
_FLOAT32_MAX = torch.finfo(torch.float32).max
_CODE_LIMIT = 127
_NONFINITE = "hidden states with NaN or infinity cannot be compressed"
_LABEL = re.compile(r"int8-block/([1-9][0-9]{0,3})")

_WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    _INT8: torch.int8,
}
_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Per float codec: unit roundoff u and the largest error in the subnormal
# range, so |x - x'| <= max(u * |x'|, floor); float32 is the identity.
_ROUNDING: dict[str, tuple[float, float]] = {
    "float32": (0.0, 0.0),
    "float16": (2.0**-11, 2.0**-25),
    "bfloat16": (2.0**-8, 2.0**-134),
}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class WireCodec:
    """How a session's hidden states travel: one of `WIRE_CODECS`.

    `block_size` is for ``int8-block`` only: a power of two from
    `MIN_BLOCK_SIZE` to `MAX_BLOCK_SIZE`, where 0 means `DEFAULT_BLOCK_SIZE`.
    The other codecs take 0. A bad name or size is a `MessageError`, as a
    codec is a session parameter that arrives in a message."""

    name: str = "float32"
    block_size: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in WIRE_CODECS:
            raise MessageError(f"codec must be one of {WIRE_CODECS}, got {_show(self.name)}")
        size = self.block_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise MessageError(f"block_size must be an integer, got {_show(size)}")
        if self.name != _INT8:
            if size != 0:
                raise MessageError(f"block_size is for {_INT8} only, got {size} for {self.name}")
        elif size == 0:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZE)
        elif not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size & (size - 1):
            raise MessageError(
                f"block_size must be a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], "
                f"got {size}"
            )

    @classmethod
    def from_label(cls, label: object) -> WireCodec:
        """The codec for its canonical `label`; `MessageError` for anything else."""
        if isinstance(label, str):
            if label in WIRE_CODECS and label != _INT8:
                return cls(label)
            match = _LABEL.fullmatch(label)
            if match is not None:
                return cls(_INT8, int(match.group(1)))
        raise MessageError(f"not a codec label: {_show(label)}")

    @classmethod
    def parse(cls, text: object) -> WireCodec:
        """A codec from what a user writes: a label, or ``int8-block`` alone for the
        default block size; `MessageError` for anything else."""
        if text == _INT8:
            return cls(_INT8)
        return cls.from_label(text)

    @property
    def label(self) -> str:
        """Canonical text: ``float32``, ``float16``, ``bfloat16`` or ``int8-block/<B>``."""
        return f"{_INT8}/{self.block_size}" if self.name == _INT8 else self.name

    @property
    def wire_dtype(self) -> torch.dtype:
        """The dtype of the `hidden` tensor on the wire (int8 codes for ``int8-block``)."""
        return _WIRE_DTYPES[self.name]

    def blocks(self, hidden: int) -> int:
        """Scales per token for hidden size `hidden`: ceil(hidden / B), or 0."""
        return -(-hidden // self.block_size) if self.name == _INT8 else 0

    def encode(self, hidden: torch.Tensor) -> EncodedHidden:
        """`hidden` (batch, seq, h) as it travels; `TensorError` if it cannot."""
        x = _input(hidden)  # (batch, seq, h) float32
        if self.name == _INT8:
            return self._encode_blocks(x)
        peak = _peak(x)
        wire = self.wire_dtype
        limit = torch.finfo(wire).max
        if peak > limit:
            raise CodecRangeError(
                f"hidden states of magnitude up to {peak:.6g} overflow {self.name} "
                f"(largest {limit:.6g})"
            )
        batch, seq, _ = x.shape
        scales = torch.empty((batch, seq, 0), dtype=torch.float32, device=x.device)
        return EncodedHidden(self, x.to(wire), scales)

    def _encode_blocks(self, x: torch.Tensor) -> EncodedHidden:
        batch, seq, hidden = x.shape
        size = self.block_size
        blocks = self.blocks(hidden)
        if blocks * size != hidden:
            x = torch.nn.functional.pad(x, (0, blocks * size - hidden))  # zeros: m unchanged
        grouped = x.reshape(batch, seq, blocks, size)
        low, high = torch.aminmax(grouped, dim=-1)  # NaN wherever a block holds one
        absmax = torch.maximum(-low, high).abs_()  # (batch, seq, blocks); +0.0, not -0.0
        if not bool(torch.isfinite(absmax).all()):
            raise TensorError(_NONFINITE)
        scales = _ceil_scales(absmax)
        divisor = torch.where(scales > 0, scales, 1.0).unsqueeze(-1)
        codes = (grouped / divisor).round_().to(torch.int8)  # |x / s| <= 127: no clamping
        codes = codes.reshape(batch, seq, blocks * size)[..., :hidden].contiguous()
        return EncodedHidden(self, codes, scales)

    def decode(self, hidden: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Float32 hidden states from the two tensors that travelled (untrusted).

        `TensorError` unless they are a valid encoding (see the module docstring)."""
        return EncodedHidden(self, hidden, scales).decode()


FLOAT32_CODEC = WireCodec("float32")
"""The default codec: hidden states travel as they are computed."""


def _ceil_scales(absmax: torch.Tensor) -> torch.Tensor:
    """Per block, the smallest float32 >= absmax / 127 (0 for 0)."""
    wide = absmax.to(torch.float64)
    # binary64 then float32 lands on one of the two float32s around absmax / 127 ...
    nearest = (wide / _CODE_LIMIT).to(torch.float32)
    # ... and s * 127 is exact in binary64 (24 + 7 bits), so this picks the upper one.
    low = nearest.to(torch.float64) * _CODE_LIMIT < wide
    upper = torch.nextafter(nearest, torch.full_like(nearest, math.inf))
    return torch.where(low, upper, nearest)


def _peak(x: torch.Tensor) -> float:
    """The largest magnitude in `x`; `TensorError` for NaN or infinity."""
    low, high = (float(value) for value in torch.aminmax(x))  # NaN if any element is NaN
    if not (math.isfinite(low) and math.isfinite(high)):
        raise TensorError(_NONFINITE)
    return max(-low, high)


def _input(hidden: object) -> torch.Tensor:
    """`hidden` as a detached float32 (batch, seq, h) tensor, every size >= 1."""
    if not isinstance(hidden, torch.Tensor):
        raise TensorError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dtype not in _INPUT_DTYPES:
        raise TensorError(f"hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    _check_shape("hidden", hidden)
    return hidden.detach().to(torch.float32)


def _check_shape(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 3 or min(tensor.shape) < 1:
        raise TensorError(
            f"{name} must have shape (batch, seq, hidden), sizes >= 1, got {list(tensor.shape)}"
        )


@dataclass(frozen=True, eq=False)
class EncodedHidden:
    """Hidden states as they travel under `codec`: `hidden` and `scales`.

    Checks itself on construction (`TensorError`), so an instance always
    decodes to a finite float32 tensor."""

    codec: WireCodec
    hidden: torch.Tensor  # (batch, seq, h): the codec's wire dtype
    scales: torch.Tensor  # (batch, seq, codec.blocks(h)): float32

    def __post_init__(self) -> None:
        if not isinstance(self.codec, WireCodec):
            raise TensorError(f"codec must be a WireCodec, got {type(self.codec).__name__}")
        hidden, scales = self.hidden, self.scales
        for name, value in (("hidden", hidden), ("scales", scales)):
            if not isinstance(value, torch.Tensor):
                raise TensorError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if hidden.dtype != self.codec.wire_dtype:
            raise TensorError(
                f"{self.codec.label} hidden must be {self.codec.wire_dtype}, got {hidden.dtype}"
            )
        _check_shape("hidden", hidden)
        batch, seq, size = hidden.shape
        expected = (batch, seq, self.codec.blocks(size))
        if scales.dtype != torch.float32 or tuple(scales.shape) != expected:
            raise TensorError(
                f"{self.codec.label} scales must be float32 of shape {list(expected)}, "
                f"got {scales.dtype} of shape {list(scales.shape)}"
            )
        if scales.device != hidden.device:
            raise TensorError(f"scales on {scales.device} but hidden on {hidden.device}")
        if self.codec.name == _INT8:
            if int(hidden.amin()) < -_CODE_LIMIT:
                raise TensorError("int8-block codes must be in [-127, 127], got -128")
            valid = (scales >= 0) & (scales <= MAX_SCALE) & ~torch.signbit(scales)  # NaN fails
            if not bool(valid.all()):
                raise TensorError(f"scales must be +0 or positive finite floats <= {MAX_SCALE}")
        else:
            low, high = torch.aminmax(hidden)  # NaN if any element is NaN
            if not (math.isfinite(float(low)) and math.isfinite(float(high))):
                raise TensorError(f"{self.codec.label} hidden states must be finite")

    def decode(self) -> torch.Tensor:
        """The float32 hidden states (batch, seq, h); may share memory with `hidden`."""
        if self.codec.name != _INT8:
            return self.hidden.to(torch.float32)
        batch, seq, size = self.hidden.shape
        blocks = self.scales.shape[-1]
        codes = self.hidden.to(torch.float32)
        if blocks * self.codec.block_size != size:
            codes = torch.nn.functional.pad(codes, (0, blocks * self.codec.block_size - size))
        grouped = codes.reshape(batch, seq, blocks, self.codec.block_size)
        decoded = (grouped * self.scales.unsqueeze(-1)).reshape(batch, seq, -1)[..., :size]
        if float(self.scales.amax()) * _CODE_LIMIT > _FLOAT32_MAX:  # exact in binary64
            decoded = decoded.clamp(-_FLOAT32_MAX, _FLOAT32_MAX)
        return decoded.contiguous()

    def error_bound(self) -> torch.Tensor:
        """Per element, a float64 bound on |x - decode()| for any `x` that encodes to this."""
        if self.codec.name == _INT8:
            return self._per_element(self.scales.to(torch.float64)) * INT8_ERROR_FACTOR
        unit, floor = _ROUNDING[self.codec.name]
        return (self.hidden.to(torch.float64).abs() * unit).clamp_(min=floor)

    def _per_element(self, per_block: torch.Tensor) -> torch.Tensor:
        """`per_block` (batch, seq, blocks) repeated over each block's elements."""
        size = self.hidden.shape[-1]
        return per_block.repeat_interleave(self.codec.block_size, dim=-1)[..., :size]


def wire_bytes(codec: WireCodec, hidden: int, tokens: int = 1) -> int:
    """Tensor bytes for `tokens` tokens (batch x seq) of hidden size `hidden` under `codec`.

    Counts the `hidden` and `scales` tensors' data, not the message header."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be an integer >= 1, got {_show(hidden)}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0, got {_show(tokens)}")
    element = torch.empty((), dtype=codec.wire_dtype).element_size()
    return tokens * (hidden * element + 4 * codec.blocks(hidden))
