"""Comparing outputs under the calibrated tolerance: honest noise passes, corruption does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.model import BlockSpan, ClientHead
from potluck.testing.models import make_tiny_llama
from potluck.verify.fingerprint import (
    REPLAY_THRESHOLD,
    THRESHOLDS,
    Comparison,
    compare,
    relative_errors,
    threshold_for,
)
from potluck.wire import WireCodec


def additive(out: torch.Tensor, magnitude: float, seed: int) -> torch.Tensor:
    """`out` plus noise of relative size `magnitude` in a random direction per row (as the
    node's --cheat does)."""
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    noise *= magnitude * out.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    return out + noise


def multiplicative(out: torch.Tensor, magnitude: float, seed: int) -> torch.Tensor:
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return out * (1 + magnitude * noise)


def hidden_like(batch: int = 2, seq: int = 16, width: int = 256, seed: int = 0) -> torch.Tensor:
    """Hidden states with a few large channels, as in trained models' residual streams."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, width, generator=generator)
    x[..., :3] *= 20.0
    return x


# -- the thresholds ----------------------------------------------------------------


def test_thresholds_are_calibrated_for_both_compute_dtypes() -> None:
    assert set(THRESHOLDS) == {"float32", "bfloat16"}
    # a corruption of relative size 1e-2 must be caught in float32
    assert 0 < THRESHOLDS["float32"] < 1e-2
    # bfloat16 rounds each value by up to 2**-8 of itself, so its threshold cannot be tighter
    assert THRESHOLDS["bfloat16"] > 2**-8 > THRESHOLDS["float32"]


def test_threshold_for_picks_the_loosest() -> None:
    fp32, bf16 = THRESHOLDS["float32"], THRESHOLDS["bfloat16"]
    assert threshold_for("float32") == fp32
    assert threshold_for("bfloat16") == bf16
    assert threshold_for("float32", "float32") == fp32
    assert threshold_for("float32", "bfloat16") == bf16
    assert threshold_for("bfloat16", "float32") == bf16


@pytest.mark.parametrize("dtypes", [("int8",), ("float32", "float64"), ()])
def test_threshold_for_refuses_uncalibrated_dtypes(dtypes: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        threshold_for(*dtypes)


def test_compare_defaults_to_float32() -> None:
    x = hidden_like()
    assert compare(x, x).threshold == THRESHOLDS["float32"]
    assert compare(x, x, "bfloat16").threshold == THRESHOLDS["bfloat16"]
    assert compare(x, x, "float32", "bfloat16").threshold == THRESHOLDS["bfloat16"]


# -- honest outputs -----------------------------------------------------------------


def test_identical_tensors_match_exactly() -> None:
    x = hidden_like()
    result = compare(x, x.clone(), "float32")
    assert result == Comparison(
        max_error=0.0, threshold=THRESHOLDS["float32"], rows=32, rows_over=0
    )
    assert result.matches
    assert relative_errors(x, x.clone()).tolist() == [0.0] * 32


def test_another_summation_order_matches_in_float32() -> None:
    """The same matmul summed in another order (as another batch shape or thread count
    does) is not bit-identical but matches."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 512, generator=generator)
    w = torch.randn(512, 256, generator=generator) / 512**0.5
    once = x @ w  # (1, 16, 256)
    chunks = [x[..., i : i + 64] @ w[i : i + 64] for i in range(0, 512, 64)]
    reordered = torch.zeros_like(once)
    for part in reversed(chunks):
        reordered += part
    assert not torch.equal(once, reordered)
    errors = relative_errors(reordered, once)
    assert 0 < float(errors.max()) < THRESHOLDS["float32"] / 100
    assert compare(reordered, once, "float32").matches


def test_bfloat16_rounding_matches_under_bfloat16_only() -> None:
    x = hidden_like()
    rounded = x.to(torch.bfloat16).float()
    errors = relative_errors(rounded, x)
    assert float(errors.max()) <= 2**-8  # bfloat16 keeps 8 significant bits
    assert compare(rounded, x, "bfloat16").matches
    assert compare(rounded, x, "bfloat16", "float32").matches
    assert not compare(rounded, x, "float32").matches  # float32's bound is far tighter


def test_a_bfloat16_output_compares_with_a_float32_reference() -> None:
    x = hidden_like()
    result = compare(x.to(torch.bfloat16), x, "bfloat16", "float32")
    assert result.matches and 0 < result.max_error <= 2**-8


# -- corrupted outputs ------------------------------------------------------------------


@pytest.mark.parametrize("corrupt", [additive, multiplicative])
@pytest.mark.parametrize("seed", range(5))
def test_a_1e2_corruption_is_caught_in_float32(corrupt: object, seed: int) -> None:
    assert callable(corrupt)
    x = hidden_like(seed=seed)
    bad = corrupt(x, 1e-2, seed)
    errors = relative_errors(bad, x)
    assert float(errors.min()) > 10 * THRESHOLDS["float32"]
    result = compare(bad, x, "float32")
    assert not result.matches
    assert result.rows_over == result.rows == 32


def test_additive_corruption_has_exactly_its_relative_size() -> None:
    x = hidden_like()
    for magnitude in (1e-3, 1e-2, 1e-1):
        errors = relative_errors(additive(x, magnitude, 0), x)
        assert torch.allclose(errors, torch.full_like(errors, magnitude), rtol=1e-4)


def test_one_corrupted_row_is_counted_alone() -> None:
    x = hidden_like(batch=1, seq=8)
    bad = x.clone()
    bad[0, 5] = additive(x[0, 5:6], 1e-2, 0)[0]
    result = compare(bad, x, "float32")
    assert (result.rows, result.rows_over) == (8, 1)
    assert result.max_error == pytest.approx(1e-2, rel=1e-4)
    assert relative_errors(bad, x).nonzero().flatten().tolist() == [5]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtypes", [("float32",), ("bfloat16",), ("bfloat16", "float32")])
def test_non_finite_outputs_never_match(value: float, dtypes: tuple[str, ...]) -> None:
    x = hidden_like(batch=1, seq=4)
    bad = x.clone()
    bad[0, 2, 7] = value
    errors = relative_errors(bad, x)
    assert errors[2] == float("inf") and errors[[0, 1, 3]].tolist() == [0.0] * 3
    result = compare(bad, x, *dtypes)
    assert not result.matches and result.rows_over == 1
    assert result.max_error == float("inf")
    assert not compare(bad, bad.clone(), *dtypes).matches  # not even against itself
    assert not compare(x, bad, *dtypes).matches  # nor as the reference (a bad checker)
    assert relative_errors(x, bad)[2] == float("inf")


def test_shape_mismatch_raises() -> None:
    x = hidden_like(batch=1, seq=4)
    for other in (x[:, :3], x.reshape(1, 2, -1), x.reshape(4, 1, -1), x[..., :-1]):
        with pytest.raises(ValueError, match="shapes differ"):
            relative_errors(x, other)
        with pytest.raises(ValueError, match="shapes differ"):
            compare(x, other)


@settings(max_examples=50, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 6),
    magnitudes=st.lists(st.sampled_from([0.0, 1e-6, 1e-4, 1e-3, 1e-2, 0.5]), min_size=18),
    dtype=st.sampled_from(["float32", "bfloat16"]),
)
def test_compare_counts_the_rows_over_the_threshold(
    batch: int, seq: int, magnitudes: list[float], dtype: str
) -> None:
    x = hidden_like(batch=batch, seq=seq, width=64)
    rows = x.reshape(-1, 64)
    sizes = torch.tensor(magnitudes[: len(rows)], dtype=torch.float64)
    bad = torch.stack(
        [
            additive(row[None], float(m), i)[0]
            for i, (row, m) in enumerate(zip(rows, sizes, strict=True))
        ]
    ).reshape(x.shape)
    errors = relative_errors(bad, x)
    result = compare(bad, x, dtype)
    assert result.rows == batch * seq
    assert result.rows_over == int((errors > THRESHOLDS[dtype]).sum())
    assert result.matches == bool((errors <= THRESHOLDS[dtype]).all())
    assert result.max_error == pytest.approx(float(errors.max()))


# -- a real spot-check on a tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def calm_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny Llama (initializer range 0.02), unlike the wide `tiny_model`."""
    return make_tiny_llama(tmp_path_factory.mktemp("calm") / "llama", num_layers=6)


def spot_check(path: Path, server: torch.dtype, checker: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A server's session on blocks 1:5 (a prefill of 8 tokens, then 24 decode steps,
    with its KV cache) and a checker's one stateless forward over the same inputs, both
    as float32 (batch 1, 32, hidden) like on the wire, and the prompt length."""
    head = ClientHead.load(path)
    ids = torch.randint(3, 384, (1, 32), generator=torch.Generator().manual_seed(7))
    history = head.embed(ids)  # (1, 32, hidden): real embeddings, sent as float32
    span = BlockSpan.load(path, 1, 5, dtype=server)
    cache = span.new_cache()
    steps = [span.forward(history[:, :8].to(server), cache)]
    steps += [span.forward(history[:, t : t + 1].to(server), cache) for t in range(8, 32)]
    served = torch.cat(steps, dim=1).float()
    reference = BlockSpan.load(path, 1, 5, dtype=checker).forward(history.to(checker)).float()
    return served, reference


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_with_cache_matches_one_prefill(tiny_model: Path, dtype: str) -> None:
    served, reference = spot_check(tiny_model, getattr(torch, dtype), getattr(torch, dtype))
    result = compare(served, reference, dtype)
    assert result.rows == 32
    assert result.matches, result
    # not bit-identical: the reason the comparison needs a tolerance at all
    assert not torch.equal(served[:, 8:], reference[:, 8:])


def test_a_bfloat16_server_matches_a_float32_checker(calm_llama: Path) -> None:
    served, reference = spot_check(calm_llama, torch.bfloat16, torch.float32)
    result = compare(served, reference, "bfloat16", "float32")
    assert result.matches, result
    assert not compare(served, reference, "float32").matches


@pytest.mark.parametrize("corrupt", [additive, multiplicative])
def test_a_corrupted_decode_step_is_caught_in_float32(tiny_model: Path, corrupt: object) -> None:
    assert callable(corrupt)
    served, reference = spot_check(tiny_model, torch.float32, torch.float32)
    assert compare(served, reference, "float32").matches
    for step in range(8, 32):  # each decode step, checked alone as the client does
        bad = corrupt(served[:, step : step + 1], 1e-2, step)
        result = compare(bad, reference[:, step : step + 1], "float32")
        assert not result.matches, (step, result)
        assert result.max_error > 10 * THRESHOLDS["float32"]


# -- quantised weights and wire codecs -------------------------------------------------

CODECS = ["float32", "float16", "bfloat16", "int8-block/64", "int8-block/16", "int8-block/4096"]


def received(codec: str, out: torch.Tensor) -> torch.Tensor:
    """`out` as the client gets it from a server under `codec`."""
    return WireCodec.from_label(codec).encode(out).decode()


def test_a_quantised_output_is_only_compared_with_a_replay() -> None:
    assert threshold_for("float32", quant="int8") == REPLAY_THRESHOLD
    assert threshold_for("float32", quant="none") == THRESHOLDS["float32"]
    assert REPLAY_THRESHOLD * 100 <= 1e-3


@settings(max_examples=60, deadline=None)
@given(codec=st.sampled_from(CODECS), seed=st.integers(0, 2**16), noise=st.floats(0, 1e-6))
def test_compression_never_counts_as_dishonesty(codec: str, seed: int, noise: float) -> None:
    """An honest float32 server's output, received under any codec, matches a checker's
    recomputation that differs by float noise (the codec's proven error is allowed)."""
    out = hidden_like(seed=seed)
    checker = multiplicative(out, noise, seed + 1)
    verdict = compare(received(codec, out), checker, "float32", codec=codec)
    assert verdict.matches, verdict


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    quant=st.sampled_from(["int8", "nf4", "dynamic-int8"]),
    seed=st.integers(0, 2**16),
)
def test_a_replayed_quantised_output_compares_exactly_under_any_codec(
    codec: str, quant: str, seed: int
) -> None:
    out = hidden_like(seed=seed)
    verdict = compare(received(codec, out), out, "float32", quant=quant, codec=codec)
    assert verdict.matches and verdict.max_error == 0.0


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("corrupt", [additive, multiplicative])
def test_a_1e3_corruption_of_a_quantised_server_is_caught_under_any_codec(
    codec: str, corrupt: object
) -> None:
    """Against a replay the check is exact, so a corruption far below the codec's
    quantum is still seen: it moves some codes."""
    assert callable(corrupt)
    out = hidden_like()
    for seed in range(5):
        cheated = received(codec, corrupt(out, 1e-3, seed))
        verdict = compare(cheated, out, "float32", quant="int8", codec=codec)
        assert verdict.rows_over == verdict.rows, (seed, verdict)


@pytest.mark.parametrize("codec", CODECS)
def test_a_1e1_corruption_of_a_float32_server_is_caught_under_any_codec(codec: str) -> None:
    out = hidden_like()
    for seed in range(5):
        cheated = received(codec, additive(out, 0.1, seed))
        verdict = compare(cheated, out, "float32", codec=codec)
        assert verdict.rows_over == verdict.rows, (seed, verdict)


@pytest.mark.parametrize(
    ("codec", "magnitude"),
    [("float16", 1e-3), ("bfloat16", 3e-3), ("int8-block/64", 3e-3), ("int8-block/16", 3e-3)],
)
def test_the_smallest_corruption_a_codec_lets_a_float32_check_catch(
    codec: str, magnitude: float
) -> None:
    """docs/verification.md: against a float32 checker, a compressed session still
    catches additive corruptions from these sizes up (hidden states with outliers,
    576 wide as SmolLM2's)."""
    out = hidden_like(width=576)
    for seed in range(5):
        cheated = received(codec, additive(out, magnitude, seed))
        verdict = compare(cheated, out, "float32", codec=codec)
        assert verdict.rows_over == verdict.rows, (seed, verdict)
