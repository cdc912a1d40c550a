"""The client's share of a model: token embeddings, the final norm and the LM head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from potluck.errors import ModelError
from potluck.model.checkpoint import TensorIndex, architecture, load_config, load_module_weights

__all__ = ["ClientHead"]


class ClientHead:
    """Embeddings in, logits out: everything of the model except its decoder blocks."""

    def __init__(
        self,
        config: PreTrainedConfig,
        embed_weight: torch.Tensor,
        norm: nn.Module,
        lm_head_weight: torch.Tensor,
    ) -> None:
        shape = (config.vocab_size, config.hidden_size)
        for name, weight in (("embeddings", embed_weight), ("LM head", lm_head_weight)):
            if tuple(weight.shape) != shape:
                raise ModelError(f"{name} have shape {tuple(weight.shape)}, expected {shape}")
        self.config = config
        self.embed_weight = embed_weight  # (vocab, hidden)
        self.norm = norm
        self.lm_head_weight = lm_head_weight  # (vocab, hidden), the same tensor when tied

    @classmethod
    def load(cls, path: Path | str, *, dtype: torch.dtype = torch.float32) -> ClientHead:
        """The head of the checkpoint at `path`, reading only its three tensors."""
        folder = Path(path)
        config = load_config(folder)
        index = TensorIndex(folder)
        embed_name = f"{index.prefix}embed_tokens.weight"
        norm_name = f"{index.prefix}norm.weight"
        tied = bool(getattr(config, "tie_word_embeddings", False))
        names = [embed_name, norm_name]
        if not tied:
            if "lm_head.weight" not in index:
                raise ModelError(f"{folder} has untied embeddings but no lm_head.weight")
            names.append("lm_head.weight")
        tensors = index.read(names, dtype=dtype)
        with torch.device("meta"):
            norm = architecture(config).norm(config.hidden_size, eps=config.rms_norm_eps)
        load_module_weights(norm, {"weight": tensors[norm_name]}, where=f"{folder} final norm")
        embed = tensors[embed_name]
        return cls(config, embed, norm, embed if tied else tensors["lm_head.weight"])

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_weight.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the head's weights (a tied LM head counted once)."""
        tensors = {id(t): t for t in (self.embed_weight, self.lm_head_weight)}
        tensors.update({id(p): p for p in self.norm.parameters()})
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: (batch, seq) token ids -> (batch, seq, hidden) hidden states."""
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise ModelError(
                f"input_ids must be a (batch, seq) integer tensor, "
                f"got {tuple(input_ids.shape)} {input_ids.dtype}"
            )
        vocab = self.config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ModelError(f"token ids must lie in [0, {vocab})")
        with torch.inference_mode():
            return F.embedding(input_ids, self.embed_weight)  # (batch, seq, hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, seq, hidden) from the last block -> (batch, seq, vocab) logits."""
        if hidden.ndim != 3 or hidden.shape[-1] != self.config.hidden_size:
            raise ModelError(
                f"hidden states must be (batch, seq, {self.config.hidden_size}), "
                f"got {tuple(hidden.shape)}"
            )
        with torch.inference_mode():
            normed = self.norm(hidden)  # (batch, seq, hidden)
            return F.linear(normed, self.lm_head_weight)  # (batch, seq, vocab)

    def __repr__(self) -> str:
        return f"ClientHead({self.config.model_type}, vocab={self.config.vocab_size}, {self.dtype})"
