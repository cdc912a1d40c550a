"""Quantised decoder blocks, so that a small machine can serve more of a model.

A server started with ``--quant`` replaces the linear layers of the blocks it
serves (attention q/k/v/o and MLP gate/up/down) after loading them; norms,
embeddings and the LM head stay in float. The modes:

``none``
    the checkpoint's weights in the span's dtype.
``int8``
    bitsandbytes ``Linear8bitLt`` (LLM.int8() without outlier decomposition):
    weights int8 with one scale per output row; each token's activations are
    quantised to int8 with their own scale, multiplied in int32 and rescaled.
``nf4``
    bitsandbytes ``Linear4bit`` with NormalFloat4 weights, one scale per 64
    weights, computed in the span's dtype.
``dynamic-int8``
    torch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``,
    fbgemm): int8 weights with one scale per output row, activations quantised
    per call (one scale for the whole call's tokens). Float32 spans only.

Quantisation is deterministic: the same weights and mode give bit-identical
weights, and the same calls give bit-identical outputs run to run (measured on
SmolLM2 spans: also at 1 and 2 torch threads). So a checker on the same kind
of CPU that replays a server's calls in the same mode (the prefill, then one
token per call) matches it exactly. A checker that recomputes the history in
one forward does not: float noise in attention flips int8 and bfloat16
roundings (int8: up to 0.17 relative error per row; nf4: 0.023), and
``dynamic-int8`` quantises each call's activations with one scale, so its rows
depend on the call's other rows (1.5). Against float32 the honest error is
large (0.38, 1.0, 1.2). See docs/benchmarks.md, "Quantisation".

Kernels differ between CPUs, and so do results. On a CPU with AVX512-BF16,
bitsandbytes computes ``nf4`` with a fused kernel in bfloat16 (activations and
block scales rounded to bfloat16) that takes weights whose output size is a
multiple of 32 and input size a multiple of 64; any other layer (and every
layer on other CPUs) runs the generic kernel, which dequantises the weights
and multiplies in the span's dtype (compiled with ``torch.compile`` on first
use, and slower than float32 at batch 1). The choice depends only on the
layer's shape and the CPU, so servers and checkers on the same kind of CPU
make it the same way.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from potluck.errors import ConfigError, ModelError
from potluck.wire.messages import QUANT_MODES

if TYPE_CHECKING:
    from potluck.model.span import BlockSpan

__all__ = [
    "QUANT_BITS",
    "QUANT_MODES",
    "check_quant",
    "float_linears",
    "quant_within",
    "quantize_blocks",
    "quantize_span",
    "weight_bytes",
]

QUANT_BITS: dict[str, int] = {"none": 32, "int8": 8, "dynamic-int8": 8, "nf4": 4}
"""Bits per linear weight of each mode: how far it is from the model's own weights.
A client's `quant=` limit allows the modes with at least as many bits."""

_BNB_MODES = ("int8", "nf4")
_NF4_BLOCK = 64  # weights per nf4 scale
_PACKED_NF4_ROWS = 32  # the AVX512-BF16 nf4 kernel's output-size granularity
_BNB_CAST_WARNING = "inputs will be cast from"


def check_quant(mode: str) -> str:
    """`mode` if it is one of `QUANT_MODES`; ConfigError otherwise."""
    if mode not in QUANT_MODES:
        raise ConfigError(f"unknown quantisation {mode!r}; use one of {', '.join(QUANT_MODES)}")
    return mode


def quant_within(mode: str, limit: str) -> bool:
    """Whether weights quantised as `mode` are allowed by a client's limit `limit`
    (``"none"``: unquantised only; ``"int8"``: also int8 and dynamic-int8; ``"nf4"``: any)."""
    return QUANT_BITS[check_quant(mode)] >= QUANT_BITS[check_quant(limit)]


def quantize_span(span: BlockSpan, mode: str) -> None:
    """Quantise `span`'s blocks in place (see `quantize_blocks`) and record the mode."""
    if span.quant != "none" and mode != "none":
        raise ConfigError(f"{span} is already quantised ({span.quant})")
    quantize_blocks(span.layers, mode)
    span.quant = mode


def quantize_blocks(layers: Iterable[nn.Module], mode: str) -> None:
    """Replace the ``nn.Linear`` layers inside each decoder layer of `layers`, in place.

    Norms and anything else that is not an ``nn.Linear`` stay as they are. The
    layers must be on the CPU, in eval mode and hold real (not meta) weights;
    ``none`` changes nothing. ConfigError for an unknown mode or a dtype the
    mode cannot run; ModelError if bitsandbytes is needed and missing.
    """
    check_quant(mode)
    if mode == "none":
        return
    blocks = list(layers)
    dtype = _float_dtype(blocks)
    if mode == "dynamic-int8" and dtype != torch.float32:
        raise ConfigError(f"--quant dynamic-int8 runs float32 blocks only, not {dtype}")
    bnb = _bitsandbytes() if mode in _BNB_MODES else None
    for block in blocks:
        for name, linear in _linears(block):
            if linear.weight.is_meta or linear.weight.device.type != "cpu":
                raise ModelError(f"{name} must hold CPU weights before quantisation")
            if mode == "int8":
                new = _bnb_int8(bnb, linear)
            elif mode == "nf4":
                new = _bnb_nf4(bnb, linear, dtype)
            else:
                new = _dynamic_int8(linear)
            _replace(block, name, new)
        _own_memory(block)


def float_linears(module: nn.Module) -> list[str]:
    """Names of the plain ``nn.Linear`` layers left in `module` (all of them unquantised)."""
    return [name for name, m in module.named_modules() if type(m) is nn.Linear]


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every weight `module` holds, quantised or not.

    Counts parameters and buffers, bitsandbytes' scales (int8 row scales, nf4
    block scales) and the int8 weights and bias that torch's dynamic linear
    layers keep outside their parameters; a tensor shared twice is counted once.
    """
    packed_params = _packed_params_type()
    seen: dict[tuple[int, int], torch.Tensor] = {}  # holds unpacked copies alive while counting

    def add(tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            return
        if tensor.is_quantized:  # int8 values, plus per-channel scales and zero points
            if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                add(tensor.q_per_channel_scales())
                add(tensor.q_per_channel_zero_points())
            seen[tensor.data_ptr(), tensor.untyped_storage().nbytes()] = tensor
        else:
            seen[tensor.data_ptr(), tensor.nbytes] = tensor

    for m in module.modules():
        for tensor in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            add(tensor)
        state = getattr(m, "state", None)  # Linear8bitLt: row scales once it has run
        for holder in (m.weight if isinstance(m, nn.Linear) else None, state):
            add(getattr(holder, "CB", None))
            add(getattr(holder, "SCB", None))
        quant_state = getattr(getattr(m, "weight", None), "quant_state", None)
        if quant_state is not None:  # Linear4bit: block scales (and their own, if nested)
            add(quant_state.absmax)
            add(getattr(getattr(quant_state, "state2", None), "absmax", None))
        if packed_params is not None and isinstance(m, packed_params):  # torch dynamic int8
            for tensor in cast(Any, m)._weight_bias():
                add(tensor)
    return sum(nbytes for _, nbytes in seen)


# -- the three quantisers ---------------------------------------------------------


def _bnb_int8(bnb: Any, linear: nn.Linear) -> nn.Module:
    """A Linear8bitLt holding `linear`'s weights as int8 rows (quantised here, on the CPU).

    No outlier threshold: every activation column goes through int8, so a
    token's output depends on that token's row alone (not on the other rows of
    the call), which keeps a checker's recomputation close to the server's.
    """
    new: nn.Module = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=0.0,
        device="meta",
    )
    params = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    new.weight = params.to("cpu")  # quantises: int8 (out, in) and float32 row scales (out,)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    new.eval()
    return new


def _bnb_nf4(bnb: Any, linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
    """A Linear4bit holding `linear`'s weights as nf4, computing in `dtype`."""
    out_features, in_features = linear.out_features, linear.in_features
    new = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=linear.bias is not None,
        compute_dtype=dtype,
        compress_statistics=False,
        quant_type="nf4",
        device="meta",
    )
    params = bnb.nn.Params4bit(
        linear.weight.data,
        requires_grad=False,
        compress_statistics=False,
        quant_type="nf4",
        blocksize=_NF4_BLOCK,
        module=new,
    )
    new.weight = params.to("cpu")  # quantises: packed nibbles and float32 block scales
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    if out_features % _PACKED_NF4_ROWS or in_features % _NF4_BLOCK:
        # the fused kernel takes (multiple of 32, multiple of 64) weights only
        new.support_avx512bf16_for_cpu = False
    new.eval()
    with torch.inference_mode():
        # a first call repacks the weights for the fused CPU kernel where it applies,
        # so that memory and speed are settled before the span serves anyone
        new(torch.zeros(1, in_features, dtype=dtype))
    return cast(nn.Module, new)


def _dynamic_int8(linear: nn.Linear) -> nn.Module:
    """torch's dynamic int8 linear layer (fbgemm) for `linear`, per-channel weight scales."""
    try:  # deprecated since torch 2.10 in favour of torchao, still in 2.13
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig
    except ImportError as exc:
        raise ModelError(f"--quant dynamic-int8 needs torch.ao.quantization: {exc}") from exc

    linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        new: nn.Module = DynamicLinear.from_float(linear)  # type: ignore[no-untyped-call]
    del linear.qconfig
    return new


# -- helpers ------------------------------------------------------------------------


def _packed_params_type() -> type[nn.Module] | None:
    """The module class holding a torch dynamic quantised Linear's weights, if torch has it."""
    try:
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams
    except ImportError:
        return None
    return LinearPackedParams


def _linears(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in block.named_modules() if type(m) is nn.Linear]


def _replace(block: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = block.get_submodule(parent_name) if parent_name else block
    setattr(parent, child, new)


def _own_memory(block: nn.Module) -> None:
    """Copy the float weights left in `block` (norms, biases) out of the checkpoint file.

    A checkpoint's tensors can be views of its memory-mapped file: one survivor
    keeps the whole mapping, and every page that quantisation read, resident.
    """
    for module in block.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point():
                setattr(module, name, nn.Parameter(param.detach().clone(), requires_grad=False))


def _float_dtype(blocks: list[nn.Module]) -> torch.dtype:
    """The one float dtype the blocks' weights are in; ConfigError if there is not one."""
    dtypes = {p.dtype for b in blocks for p in b.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        names = ", ".join(sorted(map(str, dtypes))) or "no float dtype"
        raise ConfigError(f"cannot quantise blocks whose float weights are in {names}")
    (dtype,) = dtypes
    if dtype not in (torch.float32, torch.bfloat16):
        raise ConfigError(f"quantised blocks compute in float32 or bfloat16, not {dtype}")
    return dtype


class _DropCastWarning(logging.Filter):
    """bitsandbytes logs a warning on every int8 call whose input is not float16."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _BNB_CAST_WARNING not in record.getMessage()


def _bitsandbytes() -> Any:
    """The bitsandbytes module, imported quietly; ModelError if it is not installed."""
    logger = logging.getLogger("bitsandbytes")
    previous = logger.level
    logger.setLevel(logging.ERROR)  # it warns at import that an optional CPU kernel is missing
    try:
        import bitsandbytes
    except (ImportError, OSError, RuntimeError) as exc:  # missing, or its library broken
        raise ModelError(
            "--quant int8 and nf4 need bitsandbytes: pip install bitsandbytes==0.50.2"
        ) from exc
    finally:
        logger.setLevel(previous)
    functions = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastWarning) for f in functions.filters):
        functions.addFilter(_DropCastWarning())
    return bitsandbytes
