"""Reading a checkpoint folder: its config, its identity and only the tensors a part needs.

A checkpoint is an ordinary transformers folder: ``config.json`` plus either
``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
Nothing here reaches a model hub.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from potluck.errors import ModelError

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "load_config",
    "model_identity",
    "num_blocks",
]

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
"""``model_type`` values whose decoder layers Potluck can run (all Llama-family)."""

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_IDENTITY_FILE = ".potluck-identity.json"
_IDENTITY_CHUNK = 1 << 20


def load_config(path: Path | str) -> PreTrainedConfig:
    """The config of the checkpoint folder at `path`; ModelError unless Llama-family."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json; it is not a model folder")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config of {folder}: {exc}") from exc
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ModelError(
            f"{folder} holds a {model_type!r} model; Potluck runs Llama-family models only "
            f"({supported})"
        )
    return config


def num_blocks(config: PreTrainedConfig) -> int:
    """How many decoder blocks (transformer layers) the model has."""
    return int(config.num_hidden_layers)


def block_weight_bytes(config: PreTrainedConfig, dtype: torch.dtype) -> int:
    """Weight bytes of one decoder block in `dtype`, from the config alone (attention,
    MLP and the two norms; biases, where a model has them, are left out)."""
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv
    mlp = 3 * hidden * int(config.intermediate_size)
    return (attention + mlp + 2 * hidden) * torch.finfo(dtype).bits // 8


def model_identity(path: Path | str) -> str:
    """A sha256 hex digest naming the exact weights of the checkpoint at `path`.

    The digest covers ``config.json`` and then every weight file in name order;
    each file contributes its name, its size as 8 little-endian bytes and its
    bytes. The result is cached in ``.potluck-identity.json`` next to them,
    keyed by each file's size and mtime, so later calls only ``stat`` the files.
    """
    folder = Path(path)
    files = [folder / "config.json", *_weight_files(folder)]
    try:
        stamps = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    except OSError as exc:
        raise ModelError(f"cannot read the checkpoint in {folder}: {exc}") from exc
    cached = _read_identity_cache(folder / _IDENTITY_FILE)
    if cached is not None and cached.get("files") == stamps:
        digest = cached.get("sha256")
        if isinstance(digest, str):
            return digest
    sha = hashlib.sha256()
    for file in files:
        name = file.name.encode()
        sha.update(len(name).to_bytes(8, "little") + name)
        sha.update(file.stat().st_size.to_bytes(8, "little"))
        with file.open("rb") as handle:
            while chunk := handle.read(_IDENTITY_CHUNK):
                sha.update(chunk)
    digest = sha.hexdigest()
    _write_identity_cache(folder / _IDENTITY_FILE, {"files": stamps, "sha256": digest})
    return digest


def _read_identity_cache(file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_identity_cache(file: Path, data: dict[str, Any]) -> None:
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        tmp.replace(file)
    except OSError:  # a read-only folder: stay correct, just not cached
        tmp.unlink(missing_ok=True)


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint, in name order."""
    index = folder / _INDEX_FILE
    if index.is_file():
        return sorted({folder / name for name in _read_index(index).values()})
    single = folder / _SINGLE_FILE
    if single.is_file():
        return [single]
    raise ModelError(
        f"{folder} has no {_SINGLE_FILE} or {_INDEX_FILE}; "
        "Potluck loads safetensors checkpoints only"
    )


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the shard index {index}: {exc}") from exc
    if not isinstance(weight_map, dict):
        raise ModelError(f"the shard index {index} has no weight_map")
    return {str(k): str(v) for k, v in weight_map.items()}


class TensorIndex:
    """Where each tensor of a checkpoint lives, to read a few without reading the rest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file_of: dict[str, Path] = {}
        index = folder / _INDEX_FILE
        if index.is_file():
            for name, shard in _read_index(index).items():
                self._file_of[name] = folder / shard
        else:
            for file in _weight_files(folder):
                with _open(file) as handle:
                    for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        self._file_of[name] = file
        self.prefix = self._base_prefix()

    def __contains__(self, name: object) -> bool:
        return name in self._file_of

    def _base_prefix(self) -> str:
        """``"model."`` for a ``*ForCausalLM`` checkpoint, ``""`` for a bare ``*Model`` one."""
        for prefix in ("model.", ""):
            if any(n.startswith(f"{prefix}layers.") for n in self._file_of):
                return prefix
            if f"{prefix}embed_tokens.weight" in self._file_of:
                return prefix
        raise ModelError(f"{self.folder} holds no decoder layers or embeddings")

    def read(self, names: Iterable[str], *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The named tensors, converted to `dtype`; ModelError if any is missing.

        Tensors already stored in `dtype` stay mapped from the file: the file
        must not be rewritten in place while they are in use (Potluck's own
        conversion replaces folders by renaming).
        """
        by_file: dict[Path, list[str]] = {}
        for name in names:
            file = self._file_of.get(name)
            if file is None:
                raise ModelError(f"{self.folder} has no tensor {name!r}")
            by_file.setdefault(file, []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for file, wanted in by_file.items():
            with _open(file) as handle:
                for name in wanted:
                    # Like transformers, keep a tensor already in `dtype` mapped from
                    # the file: processes serving one file share its pages, and the
                    # CPU kernels see the same addresses (alignment changes fp32
                    # rounding), so spans match the full model bit for bit.
                    tensors[name] = handle.get_tensor(name).to(dtype)
        return tensors


def _open(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot open the weight file {file}: {exc}") from exc


@dataclass(frozen=True)
class Architecture:
    """The transformers classes a Llama-family model is built from."""

    decoder_layer: type[nn.Module]
    rotary_embedding: type[nn.Module]
    norm: type[nn.Module]


def architecture(config: PreTrainedConfig) -> Architecture:
    """The decoder layer, rotary embedding and RMSNorm classes for `config`'s model type."""
    try:
        model_class = MODEL_MAPPING[type(config)]
    except KeyError as exc:
        raise ModelError(f"transformers has no model for config {type(config).__name__}") from exc
    module = importlib.import_module(model_class.__module__)
    stem = model_class.__name__.removesuffix("Model")
    classes = {}
    for role in ("DecoderLayer", "RotaryEmbedding", "RMSNorm"):
        cls = getattr(module, f"{stem}{role}", None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ModelError(f"{module.__name__} has no {stem}{role}")
        classes[role] = cls
    return Architecture(classes["DecoderLayer"], classes["RotaryEmbedding"], classes["RMSNorm"])


def load_module_weights(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], *, where: str
) -> None:
    """Assign `tensors` (keyed like ``module.state_dict()``) to a meta-device `module`.

    Every parameter and persistent buffer must be present with the expected
    shape; the module ends with no tensor left on the meta device.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelError(f"{where}: missing tensors {', '.join(missing)}")
    for name, tensor in tensors.items():
        want = expected.get(name)
        if want is None:
            raise ModelError(f"{where}: unexpected tensor {name}")
        if tuple(tensor.shape) != tuple(want.shape):
            raise ModelError(
                f"{where}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the config expects {tuple(want.shape)}"
            )
    module.load_state_dict(dict(tensors), strict=True, assign=True)
    module.requires_grad_(False)
    module.eval()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise ModelError(f"{where}: tensor {name} was not loaded")
