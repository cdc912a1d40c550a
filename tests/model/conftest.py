"""Fixtures for model tests: tiny random checkpoints, and SmolLM2 prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from potluck.model import prepare_smollm2
from potluck.testing.models import make_tiny_llama

# mistral slides one window over every layer, qwen2 over its upper half: a
# window of 8 is crossed during the tests' prefill + 20 decode steps.
TINY_WINDOWS = {"llama": None, "mistral": 8, "qwen2": 8}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints by name: one per architecture, plus "llama-wide", whose wide
    initialisation makes greedy tokens vary from step to step."""
    root = tmp_path_factory.mktemp("tiny-models")
    models = {
        arch: make_tiny_llama(root / arch, arch=arch, sliding_window=window)
        for arch, window in TINY_WINDOWS.items()
    }
    models["llama-wide"] = make_tiny_llama(root / "llama-wide", seed=3, initializer_range=0.5)
    return models


@pytest.fixture
def tiny_llama(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache directory, independent of POTLUCK_HOME, holding prepared SmolLM2."""
    cache = tmp_path_factory.mktemp("potluck-models")
    prepare_smollm2(cache, progress=False)
    return cache
