"""`potluck demo` end to end, then a third node's audit of its ledger.

The demo runs a bootstrap with a ledger replica, a validator, three honest
servers and a cheater as real processes. Afterwards the bootstrap's ledger
(neither a validator's nor a server's) is audited from its entries alone:
every balance equals grants plus mints received minus spends, less slashes,
and every slash's fraud proof is re-verified by recomputing the span.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from potluck.demo import run_demo
from potluck.ledger.genesis import Genesis
from potluck.verify.audit import audit_ledger

pytestmark = pytest.mark.slow


def test_demo_pays_servers_slashes_the_cheater_and_audits_clean(tmp_path: Path) -> None:
    result = run_demo(workdir=tmp_path / "demo", max_new_tokens=16, mint_timeout=150)
    assert len(result.texts) == 2 and all(result.texts)
    genesis = Genesis.load(result.genesis)
    audit = audit_ledger(result.nodes["bootstrap"], genesis, model="smollm2")
    assert audit.ok, (audit.balances.problems, audit.slashes)
    assert audit.recomputed
    slashed = {check.account for check in audit.slashes if check.reason == "wrong_output"}
    assert result.cheater in slashed
    rows = {row.account: row for row in audit.balances.rows}
    assert rows[result.cheater].available < 0 <= rows[result.cheater].balance
    earners = [
        name
        for name in ("server1", "server2", "server3")
        if rows.get(result.accounts[name]) and rows[result.accounts[name]].mints_received
    ]
    assert earners, "no server received a mint"

    # the same audit through the CLI, as a user runs it
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "potluck",
            "ledger",
            "audit",
            "--genesis",
            str(result.genesis),
            "--data-dir",
            str(result.nodes["bootstrap"]),
            "--model",
            "smollm2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout.splitlines()[-1]
