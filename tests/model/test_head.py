"""ClientHead: the full model's embeddings, final norm and LM head, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from potluck.errors import ModelError
from potluck.model import ClientHead
from tests.model.helpers import load_full


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_head_matches_the_full_model(tiny_models: dict[str, Path], arch: str) -> None:
    full = load_full(tiny_models[arch])
    head = ClientHead.load(tiny_models[arch])
    ids = torch.randint(0, 384, (2, 9))
    hidden = torch.randn(2, 9, 64)
    with torch.no_grad():
        assert torch.equal(head.embed(ids), full.model.embed_tokens(ids))
        assert torch.equal(head.logits(hidden), full.lm_head(full.model.norm(hidden)))
    assert head.config.model_type == arch


def test_tied_head_shares_the_embeddings(tiny_models: dict[str, Path]) -> None:
    tied = ClientHead.load(tiny_models["llama"])
    assert tied.lm_head_weight is tied.embed_weight
    assert tied.nbytes == (384 * 64 + 64) * 4
    untied = ClientHead.load(tiny_models["mistral"])
    assert not torch.equal(untied.lm_head_weight, untied.embed_weight)
    assert untied.nbytes == (2 * 384 * 64 + 64) * 4


def test_head_loads_in_bfloat16(tiny_llama: Path) -> None:
    head = ClientHead.load(tiny_llama, dtype=torch.bfloat16)
    hidden = head.embed(torch.tensor([[1, 2, 3]]))
    assert hidden.dtype == torch.bfloat16
    assert head.logits(hidden).dtype == torch.bfloat16


def test_bad_inputs_raise_model_error(tiny_llama: Path) -> None:
    head = ClientHead.load(tiny_llama)
    with pytest.raises(ModelError, match=r"token ids must lie in \[0, 384\)"):
        head.embed(torch.tensor([[1, 384]]))
    with pytest.raises(ModelError, match=r"token ids must lie"):
        head.embed(torch.tensor([[-1]]))
    with pytest.raises(ModelError, match="integer tensor"):
        head.embed(torch.tensor([[1.0]]))
    with pytest.raises(ModelError, match="integer tensor"):
        head.embed(torch.tensor([1, 2]))
    with pytest.raises(ModelError, match="hidden states must be"):
        head.logits(torch.zeros(1, 2, 32))
