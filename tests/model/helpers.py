"""Greedy decoding through a full transformers model and through chained spans."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from potluck.model import BlockSpan, ClientHead

Run = tuple[list[torch.Tensor], torch.Tensor]
"""The logits of every step (prefill first) and the greedy tokens, (batch, steps)."""


def load_full(path: Path, dtype: torch.dtype = torch.float32) -> Any:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return model.eval()


def load_chain(
    path: Path, cuts: Sequence[int], dtype: torch.dtype = torch.float32
) -> tuple[ClientHead, list[BlockSpan]]:
    """The head and spans [cuts[0], cuts[1]), [cuts[1], cuts[2]), ..."""
    head = ClientHead.load(path, dtype=dtype)
    spans = [BlockSpan.load(path, a, b, dtype=dtype) for a, b in itertools.pairwise(cuts)]
    return head, spans


def greedy_full(model: Any, input_ids: torch.Tensor, steps: int) -> Run:
    cache = DynamicCache(config=model.config)
    logits: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    current = input_ids
    with torch.no_grad():
        for _ in range(steps + 1):
            out = model(input_ids=current, past_key_values=cache, use_cache=True).logits
            logits.append(out)
            current = out[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
            tokens.append(current)
    return logits, torch.cat(tokens, dim=1)


def greedy_chain(
    head: ClientHead, spans: Sequence[BlockSpan], input_ids: torch.Tensor, steps: int
) -> Run:
    caches = [span.new_cache() for span in spans]
    logits: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    current = input_ids
    for _ in range(steps + 1):
        hidden = head.embed(current)
        for span, cache in zip(spans, caches, strict=True):
            hidden = span.forward(hidden, cache)
        out = head.logits(hidden)
        logits.append(out)
        current = out[:, -1].argmax(-1, keepdim=True)
        tokens.append(current)
    return logits, torch.cat(tokens, dim=1)


def max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))
