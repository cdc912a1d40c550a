"""BlockSpan: chained spans reproduce the full model; bad spans and caches are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from potluck.errors import ModelError, SpanError
from potluck.model import BlockSpan, ClientHead, load_config
from tests.model.helpers import (
    greedy_chain,
    greedy_full,
    load_chain,
    load_full,
    max_diff,
)

SPLITS = [(0, 1, 5, 6), (0, 6), (0, 3, 6), (0, 1, 2, 3, 4, 5, 6)]


def prompt(batch: int = 1, seq: int = 11, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 384, (batch, seq), generator=generator)


@pytest.mark.parametrize("arch", ["llama", "llama-wide", "mistral", "qwen2"])
@pytest.mark.parametrize("cuts", SPLITS, ids=lambda c: "-".join(map(str, c)))
def test_chained_spans_equal_full_model(
    tiny_models: dict[str, Path], arch: str, cuts: tuple[int, ...]
) -> None:
    path = tiny_models[arch]
    ids = prompt()
    want_logits, want_tokens = greedy_full(load_full(path), ids, steps=20)
    head, spans = load_chain(path, cuts)
    got_logits, got_tokens = greedy_chain(head, spans, ids, steps=20)
    assert max_diff(want_logits, got_logits) <= 1e-6
    assert all(torch.equal(w, g) for w, g in zip(want_logits, got_logits, strict=True))
    assert torch.equal(want_tokens, got_tokens)
    if arch == "llama-wide":
        assert len(set(got_tokens[0].tolist())) > 5  # the test sees real decoding


def test_batch_of_two_and_bfloat16(tiny_llama: Path) -> None:
    ids = prompt(batch=2)
    for dtype in (torch.float32, torch.bfloat16):
        want_logits, want_tokens = greedy_full(load_full(tiny_llama, dtype), ids, steps=5)
        head, spans = load_chain(tiny_llama, (0, 2, 6), dtype)
        got_logits, got_tokens = greedy_chain(head, spans, ids, steps=5)
        assert got_logits[0].dtype == dtype
        assert max_diff(want_logits, got_logits) <= 1e-6
        assert torch.equal(want_tokens, got_tokens)


def test_layers_keep_global_index_and_only_their_weights(tiny_llama: Path) -> None:
    span = BlockSpan.load(tiny_llama, 2, 5)
    assert [layer.self_attn.layer_idx for layer in span.layers] == [2, 3, 4]
    full = load_full(tiny_llama)
    for idx, layer in zip(range(2, 5), span.layers, strict=True):
        want = full.model.layers[idx].state_dict()
        got = layer.state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
    per_layer = sum(p.numel() * 4 for p in full.model.layers[0].parameters())
    assert span.nbytes == 3 * per_layer
    assert all(not p.requires_grad for p in span.layers.parameters())


def test_sub_range_forward_equals_running_the_blocks_separately(tiny_llama: Path) -> None:
    head = ClientHead.load(tiny_llama)
    whole = BlockSpan.load(tiny_llama, 0, 6)
    pieces = [BlockSpan.load(tiny_llama, 1, 3), BlockSpan.load(tiny_llama, 3, 4)]
    ids = prompt()
    whole_cache = whole.new_cache()
    piece_caches = [p.new_cache() for p in pieces]
    for step in range(4):
        tokens = ids if step == 0 else ids[:, -1:]
        hidden = head.embed(tokens)
        got = whole.forward(hidden, whole_cache, start=1, end=4)
        want = hidden
        for piece, cache in zip(pieces, piece_caches, strict=True):
            want = piece.forward(want, cache)
        assert torch.equal(got, want)
    assert whole_cache.block_range == (1, 4)
    assert whole_cache.length == ids.shape[1] + 3
    # stateless sub-range too, and start/end default to the span's own ends
    hidden = head.embed(ids)
    assert torch.equal(whole.forward(hidden, start=3, end=4), pieces[1].forward(hidden))
    assert torch.equal(whole.forward(hidden), whole.forward(hidden, start=0, end=6))


def test_stateless_forward_equals_cached_prefill(tiny_models: dict[str, Path]) -> None:
    for path in tiny_models.values():
        head = ClientHead.load(path)
        span = BlockSpan.load(path, 1, 6)
        hidden = head.embed(prompt(seq=13))
        cache = span.new_cache()
        assert torch.equal(span.forward(hidden), span.forward(hidden, cache))
        assert cache.length == 13


def test_stateless_chain_equals_full_model_without_cache(tiny_llama: Path) -> None:
    ids = prompt()
    with torch.no_grad():
        want = load_full(tiny_llama)(input_ids=ids, use_cache=False).logits
    head, spans = load_chain(tiny_llama, (0, 4, 6))
    hidden = head.embed(ids)
    for span in spans:
        hidden = span.forward(hidden)
    assert torch.equal(head.logits(hidden), want)


def test_cache_tracks_length_and_bytes(tiny_llama: Path) -> None:
    span = BlockSpan.load(tiny_llama, 2, 4)
    head = ClientHead.load(tiny_llama)
    cache = span.new_cache()
    assert (cache.length, cache.nbytes, cache.block_range) == (0, 0, None)
    span.forward(head.embed(prompt(seq=7)), cache)
    span.forward(head.embed(prompt(seq=1)), cache)
    assert cache.length == 8
    config = load_config(tiny_llama)
    head_dim = config.hidden_size // config.num_attention_heads
    # 2 layers x (keys + values) x kv heads x tokens x head_dim x 4 bytes
    assert cache.nbytes == 2 * 2 * config.num_key_value_heads * 8 * head_dim * 4


@pytest.mark.parametrize(("start", "end"), [(0, 0), (3, 3), (4, 2), (-1, 3), (0, 7), (6, 7)])
def test_bad_spans_raise_span_error(tiny_llama: Path, start: int, end: int) -> None:
    with pytest.raises(SpanError, match=rf"\[{start}, {end}\)"):
        BlockSpan.load(tiny_llama, start, end)


@pytest.mark.parametrize(("start", "end"), [(1, 3), (2, 6), (3, 3), (4, 3), (0, 5)])
def test_forward_outside_the_span_raises_span_error(tiny_llama: Path, start: int, end: int) -> None:
    span = BlockSpan.load(tiny_llama, 2, 5)
    hidden = ClientHead.load(tiny_llama).embed(prompt())
    with pytest.raises(SpanError, match=r"this span's blocks \[2, 5\)"):
        span.forward(hidden, start=start, end=end)


def test_cache_is_tied_to_its_range_span_and_batch(tiny_llama: Path) -> None:
    span = BlockSpan.load(tiny_llama, 0, 4)
    other = BlockSpan.load(tiny_llama, 0, 4)
    hidden = ClientHead.load(tiny_llama).embed(prompt())
    cache = span.new_cache()
    span.forward(hidden, cache, start=1, end=3)
    with pytest.raises(SpanError, match=r"serves blocks \[1, 3\), not \[0, 4\)"):
        span.forward(hidden, cache)
    with pytest.raises(SpanError, match="another span"):
        other.forward(hidden, cache, start=1, end=3)
    with pytest.raises(ModelError, match="batch of 1, not 2"):
        span.forward(hidden.expand(2, -1, -1), cache, start=1, end=3)
    assert cache.length == hidden.shape[1]  # refused calls left it untouched


def test_bad_hidden_states_raise_model_error(tiny_llama: Path) -> None:
    span = BlockSpan.load(tiny_llama, 0, 2)
    for bad in (torch.zeros(1, 4, 63), torch.zeros(4, 64), torch.zeros(1, 0, 64)):
        with pytest.raises(ModelError, match="hidden states must be"):
            span.forward(bad)
    with pytest.raises(ModelError, match="float64"):
        span.forward(torch.zeros(1, 4, 64, dtype=torch.float64))


def test_missing_or_misshapen_tensors_raise_model_error(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_llama / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    del tensors["model.layers.3.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.down_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert BlockSpan.load(tmp_path, 4, 6).end == 6
    with pytest.raises(ModelError, match=r"model.layers.3.mlp.up_proj.weight"):
        BlockSpan.load(tmp_path, 2, 4)
    with pytest.raises(ModelError, match=r"down_proj.weight has shape \(3, 3\)"):
        BlockSpan.load(tmp_path, 0, 2)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_weight_bytes_matches_a_loaded_block(
    tmp_path: Path, arch: str, dtype: torch.dtype
) -> None:
    from potluck.model import block_weight_bytes
    from potluck.testing.models import make_tiny_llama

    path = make_tiny_llama(tmp_path / arch, num_layers=2, arch=arch)
    estimate = block_weight_bytes(load_config(path), dtype)
    assert estimate == BlockSpan.load(path, 0, 1, dtype=dtype).nbytes
