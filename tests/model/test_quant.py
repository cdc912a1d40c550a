"""Quantised spans: every mode runs near float32, deterministically, in less memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from potluck.errors import ConfigError, ModelError, SpanError
from potluck.model import BlockSpan, ClientHead
from potluck.model.quant import (
    QUANT_MODES,
    float_linears,
    quant_within,
    quantize_blocks,
    quantize_span,
    weight_bytes,
)
from potluck.verify.fingerprint import relative_errors

QUANTISED = [m for m in QUANT_MODES if m != "none"]
# Largest per-row relative error of the tiny Llama's hidden states and logits
# against float32 (6 random blocks, a prompt and 7 decode steps): measured
# int8 2.4e-2, nf4 3.9e-1, dynamic-int8 4.4e-2 over three prompts.
BOUNDS = {"int8": 0.05, "nf4": 0.6, "dynamic-int8": 0.1}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: these small kernels only lose to OpenMP on a shared machine."""
    own = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(own)


def prompt(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 384, (1, 11), generator=torch.Generator().manual_seed(seed))


def session(head: ClientHead, span: BlockSpan, steps: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """A prefill then `steps` greedy decode steps: every output row (tokens, hidden)
    and the logits that chose each token (steps + 1, vocab)."""
    cache = span.new_cache()
    current = prompt()
    rows, logits = [], []
    for _ in range(steps + 1):
        hidden = span.forward(head.embed(current).to(span.dtype), cache)  # (1, seq, hidden)
        rows.append(hidden[0].float())
        last = head.logits(hidden.float())[:, -1]  # (1, vocab)
        logits.append(last[0])
        current = last.argmax(-1, keepdim=True)
    return torch.cat(rows), torch.stack(logits)


@pytest.fixture(scope="module")
def reference(tiny_models: dict[str, Path]) -> tuple[ClientHead, torch.Tensor, torch.Tensor]:
    path = tiny_models["llama"]
    head = ClientHead.load(path)
    return head, *session(head, BlockSpan.load(path, 0, 6))


@pytest.mark.parametrize("mode", QUANTISED)
def test_each_mode_runs_close_to_float32(
    tiny_llama: Path, reference: tuple[ClientHead, torch.Tensor, torch.Tensor], mode: str
) -> None:
    head, want_rows, want_logits = reference
    span = BlockSpan.load(tiny_llama, 0, 6, quant=mode)
    assert span.quant == mode
    assert span.dtype == torch.float32  # the norms stay float, and so do the hidden states
    assert float_linears(span.layers) == []
    rows, logits = session(head, span)
    assert 0 < float(relative_errors(rows, want_rows).max()) <= BOUNDS[mode]
    assert float(relative_errors(logits, want_logits).max()) <= BOUNDS[mode]


@pytest.mark.parametrize("mode", QUANTISED)
def test_same_weights_and_mode_give_bit_identical_outputs(
    tiny_llama: Path, reference: tuple[ClientHead, torch.Tensor, torch.Tensor], mode: str
) -> None:
    head = reference[0]
    first = session(head, BlockSpan.load(tiny_llama, 0, 6, quant=mode))
    again = BlockSpan.load(tiny_llama, 0, 6, quant=mode)
    second = session(head, again)
    third = session(head, again)  # the same span, a new session
    for a, b, c in zip(first, second, third, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_quantised_weights_take_less_memory(tiny_llama: Path) -> None:
    full = BlockSpan.load(tiny_llama, 0, 6)
    sizes = {m: BlockSpan.load(tiny_llama, 0, 6, quant=m).nbytes for m in QUANTISED}
    assert full.nbytes == weight_bytes(full.layers) == 6 * 36_992 * 4  # weights + 2 norms
    # every quantised weight is counted: 1 byte (int8) or half a byte (nf4) each, plus scales
    assert full.nbytes / 4 < sizes["int8"] < full.nbytes / 3.5  # a scale per row
    assert full.nbytes / 4 < sizes["dynamic-int8"] < full.nbytes / 3  # scale, zero point per row
    assert full.nbytes / 8 < sizes["nf4"] < full.nbytes / 6.5  # a scale per 64 weights


def test_int8_rows_do_not_depend_on_the_other_rows_of_a_call() -> None:
    torch.manual_seed(0)
    block = nn.ModuleList([nn.Sequential(nn.Linear(64, 96, bias=True))]).requires_grad_(False)
    quantize_blocks(block, "int8")
    x = torch.randn(5, 64)
    with torch.inference_mode():
        together = block[0](x)
        alone = torch.cat([block[0](x[i : i + 1]) for i in range(5)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("shape", [(64, 48), (48, 64), (33, 34)])
def test_nf4_takes_any_shape(shape: tuple[int, int]) -> None:
    """Layers the fused AVX512-BF16 kernel cannot take run bitsandbytes' generic one."""
    torch.manual_seed(0)
    linear = nn.Linear(*shape).requires_grad_(False)
    x = torch.randn(3, shape[0])
    want = linear(x)
    block = nn.ModuleList([nn.Sequential(linear)])
    quantize_blocks(block, "nf4")
    assert type(block[0][0]).__name__ == "Linear4bit"
    with torch.inference_mode():
        got = block[0](x)
    assert float(relative_errors(got, want).max()) < 0.2  # 4-bit weights: ~10% per layer


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bitsandbytes_modes_run_bfloat16_spans(tiny_llama: Path, mode: str) -> None:
    span = BlockSpan.load(tiny_llama, 0, 2, dtype=torch.bfloat16, quant=mode)
    assert span.dtype == torch.bfloat16
    out = span.forward(torch.randn(1, 4, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())


def test_dynamic_int8_refuses_bfloat16(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="float32 blocks only"):
        BlockSpan.load(tiny_llama, 0, 1, dtype=torch.bfloat16, quant="dynamic-int8")


def test_unknown_mode_and_double_quantisation_are_refused(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="unknown quantisation 'int4'"):
        BlockSpan.load(tiny_llama, 0, 1, quant="int4")
    span = BlockSpan.load(tiny_llama, 0, 1)
    with pytest.raises(ConfigError, match="unknown quantisation"):
        quantize_blocks(span.layers, "fp8")
    quantize_span(span, "int8")
    with pytest.raises(ConfigError, match="already quantised"):
        quantize_span(span, "nf4")


def test_missing_bitsandbytes_is_a_model_error(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    span = BlockSpan.load(tiny_llama, 0, 1)
    with pytest.raises(ModelError, match="pip install bitsandbytes"):
        quantize_span(span, "nf4")
    quantize_span(span, "dynamic-int8")  # torch's own needs no bitsandbytes


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_replay_gives_a_sessions_rows_bit_for_bit(tiny_llama: Path, mode: str) -> None:
    """`BlockSpan.replay` of a session's inputs, cut as its steps were, is bit-identical
    to the session's outputs: what a quantised server's checker relies on."""
    head = ClientHead.load(tiny_llama)
    span = BlockSpan.load(tiny_llama, 0, 6, quant=mode)
    cache = span.new_cache()
    inputs = [head.embed(prompt()), *(head.embed(torch.tensor([[t]])) for t in (5, 9, 77))]
    outputs = [span.forward(x, cache, start=1, end=5) for x in inputs]
    history = torch.cat(inputs, dim=1)
    steps = [x.shape[1] for x in inputs]
    again = BlockSpan.load(tiny_llama, 0, 6, quant=mode)
    assert torch.equal(again.replay(history, steps, start=1, end=5), torch.cat(outputs, dim=1))


def test_replay_refuses_steps_that_do_not_cut_the_history(tiny_llama: Path) -> None:
    span = BlockSpan.load(tiny_llama, 0, 2)
    hidden = torch.zeros(1, 4, span.config.hidden_size)
    for steps in ([1, 2], [2, 3], [4, 0], []):
        with pytest.raises(SpanError, match="do not cut"):
            span.replay(hidden, steps)


def test_a_clients_quant_limit_orders_modes_by_bits() -> None:
    assert [m for m in QUANT_MODES if quant_within(m, "none")] == ["none"]
    assert [m for m in QUANT_MODES if quant_within(m, "int8")] == ["none", "int8", "dynamic-int8"]
    assert [m for m in QUANT_MODES if quant_within(m, "nf4")] == list(QUANT_MODES)
    with pytest.raises(ConfigError):
        quant_within("none", "int4")
