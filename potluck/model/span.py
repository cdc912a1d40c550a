"""A contiguous slice of a model's decoder blocks, runnable on its own.

A server holds a `BlockSpan` for blocks ``[start, end)``; chaining spans that
cover ``[0, n)`` between a client's `ClientHead.embed` and `ClientHead.logits`
reproduces the full model's logits exactly. Each layer keeps its global layer
index, so a span's `SpanCache` is indexed like the full model's cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from potluck.errors import ModelError, SpanError
from potluck.model.checkpoint import (
    TensorIndex,
    architecture,
    load_config,
    load_module_weights,
    num_blocks,
)
from potluck.model.quant import check_quant, quantize_blocks, weight_bytes

__all__ = ["BlockSpan", "SpanCache"]

_FULL = "full_attention"
_SLIDING = "sliding_attention"
_MASKS: dict[str, Callable[..., Any]] = {
    _FULL: create_causal_mask,
    _SLIDING: create_sliding_window_causal_mask,
}


def check_span(start: int, end: int, first: int, last: int, *, what: str) -> None:
    """SpanError unless ``[start, end)`` is a non-empty range inside ``[first, last)``."""
    if not (first <= start < end <= last):
        raise SpanError(
            f"blocks [{start}, {end}) are not a non-empty range inside {what} [{first}, {last})"
        )


class BlockSpan:
    """Decoder blocks ``[start, end)`` of a model, with their own rotary embedding."""

    def __init__(
        self,
        config: PreTrainedConfig,
        start: int,
        end: int,
        layers: nn.ModuleList,
        rotary_emb: nn.Module,
    ) -> None:
        check_span(start, end, 0, num_blocks(config), what="the model's blocks")
        if len(layers) != end - start:
            raise SpanError(f"blocks [{start}, {end}) need {end - start} layers, got {len(layers)}")
        self.config = config
        self.start = start
        self.end = end
        self.layers = layers
        self.rotary_emb = rotary_emb
        self.quant = "none"  # a QUANT_MODES value, set by `load` or `quantize_span`
        self._layer_types = _layer_types(config)

    @classmethod
    def load(
        cls,
        path: Path | str,
        start: int,
        end: int,
        *,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
        quant: str = "none",
    ) -> BlockSpan:
        """Blocks ``[start, end)`` of the checkpoint at `path`, reading only their tensors,
        quantised as `quant` says (`potluck.model.quant.QUANT_MODES`)."""
        folder = Path(path)
        check_quant(quant)
        config = load_config(folder)
        check_span(start, end, 0, num_blocks(config), what=f"the blocks of {folder}")
        config._attn_implementation = attn_implementation
        arch = architecture(config)
        index = TensorIndex(folder)
        layers = nn.ModuleList()
        for idx in range(start, end):
            with torch.device("meta"):
                layer = arch.decoder_layer(config, layer_idx=idx)
            prefix = f"{index.prefix}layers.{idx}."
            names = list(layer.state_dict())
            tensors = index.read([prefix + n for n in names], dtype=dtype)
            load_module_weights(
                layer,
                {n: tensors[prefix + n] for n in names},
                where=f"{folder} block {idx}",
            )
            quantize_blocks([layer], quant)  # now: the whole span is never resident in float
            layers.append(layer)
        rotary_emb = arch.rotary_embedding(config=config)
        rotary_emb.eval()
        span = cls(config, start, end, layers, rotary_emb)
        span.quant = quant
        return span

    @property
    def dtype(self) -> torch.dtype:
        # the first float weight: a quantised span's linear weights are int8 or packed nf4
        return next(p for p in self.layers.parameters() if p.is_floating_point()).dtype

    @property
    def compute_dtype(self) -> str:
        """`dtype` as commitments name it: "float32" or "bfloat16"."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def nbytes(self) -> int:
        """Bytes held by the span's weights (quantised ones and their scales included)."""
        return weight_bytes(self.layers)

    def new_cache(self) -> SpanCache:
        """An empty KV cache for one inference session on this span."""
        return SpanCache(self)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: SpanCache | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> torch.Tensor:
        """Run blocks ``[start, end)`` (default: the whole span) over `hidden`.

        hidden: (batch, seq, hidden). With a `cache`, the tokens continue the
        cached sequence (prefill or decode) and the cache grows; without one,
        they are a whole sequence starting at position 0.
        """
        lo = self.start if start is None else start
        hi = self.end if end is None else end
        check_span(lo, hi, self.start, self.end, what="this span's blocks")
        self._check_hidden(hidden)
        batch, seq, _ = hidden.shape
        with torch.inference_mode():
            past: DynamicCache | None = None
            offset = 0
            if cache is not None:
                cache.bind(self, lo, hi, batch)
                past = cache.dynamic_cache
                offset = past.get_seq_length(lo)  # the first layer's length, never layer 0's
            position_ids = torch.arange(offset, offset + seq, device=hidden.device).unsqueeze(0)
            # (1, seq) positions; cos, sin: (1, seq, head_dim)
            position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
            masks = self._masks(hidden, past, position_ids, lo, hi)
            for idx in range(lo, hi):
                hidden = self.layers[idx - self.start](
                    hidden,
                    attention_mask=masks[self._layer_types[idx]],
                    position_ids=position_ids,
                    past_key_values=past,
                    use_cache=past is not None,
                    position_embeddings=position_embeddings,
                )  # (batch, seq, hidden)
            if cache is not None:
                cache.advance(seq)
        return hidden

    __call__ = forward

    def replay(
        self,
        hidden: torch.Tensor,
        steps: Sequence[int],
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> torch.Tensor:
        """Blocks ``[start, end)`` over `hidden` as a session of `steps` would run them:
        one `forward` per step (``steps[k]`` tokens each) into a fresh cache, outputs
        concatenated. hidden: (batch, sum(steps), hidden).

        Quantised blocks give bit-identical rows only to the same calls, which is
        why a check of a quantised server replays its steps
        (`potluck.verify.fingerprint`)."""
        if sum(steps) != hidden.shape[1] or any(n < 1 for n in steps):
            raise SpanError(f"steps {list(steps)[:8]} do not cut {hidden.shape[1]} tokens")
        cache = self.new_cache()
        parts, at = [], 0
        for n in steps:
            parts.append(self.forward(hidden[:, at : at + n], cache, start=start, end=end))
            at += n
        return torch.cat(parts, dim=1)

    def _masks(
        self,
        hidden: torch.Tensor,
        past: DynamicCache | None,
        position_ids: torch.Tensor,
        lo: int,
        hi: int,
    ) -> dict[str, Any]:
        """One attention mask per layer type in ``[lo, hi)``, sized by its first layer's cache."""
        masks: dict[str, Any] = {}
        for idx in range(lo, hi):
            kind = self._layer_types[idx]
            if kind not in masks:
                masks[kind] = _MASKS[kind](
                    config=self.config,
                    inputs_embeds=hidden,
                    attention_mask=None,
                    past_key_values=past,
                    position_ids=position_ids,
                    layer_idx=idx,
                )
        return masks

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        if hidden.ndim != 3 or hidden.shape[1] == 0 or hidden.shape[2] != self.config.hidden_size:
            raise ModelError(
                f"hidden states must be (batch, seq>0, {self.config.hidden_size}), "
                f"got {tuple(hidden.shape)}"
            )
        if hidden.dtype != self.dtype:
            raise ModelError(f"hidden states are {hidden.dtype}, the span runs in {self.dtype}")

    def __repr__(self) -> str:
        return f"BlockSpan({self.config.model_type}, [{self.start}, {self.end}), {self.dtype})"


class SpanCache:
    """The keys and values one inference session has stored on a span.

    A cache is tied to the span that made it and to the block range and batch
    size of its first forward; using it otherwise raises.
    """

    def __init__(self, span: BlockSpan) -> None:
        self._span = span
        self.dynamic_cache = DynamicCache(config=span.config)
        self._range: tuple[int, int] | None = None
        self._batch: int | None = None
        self._length = 0

    @property
    def length(self) -> int:
        """How many tokens the cache holds (its sequence position)."""
        return self._length

    @property
    def block_range(self) -> tuple[int, int] | None:
        """The ``[start, end)`` blocks the cache serves, or None before its first use."""
        return self._range

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        total = 0
        for layer in self.dynamic_cache.layers:
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def bind(self, span: BlockSpan, start: int, end: int, batch: int) -> None:
        """Tie the cache to `span`'s blocks ``[start, end)`` on first use; check it later."""
        if span is not self._span:
            raise SpanError("this cache belongs to another span")
        if self._range is not None and self._range != (start, end):
            raise SpanError(
                f"this cache serves blocks [{self._range[0]}, {self._range[1]}), "
                f"not [{start}, {end})"
            )
        if self._batch is not None and self._batch != batch:
            raise ModelError(f"this cache holds a batch of {self._batch}, not {batch}")
        self._range = (start, end)
        self._batch = batch

    def advance(self, tokens: int) -> None:
        self._length += tokens

    def __repr__(self) -> str:
        return f"SpanCache(blocks={self._range}, length={self._length})"


def _layer_types(config: PreTrainedConfig) -> list[str]:
    """Each layer's attention kind, as the model's own forward chooses its mask."""
    n = num_blocks(config)
    declared = getattr(config, "layer_types", None)
    if declared is not None:
        kinds = [str(k) for k in declared]
    elif getattr(config, "sliding_window", None) is not None:  # Mistral: one window for all
        kinds = [_SLIDING] * n
    else:
        kinds = [_FULL] * n
    if len(kinds) != n or any(k not in _MASKS for k in kinds):
        raise ModelError(f"unsupported layer types {kinds}")
    return kinds
