"""The `potluck` command: every command documented with an example; user mistakes exit 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from potluck.cli import app, main
from potluck.node.config import NodeConfig

runner = CliRunner()


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, command) of the tree, groups included, root first."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
TREE = dict(walk(ROOT))
LEAVES = [path for path, command in TREE.items() if not hasattr(command, "commands")]


def test_the_tree_holds_the_documented_commands() -> None:
    assert set(LEAVES) == {
        ("demo",),
        ("dashboard",),
        ("node", "start"),
        ("model", "prepare"),
        ("swarm", "init"),
        ("wallet", "balance"),
        ("wallet", "history"),
        ("wallet", "send"),
        ("wallet", "receive"),
        ("wallet", "grant"),
        ("wallet", "attest"),
        ("generate",),
        ("ledger", "status"),
        ("ledger", "verify"),
        ("ledger", "export"),
        ("ledger", "audit"),
    }


@pytest.mark.parametrize("path", list(TREE), ids=lambda p: " ".join(p) or "potluck")
def test_every_command_and_group_says_what_it_does(path: tuple[str, ...]) -> None:
    assert (TREE[path].help or "").strip()


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_command_has_an_example(path: tuple[str, ...]) -> None:
    assert "Example:" in TREE[path].help
    assert f"potluck {' '.join(path)}" in TREE[path].help.split("Example:", 1)[1]


@pytest.mark.parametrize("path", list(TREE), ids=lambda p: " ".join(p) or "potluck")
def test_help_runs_for_every_command(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], prog_name="potluck")
    assert result.exit_code == 0, result.output
    assert "Usage: potluck" in result.output
    if path in LEAVES:
        assert "Example:" in result.output


def test_potluck_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"], prog_name="potluck")
    assert result.exit_code == 0
    for name in ("node", "model", "demo", "swarm", "wallet", "ledger"):
        assert name in result.output


def test_node_start_has_one_flag_per_config_field_with_its_help() -> None:
    result = runner.invoke(app, ["node", "start", "--help"], prog_name="potluck")
    assert result.exit_code == 0
    params = {p.name: p for p in TREE[("node", "start")].params if p.name != "help"}
    fields = dataclasses.fields(NodeConfig)
    assert sorted(params) == sorted(f.name for f in fields)
    defaults = NodeConfig()
    for f in fields:
        param = params[f.name]
        assert param.opts == [f"--{f.name.replace('_', '-')}"]
        assert param.help == f.metadata["help"]
        default = getattr(defaults, f.name)
        assert param.default == (None if default == () else default), f.name


# --- user mistakes --------------------------------------------------------------------


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int | str | None:
    monkeypatch.setattr(sys, "argv", ["potluck", *args])
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


def test_a_bad_flag_value_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["node", "start", "--model", "x", "--blocks", "5:2", "--data-dir", str(tmp_path)]
    assert run_main(monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: --blocks 5:2: need 0 <= START < END"]


def test_an_unknown_model_to_prepare_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(monkeypatch, "model", "prepare", "llama-70b") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: only smollm2 is bundled; 'llama-70b' is not"]


def test_an_error_message_is_printed_verbatim(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["node", "start", "--model", "x", "--blocks", "[/bold]", "--data-dir", str(tmp_path)]
    assert run_main(monkeypatch, *args) == 2
    assert "'[/bold]'" in capsys.readouterr().err


def test_generate_refuses_an_unknown_priority_or_route_before_joining(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
    args = ["generate", "hi", "--initial-peers", peer]
    assert run_main(monkeypatch, *args, "--priority", "urgent") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: priority must be one of ('normal', 'high'), not 'urgent'"
    ]
    assert run_main(monkeypatch, *args, "--route", "secret") == 2
    assert "route must be one of" in capsys.readouterr().err


def test_a_long_error_message_stays_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    long_value = str(tmp_path / ("a-long-folder-name-" * 5))
    assert run_main(monkeypatch, "node", "start", "--dtype", long_value) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_python_m_potluck_reports_bad_blocks_without_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "potluck", "node", "start", "--model", "smollm2"]
    command += ["--blocks", "5:2", "--data-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "blocks" in lines[0]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # refused before touching the data dir


def test_generate_refuses_an_unknown_codec_or_quantisation_before_joining(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
    args = ["generate", "hi", "--initial-peers", peer]
    assert run_main(monkeypatch, *args, "--codec", "int9") == 2
    assert "codec" in capsys.readouterr().err
    assert run_main(monkeypatch, *args, "--quant", "int4") == 2
    assert "quant must be one of none, int8, nf4, dynamic-int8" in capsys.readouterr().err
