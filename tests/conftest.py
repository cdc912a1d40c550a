"""Shared fixtures: tiny checkpoints and real node processes on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-block random Llama whose greedy output varies (wide initialisation)."""
    from potluck.testing.models import make_tiny_llama

    return make_tiny_llama(
        tmp_path_factory.mktemp("tiny") / "llama6", num_layers=6, seed=3, initializer_range=0.5
    )


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2 prepared in the user's cache (converted from the bundled GGUF once)."""
    from potluck.model import resolve_model

    return resolve_model("smollm2")
