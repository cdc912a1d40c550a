"""Five real node processes replicate a ledger written at random nodes, across a SIGKILL."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from potluck.errors import InsufficientBalance, LedgerError, NetworkError, PotluckError
from potluck.ledger.core import Ledger
from potluck.ledger.genesis import Genesis, init_swarm, load_key
from potluck.ledger.store import SqliteBackend
from potluck.ledger.tools import frontier_digest
from potluck.ledger.wallet import RemoteReplica, Wallet
from potluck.p2p.host import open_host
from potluck.p2p.identity import Identity
from potluck.testing.swarm import LocalSwarm, NodeProcess

pytestmark = pytest.mark.slow

ACCOUNTS = 8
TOTAL = 2000
KILL_AT = 900
RESTART_AT = 1300


def read_replica(
    node: NodeProcess, genesis: Genesis
) -> tuple[str, set[str], dict[str, int], str, bool]:
    """(frontier digest, entry hashes, balances, integrity, every account head final)
    from a node's database, read-only."""
    with SqliteBackend(node.data_dir / "ledger.db", readonly=True) as backend:
        ledger = Ledger(genesis, backend)
        state = ledger.state()
        heads = [
            backend.get(head)
            for author, (_, head) in state.frontier.items()
            if author not in genesis.validators
        ]
        final = all(entry is not None and ledger.is_final(entry) for entry in heads)
        return (
            frontier_digest(state.frontier),
            set(state.entries),
            state.balances,
            backend.integrity_check(),
            final,
        )


def test_five_replicas_converge_after_a_sigkill(tmp_path: Path) -> None:
    genesis, (validator_key,) = init_swarm(
        tmp_path / "swarm", name="t", model_name="none", model_identity="0" * 64, validators=1
    )
    extra = ["--genesis", str(tmp_path / "swarm" / "genesis.json"), "--ledger-sync-interval", "1"]
    validator_flags = ["--validator", "--validator-key", str(validator_key)]
    with LocalSwarm(tmp_path / "nodes") as swarm:
        # n0 is the validator: it signs a checkpoint every second while the frontier moves
        nodes = [
            swarm.start_node("n0", extra=[*extra, *validator_flags, "--checkpoint-interval", "1"])
        ]
        nodes += [swarm.start_node(f"n{i}", extra=extra) for i in range(1, 5)]
        alive = {node.name: node for node in nodes}
        acknowledged: set[str] = set()
        written = 0
        rng = random.Random(7)

        async def writer() -> None:
            nonlocal written
            validator = load_key(validator_key)
            keys = [Identity.generate() for _ in range(ACCOUNTS)]
            accounts = [k.public_bytes.hex() for k in keys]
            async with open_host(Identity.generate(), timeout=10) as host:

                def access() -> RemoteReplica:
                    node = rng.choice(list(alive.values()))
                    return RemoteReplica(host, node.peer_id, [node.addr], timeout=10)

                def wallet_for(identity: Identity) -> Wallet:
                    return Wallet(identity, genesis.swarm_id, access(), clock=lambda: 1.0)

                granting = Wallet(
                    validator,
                    genesis.swarm_id,
                    RemoteReplica(host, nodes[0].peer_id, [nodes[0].addr], timeout=10),
                )
                wallets = [wallet_for(k) for k in keys]

                async def act(wallet: Wallet, op: str, target: str = "") -> None:
                    """One write at a random node, retried elsewhere if that node fails."""
                    nonlocal written
                    for _attempt in range(50):
                        if wallet is not granting:  # grants go through the validator's node
                            wallet.access = access()
                        try:
                            if op == "grant":
                                entries = [await wallet.grant(target, 1000)]
                            elif op == "send":
                                try:
                                    entries = [await wallet.send(target, rng.randint(1, 50))]
                                except InsufficientBalance:  # found before anything is sent
                                    op = "receive"
                                    continue
                            else:
                                entries = await wallet.receive(limit=3)
                        except (NetworkError, trio.TooSlowError, LedgerError) as exc:
                            if isinstance(exc, LedgerError) and exc.code not in (
                                "seq_gap",
                                "seq_taken",  # the validator node checkpointed meanwhile
                            ):
                                raise
                            await trio.sleep(0.05)
                            continue
                        acknowledged.update(e.hash for e in entries)
                        written += len(entries)
                        return
                    raise AssertionError(f"{op} failed 50 times")

                for account in accounts:
                    await act(granting, "grant", account)

                async def account_task(index: int) -> None:
                    wallet = wallets[index]
                    while written < TOTAL:
                        if rng.random() < 0.5:
                            await act(wallet, "receive")
                        else:
                            other = rng.choice([a for a in accounts if a != accounts[index]])
                            await act(wallet, "send", other)

                async def chaos() -> None:
                    while written < KILL_AT:
                        await trio.sleep(0.05)
                    victim = alive.pop("n2")
                    victim.kill()  # SIGKILL, mid-stream
                    while written < RESTART_AT:
                        await trio.sleep(0.05)
                    restarted = await trio.to_thread.run_sync(
                        lambda: swarm.start_node("n2", extra=extra)
                    )
                    alive["n2"] = restarted

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chaos)
                    for index in range(ACCOUNTS):
                        nursery.start_soon(account_task, index)

        started = time.monotonic()
        trio.run(writer)
        wrote = time.monotonic() - started
        assert written >= TOTAL
        assert len(alive) == 5

        deadline = time.monotonic() + 90
        while True:
            views = [read_replica(node, genesis) for node in alive.values()]
            digests = {v[0] for v in views}
            if (
                len(digests) == 1
                and all(acknowledged <= v[1] for v in views)
                and all(v[4] for v in views)  # the validator's checkpoint covers every head
            ):
                break
            if time.monotonic() > deadline:
                counts = [len(v[1]) for v in views]
                missing = [len(acknowledged - v[1]) for v in views]
                final = [v[4] for v in views]
                pytest.fail(
                    f"no convergence: entries {counts}, acknowledged missing {missing}, "
                    f"heads final {final}"
                )
            time.sleep(0.5)

        settled = time.monotonic() - started - wrote
        print(f"wrote {written} entries in {wrote:.1f} s; converged {settled:.1f} s later")
        entries = {frozenset(v[1]) for v in views}
        balances = [v[2] for v in views]
        assert len(entries) == 1
        assert all(b == balances[0] for b in balances)
        assert all(v[3] == "ok" for v in views)
        assert len(next(iter(entries))) >= TOTAL
        total_points = sum(balances[0].values())
        assert total_points <= ACCOUNTS * 1000  # points moved, none created
        for node in alive.values():
            assert node.alive(), node.log_tail()


def test_swarm_wallet_and_ledger_commands(tmp_path: Path) -> None:
    """`potluck swarm init`, `wallet grant|receive|send|balance|history` and
    `ledger status|verify|export`, as a user runs them, against a real node."""
    import subprocess
    import sys

    from potluck.p2p.identity import load_or_create_identity
    from potluck.testing.models import make_tiny_llama

    make_tiny_llama(tmp_path / "model", num_layers=2)
    with LocalSwarm(tmp_path / "nodes") as swarm:

        def potluck(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "potluck", *args],
                capture_output=True,
                text=True,
                timeout=120,
                env=swarm.env,
                cwd=tmp_path,
            )

        init = potluck(
            "swarm", "init", "--name", "t", "--model", "model", "--validators", "1", "--out", "sw"
        )
        assert init.returncode == 0, init.stderr
        assert "swarm t: id " in init.stdout
        genesis = Genesis.load(tmp_path / "sw" / "genesis.json")
        node = swarm.start_node("n0", extra=["--genesis", str(tmp_path / "sw" / "genesis.json")])
        alice = load_or_create_identity(tmp_path / "alice")
        validator = load_key(tmp_path / "sw" / "validator-1.key").public_bytes.hex()
        common = ["--genesis", "sw/genesis.json", "--peer", node.addr]
        wallet = [*common, "--data-dir", "alice"]

        grant = potluck(
            "wallet", "grant", "--to", alice.peer_id, "--amount", "50",
            "--key", "sw/validator-1.key", *common,
        )  # fmt: skip
        assert grant.returncode == 0, grant.stderr
        received = potluck("wallet", "receive", *wallet)
        assert "balance 50" in received.stdout, received.stderr
        sent = potluck("wallet", "send", "--to", validator, "--amount", "20", *wallet)
        assert "balance 30" in sent.stdout, sent.stderr
        balance = potluck("wallet", "balance", *wallet)
        assert "balance 30" in balance.stdout, balance.stderr
        history = potluck("wallet", "history", *wallet)
        assert [line.split()[1] for line in history.stdout.splitlines()] == ["send", "receive"]
        too_much = potluck("wallet", "send", "--to", validator, "--amount", "1000", *wallet)
        assert too_much.returncode == 2
        assert too_much.stderr.startswith("error:") and "balance is 30" in too_much.stderr
        assert "Traceback" not in too_much.stderr

        ledger = ["--genesis", "sw/genesis.json", "--data-dir", str(node.data_dir)]
        status = potluck("ledger", "status", "--json", *ledger)
        assert status.returncode == 0, status.stderr
        assert '"entries": 3' in status.stdout
        assert '"integrity_check": "ok"' in status.stdout
        verify = potluck("ledger", "verify", *ledger)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "entries 3" in verify.stdout
        export = potluck("ledger", "export", *ledger)
        assert export.returncode == 0
        assert len(export.stdout.splitlines()) == 3
        with pytest.raises(PotluckError):
            SqliteBackend(node.data_dir / "ledger.db", readonly=True).claim_swarm("f" * 64)
        assert genesis.swarm_id in status.stdout
