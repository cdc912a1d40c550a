"""Private routes between real node processes: hidden states reach only trusted servers.

Five servers of a 6-block tiny Llama, each keeping a request log: three that a
validator attested (`attest` entries, carried in their announcements) and two
that nobody attested, one of which serves the whole model in one hop (the
route any client would pick). A `route="trusted"` generation, also across the
SIGKILL of its trusted hop, must leave the untrusted servers' logs empty; with
too few trusted servers left it raises `NoTrustedRouteError`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from potluck.client import AutoDistributedModelForCausalLM, DistributedModelForCausalLM
from potluck.client.trust import TrustPolicy
from potluck.errors import NoTrustedRouteError
from potluck.ledger.genesis import Genesis, load_key
from potluck.ledger.wallet import Wallet
from potluck.p2p.announce import account_of_peer
from potluck.p2p.identity import Identity
from potluck.testing.swarm import LocalSwarm, NodeProcess, ledger_genesis, with_wallet

pytestmark = pytest.mark.slow

FAST = ["--announce-interval", "0.5", "--announce-ttl", "3", "--ledger-sync-interval", "1"]
TRUSTED = {"t1": "0:3", "t2": "3:6", "t3": "3:6"}
UNTRUSTED = {"u1": "0:6", "u2": "0:3"}
PROMPT = torch.tensor([[1, 33, 7, 250, 91, 4]])


def requests(node: NodeProcess) -> list[dict[str, Any]]:
    path = node.data_dir / "requests.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class KillAt:
    """A streamer that SIGKILLs the session's hop over block 4 when token `at` is out."""

    def __init__(self, model: DistributedModelForCausalLM, nodes: dict[str, NodeProcess]) -> None:
        self.model, self.nodes, self.seen = model, nodes, -1
        self.victim: NodeProcess | None = None

    def put(self, value: torch.Tensor) -> None:
        self.seen += 1
        if self.seen == 4 and self.victim is None:
            session = self.model.current_session
            assert session is not None
            hop = next(h for h in session.route if h.start <= 4 < h.end)
            self.victim = next(n for n in self.nodes.values() if n.peer_id == hop.peer_id)
            self.victim.kill()

    def end(self) -> None:
        pass


def test_a_trusted_route_sends_hidden_states_only_to_trusted_servers(
    tiny_model: Path, tmp_path: Path
) -> None:
    genesis_path, key = ledger_genesis(
        tmp_path / "swarm", tiny_model, "private", spot_check_rate=0.0, private_price=5
    )
    genesis = Genesis.load(genesis_path)
    validator = load_key(key)
    client = Identity.generate()
    local_model = AutoModelForCausalLM.from_pretrained(tiny_model)
    expected = local_model.generate(PROMPT, max_new_tokens=12, do_sample=False)

    with LocalSwarm(tmp_path / "nodes") as local:
        flags = ["--genesis", str(genesis_path), *FAST]
        boot = local.start_node("boot", extra=flags)
        nodes: dict[str, NodeProcess] = {}
        for name, blocks in {**TRUSTED, **UNTRUSTED}.items():
            log = str(local.workdir / name / "requests.jsonl")
            nodes[name] = local.start_node(
                name,
                model=str(tiny_model),
                blocks=blocks,
                wait=False,
                extra=[*flags, "--request-log", log],
            )
        for node in nodes.values():
            local.wait_ready(node)

        # t1 attested with the CLI, the others with the Python API
        command = [sys.executable, "-m", "potluck", "wallet", "attest"]
        command += ["--server", nodes["t1"].peer_id, "--key", str(key), "--hours", "1"]
        command += ["--genesis", str(genesis_path), "--peer", boot.addr]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and "attested" in done.stdout, done.stderr

        async def attest_and_grant(wallet: Wallet) -> None:
            for name in ("t2", "t3"):
                await wallet.write("attest", {"server": account_of_peer(nodes[name].peer_id)})
            await wallet.grant(client.public_bytes.hex(), 1000)

        with_wallet(boot.addr, genesis, validator, attest_and_grant)
        model = AutoDistributedModelForCausalLM.from_pretrained(
            tiny_model,
            initial_peers=[boot.addr],
            genesis=genesis_path,
            identity=client,
            step_timeout=10,
            route_timeout=6,
        )
        try:
            trusted = {nodes[name].peer_id for name in TRUSTED}

            def announced() -> bool:
                model.runtime.run(model.swarm.refresh, model.runtime.host)
                now_ms = int(time.time() * 1000)
                return model.trust.trusted(model.swarm.servers(), now_ms) == trusted

            wait_for(announced, 60, "the attested servers to announce their attestations")
            # without a genesis validator's attestation, a client trusts nobody
            assert not TrustPolicy().trusted(model.swarm.servers(), int(time.time() * 1000))

            killer = KillAt(model, nodes)
            out = model.generate(
                PROMPT, max_new_tokens=12, do_sample=False, route="trusted", streamer=killer
            )
            assert torch.equal(out, expected)
            assert killer.victim is not None and killer.victim.name in ("t2", "t3")
            assert model.last_session_failovers == 1
            assert model.last_session_priorities == ["private", "private"]
            assert model.wallet.state().balance < 1000  # the private route was paid for

            for name in UNTRUSTED:  # not one request: no session, no step, no forward
                assert requests(nodes[name]) == [], name
            served = [r for name in TRUSTED for r in requests(nodes[name])]
            assert {r["kind"] for r in served} == {"open", "step"}
            assert {r["priority"] for r in served} == {"private"}

            # the other trusted server of blocks 3:6 goes too: no trusted route is left
            survivor = next(n for n in ("t2", "t3") if nodes[n] is not killer.victim)
            nodes[survivor].kill()
            with pytest.raises(NoTrustedRouteError, match="trusted"):
                model.generate(PROMPT, max_new_tokens=4, do_sample=False, route="trusted")
            for name in UNTRUSTED:
                assert requests(nodes[name]) == [], name
            # a normal route still works, through the untrusted servers
            out = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
            assert torch.equal(out, expected)
            assert requests(nodes["u1"])
        finally:
            model.close()
