"""NodeConfig: parse_blocks, validation as ConfigError, help text on every field."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.errors import ConfigError
from potluck.node.config import NodeConfig, parse_blocks

# --- parse_blocks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span"), [("0:10", (0, 10)), ("4:12", (4, 12)), ("0:1", (0, 1)), ("29:30", (29, 30))]
)
def test_parse_blocks_reads_start_and_end(text: str, span: tuple[int, int]) -> None:
    assert parse_blocks(text) == span


@pytest.mark.parametrize(
    "text",
    ["5:2", "3:3", "-1:4", "-4:-1", "", ":", "0:", ":5", "7", "1:2:3", "a:b", "1.5:3", "0-10"],
)
def test_parse_blocks_refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match="--blocks"):
        parse_blocks(text)


@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_parse_blocks_accepts_exactly_the_non_empty_spans(start: int, length: int) -> None:
    assert parse_blocks(f"{start}:{start + length}") == (start, start + length)
    with pytest.raises(ConfigError):
        parse_blocks(f"{start + length}:{start}")


# --- NodeConfig -------------------------------------------------------------------


def test_the_defaults_are_a_valid_bootstrap_config() -> None:
    config = NodeConfig()
    assert config.model is None and config.blocks is None
    assert config.span is None
    assert config.data_dir == Path(".potluck")
    assert config.announce_ttl > config.announce_interval


def test_span_is_parsed_from_blocks() -> None:
    assert NodeConfig(model="smollm2", blocks="4:12").span == (4, 12)


def test_the_config_is_frozen() -> None:
    config = NodeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"blocks": "0:10"}, "--blocks needs --model"),
        ({"model": "smollm2", "blocks": "5:2"}, "--blocks"),
        ({"model": "smollm2", "blocks": "ten"}, "--blocks"),
        ({"dtype": "float16"}, "--dtype"),
        ({"cache_tokens": 0}, "--cache-tokens"),
        ({"max_session_length": 0}, "--max-session-length"),
        ({"sessions_per_peer": 0}, "--sessions-per-peer"),
        ({"max_frame": -1}, "--max-frame"),
        ({"session_idle_timeout": 0.0}, "--session-idle-timeout"),
        ({"request_timeout": -1.0}, "--request-timeout"),
        ({"announce_interval": 0.0}, "--announce-interval"),
        ({"announce_interval": 5.0, "announce_ttl": 5.0}, "--announce-ttl"),
        ({"announce_interval": 5.0, "announce_ttl": 1.0}, "--announce-ttl"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_flag(
    changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig(**changes)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_both_dtypes_are_accepted(dtype: str) -> None:
    assert NodeConfig(dtype=dtype).dtype == dtype


@pytest.mark.parametrize(
    "name", ["session_idle_timeout", "request_timeout", "announce_interval", "announce_ttl"]
)
def test_nan_durations_are_refused(name: str) -> None:
    changes: dict[str, Any] = {name: math.nan}
    with pytest.raises(ConfigError):
        NodeConfig(**changes)


def test_negative_compute_threads_are_refused() -> None:
    with pytest.raises(ConfigError):
        NodeConfig(compute_threads=-1)


@pytest.mark.parametrize("port", [-1, 65536])
def test_out_of_range_ports_are_refused(port: int) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(port=port)


# --- help ---------------------------------------------------------------------------


def test_help_texts_cover_every_field() -> None:
    helps = NodeConfig.help_texts()
    assert list(helps) == [f.name for f in dataclasses.fields(NodeConfig)]
    for name, text in helps.items():
        assert text.strip(), f"{name} has no help text"
        assert text.rstrip().endswith((".", ")")), f"{name}: {text!r}"


def test_blocks_and_num_blocks_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="either"):
        NodeConfig(model="m", blocks="0:2", num_blocks=2)
    with pytest.raises(ConfigError):
        NodeConfig(model="m", num_blocks=0)
    with pytest.raises(ConfigError):
        NodeConfig(model="m", rebalance_margin=float("nan"))


@pytest.mark.parametrize("quant", ["none", "int8", "nf4", "dynamic-int8"])
def test_every_quantisation_is_a_config(quant: str) -> None:
    assert NodeConfig(model="smollm2", quant=quant).quant == quant


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"quant": "int4"}, "--quant must be one of none, int8, nf4, dynamic-int8"),
        ({"quant": "int8", "dtype": "bfloat16"}, "computes in float32"),
    ],
)
def test_bad_quantisations_are_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig(model="smollm2", **fields)
