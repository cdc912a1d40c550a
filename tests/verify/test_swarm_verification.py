"""Spot-checks, referee, probes and mints between real node processes (tiny Llama).

Each swarm has a bootstrap keeping a ledger replica, a validator holding all
six blocks, and servers; the client runs in this process. Everything crosses
py-libp2p between separate processes on 127.0.0.1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from potluck.client import AutoDistributedModelForCausalLM, DistributedModelForCausalLM
from potluck.client.runtime import ClientRuntime
from potluck.ledger.core import Ledger
from potluck.ledger.economy import Capacity, capacity_from_audit, sign_receipt
from potluck.ledger.entry import Entry
from potluck.ledger.genesis import Economy, Genesis, init_swarm
from potluck.ledger.store import LEDGER_FILE, SqliteBackend
from potluck.ledger.wallet import RemoteReplica, Wallet
from potluck.model import model_identity
from potluck.p2p.announce import account_of_peer
from potluck.p2p.identity import Identity, load_or_create_identity
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.verify.audit import audit_ledger
from potluck.wire import Dispute, ErrorReply, Forward, ForwardResult, Message, Verdict

pytestmark = pytest.mark.slow

FAST = ["--announce-interval", "1", "--announce-ttl", "5", "--ledger-sync-interval", "1"]


def make_genesis(folder: Path, model: Path, **economy: object) -> tuple[Path, Path]:
    _, (key,) = init_swarm(
        folder,
        name="verify",
        model_name="tiny",
        model_identity=model_identity(model),
        validators=1,
        economy=Economy(checkpoint_seconds=2, **economy),  # type: ignore[arg-type]
    )
    return folder / "genesis.json", key


def start(
    local: LocalSwarm,
    genesis: Path,
    key: Path,
    model: Path,
    servers: dict[str, tuple[str, list[str]]],
    *,
    validator: list[str] = (),  # type: ignore[assignment]
) -> dict[str, NodeProcess]:
    flags = ["--genesis", str(genesis), *FAST]
    nodes = {"boot": local.start_node("boot", extra=flags)}
    nodes["validator"] = local.start_node(
        "validator",
        model=str(model),
        blocks="0:6",
        wait=False,
        extra=[*flags, "--validator", "--validator-key", str(key), *validator],
    )
    for name, (blocks, extra) in servers.items():
        nodes[name] = local.start_node(
            name, model=str(model), blocks=blocks, wait=False, extra=[*flags, *extra]
        )
    for node in nodes.values():
        if not node.info:
            local.wait_ready(node)
    return nodes


def read_ledger(node: NodeProcess, genesis: Path, fn: Callable[[Ledger], object]) -> object:
    with SqliteBackend(node.data_dir / LEDGER_FILE, readonly=True) as backend:
        return fn(Ledger(Genesis.load(genesis), backend))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_slashed(node: NodeProcess, genesis: Path, account: str, timeout: float, what: str) -> None:
    """Wait until `node`'s ledger replica shows `account` slashed."""
    wait_for(
        lambda: account in read_ledger(node, genesis, Ledger.slashed),  # type: ignore[operator]
        timeout,
        what,
    )


def generate_until_verdict(
    model: DistributedModelForCausalLM, seeds: range, tokens: int = 24
) -> tuple[Verdict, int]:
    """Generate from one seed after another until a spot-check ends in a verdict: the
    client's only verdict, and the seed it came with."""
    checker = model.spot_checker
    assert checker is not None
    for seed in seeds:
        generate(model, tokens, seed)
        if checker.stats.verdicts:
            break
    (verdict,) = checker.stats.verdicts
    return verdict, seed


def generate(model: DistributedModelForCausalLM, tokens: int, seed: int) -> torch.Tensor:
    prompt = torch.randint(0, 384, (1, 8), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(prompt)
    return model.generate(prompt, attention_mask=mask, max_new_tokens=tokens, do_sample=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_honest_servers_are_never_accused(tiny_model: Path, tmp_path: Path, dtype: str) -> None:
    """At p = 0.1, at least 200 spot-checked steps of honest servers: no mismatch,
    no dispute, no slash."""
    genesis, key = make_genesis(tmp_path / "swarm", tiny_model, spot_check_rate=0.1)
    flags = ["--dtype", dtype]
    with LocalSwarm(tmp_path / "nodes") as local:
        nodes = start(
            local,
            genesis,
            key,
            tiny_model,
            {"a": ("0:3", flags), "b": ("3:6", flags)},
            validator=["--dtype", dtype, "--probe-interval", "3600"],
        )
        model = AutoDistributedModelForCausalLM.from_pretrained(
            tiny_model, initial_peers=[nodes["boot"].addr], genesis=genesis
        )
        try:
            checker = model.spot_checker
            assert checker is not None and checker.sampler.rate == 0.1
            seed = 0
            while checker.stats.checked < 200 and seed < 40:
                generate(model, 96, seed)
                seed += 1
            stats = checker.stats
        finally:
            model.close()
        assert stats.checked >= 200, stats
        assert stats.unchecked == 0 and stats.mismatches == 0 and not stats.verdicts
        slashes = read_ledger(nodes["boot"], genesis, lambda led: led.backend.by_kind("slash"))
        assert slashes == []


def test_a_cheater_is_caught_slashed_and_excluded(tiny_model: Path, tmp_path: Path) -> None:
    """A server corrupting 10% of its outputs by relative error 1e-2 is caught by
    the client's spot-check, refereed by the validator, slashed on every replica and
    left out of the next route; the honest server that replaces it is paid."""
    genesis, key = make_genesis(tmp_path / "swarm", tiny_model, spot_check_rate=0.5)
    with LocalSwarm(tmp_path / "nodes") as local:
        nodes = start(
            local,
            genesis,
            key,
            tiny_model,
            {"a": ("0:3", []), "cheater": ("3:6", ["--cheat", "0.1:0.01"])},
            validator=["--probe-interval", "3600"],  # leave the catching to the client
        )
        cheater = account_of_peer(nodes["cheater"].peer_id)
        model = AutoDistributedModelForCausalLM.from_pretrained(
            tiny_model, initial_peers=[nodes["boot"].addr], genesis=genesis
        )
        try:
            assert [h.peer_id for h in model.route()][-1] == nodes["cheater"].peer_id
            checker = model.spot_checker
            assert checker is not None
            # 24 steps a seed: P(no catch in 240) = 0.95^240 < 1e-5
            verdict, seed = generate_until_verdict(model, range(10))
            assert verdict.guilty == (cheater,)
            assert nodes["cheater"].peer_id in model.swarm.excluded
            # slashed on the bootstrap's replica too, with a re-verifiable proof
            wait_slashed(nodes["boot"], genesis, cheater, 30, "the slash to replicate")
            state = read_ledger(nodes["boot"], genesis, lambda led: led.account(cheater))
            assert state.slashed >= Genesis.load(genesis).economy.slash_minimum  # type: ignore[attr-defined]
            # an honest server takes the cheater's blocks; the cheater is never used again
            local.start_node(
                "b", model=str(tiny_model), blocks="3:6", extra=["--genesis", str(genesis), *FAST]
            )
            peers = {h.peer_id for h in model.route()}
            assert nodes["cheater"].peer_id not in peers
            generate(model, 16, 99)
            assert len(checker.stats.verdicts) == 1
        finally:
            model.close()
        honest = account_of_peer(local.nodes[-1].peer_id)

        def receipt_authors() -> list[str]:
            found = read_ledger(nodes["boot"], genesis, lambda led: led.backend.by_kind("receipt"))
            return [r.author for r in found]  # type: ignore[attr-defined]

        wait_for(lambda: honest in receipt_authors(), 30, "the honest server's receipt")
        # no receipt for the session it was caught in: at most one for each earlier
        # session, whose drawn steps happened to miss its corruptions
        assert receipt_authors().count(cheater) <= seed


def test_a_probe_catches_a_cheater_no_client_checked(tiny_model: Path, tmp_path: Path) -> None:
    genesis, key = make_genesis(tmp_path / "swarm", tiny_model)
    with LocalSwarm(tmp_path / "nodes") as local:
        nodes = start(
            local,
            genesis,
            key,
            tiny_model,
            {"cheater": ("0:6", ["--cheat", "0.5:0.01"])},
            validator=["--probe-interval", "1"],
        )
        cheater = account_of_peer(nodes["cheater"].peer_id)
        wait_slashed(nodes["boot"], genesis, cheater, 60, "a probe to catch the cheater")
        # bad disputes get typed errors, and the validator goes on serving
        runtime = ClientRuntime(Identity.generate())
        try:
            validator, server = nodes["validator"], nodes["cheater"]
            hidden = torch.zeros(1, 1, 64)

            async def ask(node: NodeProcess, msg: Message) -> Message:
                return await runtime.host.request(
                    node.peer_id, PROTOCOL_RPC, msg, addrs=[node.addr]
                )

            garbage = Dispute("{}", hidden, hidden, hidden)
            reply = runtime.run(ask, validator, garbage)
            assert isinstance(reply, ErrorReply) and reply.code == "invalid_evidence", reply
            reply = runtime.run(ask, validator, Dispute("not json", hidden, hidden, hidden))
            assert isinstance(reply, ErrorReply) and reply.code == "invalid_evidence", reply
            reply = runtime.run(ask, server, garbage)
            assert isinstance(reply, ErrorReply) and reply.code == "not_a_validator", reply
            reply = runtime.run(ask, validator, Forward(0, 6, torch.randn(1, 3, 64)))
            assert isinstance(reply, ForwardResult) and reply.signature
        finally:
            runtime.close()


def test_self_dealing_earns_no_more_than_verified_capacity(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A server that records receipts from fake clients for a billion tokens is minted
    exactly what its probe-verified capacity caps: no more than honest full use."""

    epoch = 8
    genesis, key = make_genesis(
        tmp_path / "swarm", tiny_model, epoch_seconds=epoch, spot_check_rate=0.0
    )
    gen = Genesis.load(genesis)
    with LocalSwarm(tmp_path / "nodes") as local:
        nodes = start(
            local, genesis, key, tiny_model, {"s": ("0:6", [])}, validator=["--probe-interval", "1"]
        )
        server = load_or_create_identity(nodes["s"].data_dir)
        account = server.public_bytes.hex()
        runtime = ClientRuntime(Identity.generate())
        try:
            boot = nodes["boot"]

            async def self_deal() -> None:
                access = RemoteReplica(runtime.host, boot.peer_id, [boot.addr])
                wallet = Wallet(server, gen.swarm_id, access, validators=gen.validators)
                for i in range(3):
                    fake = Identity.generate()
                    session = f"{i:032x}"
                    signature = sign_receipt(
                        fake,
                        swarm=gen.swarm_id,
                        session=session,
                        server=account,
                        tokens=10**9,
                        start=0,
                        end=6,
                    )
                    body = {
                        "client": fake.public_bytes.hex(),
                        "session": session,
                        "tokens": 10**9,
                        "blocks": 6,
                        "details": {"start": 0, "end": 6, "signature": signature},
                    }
                    await wallet.write("receipt", body)

            # write in the middle of an epoch, so that the receipts and probes share one
            now = time.time()
            time.sleep((math.floor(now / epoch) + 1) * epoch - now + 1)
            runtime.run(self_deal)
        finally:
            runtime.close()

        def mints() -> list[Entry]:
            def find(led: Ledger) -> list[Entry]:
                return [e for e in led.backend.by_kind("mint") if e.to == account]

            return read_ledger(boot, genesis, find)  # type: ignore[return-value]

        wait_for(lambda: bool(mints()), 4 * epoch, "a mint to the self-dealer")
        mint = mints()[0]
        details, minted_epoch = mint.body["details"], mint.body["epoch"]

        def capacity_of(led: Ledger) -> Capacity:
            for audit in led.backend.by_kind("audit"):
                found = capacity_from_audit(audit)
                if (
                    found
                    and found.server == account
                    and audit.body["details"]["epoch"] == minted_epoch
                ):
                    return found
            raise AssertionError("no capacity audit for the minted epoch")

        capacity = read_ledger(boot, genesis, capacity_of)
        assert isinstance(capacity, Capacity)
        cap = capacity.token_blocks(epoch)
        claimed = 3 * 10**9 * 6
        if details["usage"] == claimed:  # the epoch of the fake receipts: the cap binds
            assert details["capacity"] == cap < claimed
        honest_full_use = gen.economy.mint_rate * cap * details["weight_milli"] // 10**6
        assert mint.body["amount"] <= honest_full_use
        assert details["capacity"] == cap


def test_quantised_servers_are_checked_by_replay(tiny_model: Path, tmp_path: Path) -> None:
    """Honest int8 and dynamic-int8 servers, over an int8-block session codec, are
    never accused by checks that replay their steps in their own quantisation (the
    float32 validator quantises a copy of its blocks); an nf4 server corrupting
    outputs by only 1e-3, far inside any quantised-vs-float difference, is caught,
    refereed by a replay, slashed, and the slash re-verifies from the ledger alone."""
    genesis, key = make_genesis(tmp_path / "swarm", tiny_model, spot_check_rate=0.3)
    with LocalSwarm(tmp_path / "nodes") as local:
        nodes = start(
            local,
            genesis,
            key,
            tiny_model,
            {"a": ("0:3", ["--quant", "int8"]), "b": ("3:6", ["--quant", "dynamic-int8"])},
            validator=["--probe-interval", "3600"],
        )
        model = AutoDistributedModelForCausalLM.from_pretrained(
            tiny_model, initial_peers=[nodes["boot"].addr], genesis=genesis, codec="int8-block"
        )
        try:
            assert [h.server.quant for h in model.route()] == ["int8", "dynamic-int8"]
            checker = model.spot_checker
            assert checker is not None
            seed = 0
            while checker.stats.checked < 100 and seed < 20:
                generate(model, 32, seed)
                seed += 1
            honest = checker.stats
            assert honest.checked >= 100, honest
            assert honest.unchecked == 0 and honest.mismatches == 0 and not honest.verdicts

            nodes["b"].kill()
            nodes["cheater"] = local.start_node(
                "cheater",
                model=str(tiny_model),
                blocks="3:6",
                extra=["--genesis", str(genesis), *FAST, "--quant", "nf4", "--cheat", "0.2:0.001"],
            )
            cheater = account_of_peer(nodes["cheater"].peer_id)
            # P(no catch in 240 steps) = 0.94^240 < 1e-6
            verdict, _ = generate_until_verdict(model, range(100, 110))
            assert verdict.guilty == (cheater,), verdict
        finally:
            model.close()
        wait_slashed(nodes["boot"], genesis, cheater, 30, "the slash to replicate")
        audit = audit_ledger(nodes["boot"].data_dir, Genesis.load(genesis), model=str(tiny_model))
        (slash,) = audit.slashes
        assert slash.account == cheater and slash.ok, slash
