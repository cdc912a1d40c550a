"""The dashboard in a real browser: headless Chromium on a swarm of real node processes.

A bootstrap node keeps the ledger and serves the dashboard (`--dashboard`); two
servers split a tiny Llama; the validator's key grants points to both servers,
which receive them. Once the dashboard's JSON API shows those balances,
Debian's Chromium (`make chromium` installs it) loads the pages, runs their
script, and dumps the DOM: it shows both servers and the balances the ledger
holds. A screenshot of each page is saved in the test's directory
(`dashboard.png` is the swarm page). Last, `potluck dashboard` joins the
swarm as a process of its own and shows the same servers and ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from potluck.ledger.genesis import Genesis, load_key
from potluck.ledger.wallet import Wallet
from potluck.node.run import READY_FILE
from potluck.p2p.announce import account_of_peer
from potluck.testing.swarm import LocalSwarm, ledger_genesis, with_wallet

pytestmark = pytest.mark.slow

FAST = ["--announce-interval", "0.5", "--announce-ttl", "3", "--ledger-sync-interval", "1"]
GRANTS = (250, 400)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(what: str, check: Any, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's Chromium, headless, with nothing that reaches outside this machine."""
    binary = shutil.which("chromium")
    assert binary is not None
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def start_standalone(
    local: LocalSwarm, peer: str, genesis: Path, data_dir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """`potluck dashboard` as a process (stopped by the caller), once it is ready."""
    port = free_port()
    data_dir.mkdir(parents=True)
    command = [sys.executable, "-m", "potluck", "dashboard", "--initial-peers", peer]
    command += ["--genesis", str(genesis), "--data-dir", str(data_dir)]
    command += ["--listen", f"127.0.0.1:{port}"]
    with (data_dir / "node.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=local.env)
    try:
        wait_for("potluck dashboard to be ready", lambda: (data_dir / READY_FILE).exists())
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, port


@pytest.fixture(scope="module")
def browser() -> None:
    if shutil.which("chromium") is None:
        message = "Debian's chromium is not installed: run `make chromium`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_the_dashboard_of_a_running_swarm_in_headless_chromium(
    browser: None, tiny_model: Path, tmp_path: Path
) -> None:
    genesis_path, key = ledger_genesis(tmp_path / "swarm", tiny_model, "browser")
    genesis = Genesis.load(genesis_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with LocalSwarm(tmp_path / "nodes") as local:
        flags = ["--genesis", str(genesis_path), *FAST]
        boot = local.start_node("boot", extra=[*flags, "--dashboard", f"127.0.0.1:{port}"])
        servers = [
            local.start_node(name, model=str(tiny_model), blocks=span, extra=flags, wait=False)
            for name, span in (("s1", "0:3"), ("s2", "3:6"))
        ]
        for server in servers:
            local.wait_ready(server)
        accounts = [account_of_peer(server.peer_id) for server in servers]

        async def grant(validator: Wallet) -> None:
            for account, amount in zip(accounts, GRANTS, strict=True):
                await validator.grant(account, amount)

        with_wallet(boot.addr, genesis, load_key(key), grant)

        def balances_shown(base: str = url) -> dict[str, int]:
            rows = get_json(f"{base}/api/balances")["accounts"]
            shown = {row["account"]: row["balance"] for row in rows}
            wanted = dict(zip(accounts, GRANTS, strict=True))
            return shown if all(shown.get(a) == b for a, b in wanted.items()) else {}

        wait_for("the servers to receive their grants", balances_shown)
        swarm = wait_for(
            "both servers in the dashboard's swarm view",
            lambda: (s := get_json(f"{url}/api/swarm"))["covered"] and s,
        )
        assert {row["peer_id"] for row in swarm["servers"]} == {s.peer_id for s in servers}
        assert "dashboard on http://127.0.0.1:" in boot.log_tail(100)

        profile = tmp_path / "chromium-profile"
        pages: dict[str, str] = {}
        for name, path in (("swarm", "/"), ("balances", "/balances")):
            dump = chromium(profile, "--virtual-time-budget=5000", "--dump-dom", url + path)
            pages[name] = dump.stdout
            shot = tmp_path / f"dashboard-{name}.png"
            chromium(profile, f"--screenshot={shot}", "--window-size=1280,1600", url + path)
            assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 10_000
        shutil.copy(tmp_path / "dashboard-swarm.png", tmp_path / "dashboard.png")

        swarm_dom, balances_dom = pages["swarm"], pages["balances"]
        assert 'id="live" class="">live' in swarm_dom  # the page's script ran and polled
        for server in servers:
            assert server.peer_id in swarm_dom  # the full peer ID, in the link's title
            assert server.peer_id[:8] in swarm_dom and server.peer_id[-6:] in swarm_dom
        assert "6/6" in swarm_dom  # blocks covered
        for account, amount in zip(accounts, GRANTS, strict=True):
            assert account[:16] in balances_dom
            assert f'<span class="balance">{amount}</span>' in balances_dom
        account_page = chromium(
            profile, "--virtual-time-budget=3000", "--dump-dom", f"{url}/accounts/{accounts[1]}"
        ).stdout
        assert accounts[1] in account_page and '<polyline class="balance"' in account_page

        # `potluck dashboard`: a node of its own, without a model, shows the same swarm
        standalone = start_standalone(local, boot.addr, genesis_path, tmp_path / "standalone")
        try:
            other = f"http://127.0.0.1:{standalone[1]}"
            wait_for("the standalone dashboard to sync the ledger", lambda: balances_shown(other))
            wait_for(
                "the standalone dashboard to see both servers",
                lambda: get_json(f"{other}/api/swarm")["covered"],
            )
            assert (
                get_json(f"{other}/api/status")["ledger"]["frontier_digest"]
                == get_json(f"{url}/api/status")["ledger"]["frontier_digest"]
            )
        finally:
            standalone[0].terminate()
            standalone[0].wait(timeout=20)
    png = tmp_path / "dashboard.png"
    assert png.stat().st_size > 0 and png.read_bytes().startswith(PNG_MAGIC)
