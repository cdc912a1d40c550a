"""Tiny random-initialised Llama-family checkpoints for tests (no download, ~1 MB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from potluck.errors import ConfigError

__all__ = ["TINY_ARCHITECTURES", "make_tiny_llama"]

TINY_ARCHITECTURES = ("llama", "mistral", "qwen2")

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 384,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def make_tiny_llama(
    path: Path,
    *,
    num_layers: int = 6,
    arch: str = "llama",
    seed: int = 0,
    sliding_window: int | None = None,
    initializer_range: float = 0.02,
) -> Path:
    """Save a tiny random fp32 model (config.json + model.safetensors) to `path`.

    hidden 64, 4 heads / 2 KV heads, vocab 384. The llama variant ties its LM
    head to the embeddings like SmolLM2; mistral and qwen2 keep them separate
    (qwen2 also has q/k/v biases). `sliding_window` gives mistral a window on
    every layer and qwen2 a window on its upper half of layers. A wider
    `initializer_range` (e.g. 0.5) makes greedy outputs vary from token to token.
    """
    config: Any
    if arch == "llama":
        config = LlamaConfig(num_hidden_layers=num_layers, tie_word_embeddings=True, **_COMMON)
    elif arch == "mistral":
        config = MistralConfig(
            num_hidden_layers=num_layers,
            tie_word_embeddings=False,
            sliding_window=sliding_window,
            **_COMMON,
        )
    elif arch == "qwen2":
        config = Qwen2Config(
            num_hidden_layers=num_layers,
            tie_word_embeddings=False,
            use_sliding_window=sliding_window is not None,
            sliding_window=sliding_window,
            max_window_layers=num_layers // 2,
            **_COMMON,
        )
    else:
        raise ConfigError(f"unknown tiny architecture {arch!r}; use one of {TINY_ARCHITECTURES}")
    config.initializer_range = initializer_range
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    return path
