"""`potluck demo`: a whole swarm with its ledger on 127.0.0.1 in one command.

Prepares SmolLM2 (once) and creates a swarm (genesis and a validator key)
with short epochs, then starts as separate processes: a bootstrap node that
keeps a ledger replica, a validator holding the whole model, three servers
holding blocks 0:10, 10:20 and 20:30, and a fourth server on 10:20 that
cheats (`--cheat`, corrupting a share of its outputs). A client chats through
the swarm twice with spot-checks on; the cheater is caught (by the client's
spot-check or a validator probe, whichever comes first), refereed and
slashed, and the servers earn points when the epoch ends. The final balances
are read from the bootstrap's ledger. Every process is stopped by PID.
"""

from __future__ import annotations

import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from potluck.errors import PotluckError
from potluck.ledger.core import AccountState
from potluck.ledger.entry import Entry
from potluck.ledger.genesis import Economy, Genesis, init_swarm
from potluck.model import load_config, model_identity, num_blocks, resolve_model
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.verify.reputation import reputation

DEMO_ECONOMY = Economy(
    grant_amount=1000,
    mint_rate=100,
    spot_check_rate=0.2,
    slash_fraction=0.5,
    epoch_seconds=30,
    checkpoint_seconds=5,
    probe_seconds=10,
    dispute_fee=10,
)
"""Short epochs and frequent probes, so that a demo shows minting within a minute."""
CHEAT = "0.3:0.05"


@dataclass(frozen=True)
class DemoResult:
    """What a demo run produced, for tests: where its nodes kept their data."""

    workdir: Path
    genesis: Path
    nodes: dict[str, Path]  # name -> data dir
    accounts: dict[str, str]  # name -> ledger account
    cheater: str  # account
    texts: list[str]


def run_demo(
    *,
    keep_running: bool = False,
    prompt: str = "What is a potluck dinner? Answer in two sentences.",
    max_new_tokens: int = 64,
    workdir: Path | None = None,
    mint_timeout: float = 120.0,
) -> DemoResult:
    from transformers import AutoTokenizer, TextStreamer

    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.p2p.announce import account_of_peer

    console = Console(soft_wrap=True)
    path = resolve_model("smollm2")  # converts the bundled GGUF on first use
    blocks = num_blocks(load_config(path))
    half = blocks // 3
    spans = {
        "server1": f"0:{half}",
        "server2": f"{half}:{2 * half}",
        "server3": f"{2 * half}:{blocks}",
        "cheater": f"{half}:{2 * half}",
    }
    root = workdir or Path(tempfile.mkdtemp(prefix="potluck-demo-"))
    genesis, (validator_key,) = init_swarm(
        root / "swarm",
        name="demo",
        model_name="smollm2",
        model_identity=model_identity(path),
        validators=1,
        economy=DEMO_ECONOMY,
    )
    genesis_path = root / "swarm" / "genesis.json"
    ledger_flags = ["--genesis", str(genesis_path)]
    swarm = LocalSwarm(root)
    texts: list[str] = []
    try:
        t0 = time.monotonic()
        dashboard = f"http://127.0.0.1:{_free_port()}/"
        boot = swarm.start_node(
            "bootstrap", extra=[*ledger_flags, "--dashboard", dashboard.split("/")[2]]
        )
        console.print(f"[bold]bootstrap[/] pid {boot.pid} at {boot.addr} (ledger replica)")
        console.print(f"[bold]dashboard[/] {dashboard}")
        # every node shares this machine's cores: one torch thread each measures fastest
        common = [*ledger_flags, "--compute-threads", "1"]
        validator = swarm.start_node(
            "validator",
            model="smollm2",
            blocks=f"0:{blocks}",
            wait=False,
            extra=[*common, "--validator", "--validator-key", str(validator_key)],
        )
        servers = {
            name: swarm.start_node(
                name,
                model="smollm2",
                blocks=span,
                wait=False,
                extra=[*common, *(["--cheat", CHEAT] if name == "cheater" else [])],
            )
            for name, span in spans.items()
        }
        swarm.wait_ready(validator)
        console.print(f"[bold]validator[/] pid {validator.pid} holds blocks 0:{blocks}")
        for name, node in servers.items():
            swarm.wait_ready(node)
            note = f" [red](cheats: --cheat {CHEAT})[/]" if name == "cheater" else ""
            console.print(f"[bold]{name}[/] pid {node.pid} serves blocks {spans[name]}{note}")
        nodes: dict[str, NodeProcess] = {"bootstrap": boot, "validator": validator, **servers}
        accounts = {name: account_of_peer(node.peer_id) for name, node in nodes.items()}
        model = AutoDistributedModelForCausalLM.from_pretrained(
            "smollm2", initial_peers=[boot.addr], genesis=genesis_path
        )
        try:
            model.route()  # waits until the swarm covers every block
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
            console.print(f"swarm up in {time.monotonic() - t0:.1f} s\n")
            for question in (prompt, "Name three dishes people bring to one."):
                console.print(f"[bold]user:[/] {question}")
                messages = [{"role": "user", "content": question}]
                ids = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )["input_ids"]
                console.print("[bold]assistant:[/] ", end="")
                streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
                t1 = time.monotonic()
                out = model.generate(
                    ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer
                )
                texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
                new = out.shape[1] - ids.shape[1]
                elapsed = time.monotonic() - t1
                console.print(f"{new} tokens in {elapsed:.1f} s ({new / elapsed:.1f} tokens/s)\n")
            checker = model.spot_checker
            if checker is not None:
                stats = checker.stats
                console.print(
                    f"spot-checks: {stats.sampled} steps drawn, {stats.checked} checked, "
                    f"{stats.unchecked} unchecked, {stats.mismatches} mismatches"
                )
                for verdict in stats.verdicts:
                    console.print(f"[red]verdict[/] {verdict.message}")
        finally:
            model.close()
        _wait_for_mints(console, boot.data_dir, genesis, accounts, mint_timeout)
        _print_balances(console, boot.data_dir, genesis, accounts)
        result = DemoResult(
            workdir=root,
            genesis=genesis_path,
            nodes={name: node.data_dir for name, node in nodes.items()},
            accounts=accounts,
            cheater=accounts["cheater"],
            texts=texts,
        )
        if keep_running:
            console.print(
                "\nThe swarm keeps running; connect from Python with:\n\n"
                "    from potluck.client import AutoDistributedModelForCausalLM\n"
                "    model = AutoDistributedModelForCausalLM.from_pretrained(\n"
                f"        'smollm2', initial_peers=['{boot.addr}'], genesis='{genesis_path}')\n\n"
                "Press Ctrl-C to stop it."
            )
            console.print(f"dashboard: {dashboard}", highlight=False)
            try:
                while all(n.alive() for n in swarm.nodes):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return result
    finally:
        swarm.stop()
        console.print("all nodes stopped")


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LedgerView:
    """What the demo reads from a node's ledger file."""

    states: dict[str, AccountState]  # by account
    reputations: dict[str, float | None]  # by account
    unreceived: int  # mints and other transfers to the demo's accounts not yet received
    mints: int
    slashes: list[Entry]


def _read_ledger(data_dir: Path, genesis: Genesis, accounts: Iterable[str]) -> LedgerView:
    from potluck.ledger.core import Ledger
    from potluck.ledger.store import LEDGER_FILE, SqliteBackend

    with SqliteBackend(data_dir / LEDGER_FILE, readonly=True) as backend:
        ledger = Ledger(genesis, backend)
        states = {account: ledger.account(account) for account in accounts}
        unreceived = sum(len(ledger.receivable(account)) for account in states)
        audits, slashes = backend.by_kind("audit"), backend.by_kind("slash")
        reputations = {
            account: reputation(account, audits, slashes, validators=genesis.validators)
            for account in states
        }
        return LedgerView(states, reputations, unreceived, len(backend.by_kind("mint")), slashes)


def _wait_for_mints(
    console: Console,
    data_dir: Path,
    genesis: Genesis,
    accounts: dict[str, str],
    timeout: float,
) -> None:
    """Wait until mints were written and received, and the cheater was slashed."""
    console.print(
        f"waiting for the epoch to end (every {genesis.economy.epoch_seconds} s) "
        "and the servers to receive their mints..."
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = _read_ledger(data_dir, genesis, accounts.values())
        except (PotluckError, sqlite3.Error):  # the file may be mid-creation; try again
            view = None
        if view and view.mints and view.slashes and not view.unreceived:
            return
        time.sleep(2)
    console.print("[yellow]gave up waiting; balances so far:[/]")


def _print_balances(
    console: Console, data_dir: Path, genesis: Genesis, accounts: dict[str, str]
) -> None:
    view = _read_ledger(data_dir, genesis, accounts.values())
    names = {account: name for name, account in accounts.items()}
    for slash in view.slashes:
        body = slash.body
        accuser = body["evidence"].get("accuser")
        how = "a validator's probe" if accuser in genesis.validators else "a client's spot-check"
        console.print(
            f"[red]slashed[/] {names.get(body['account'], body['account'][:12])}: "
            f"{body['reason']}, {body['amount']} points, caught by {how}"
        )
    title = f"balances on the bootstrap's ledger ({view.mints} mints, {len(view.slashes)} slashes)"
    table = Table(title=title)
    for column in ("node", "account", "balance", "slashed", "available", "reputation"):
        table.add_column(column, justify="right" if column != "node" else "left")
    for name, account in accounts.items():
        state = view.states[account]
        rep = view.reputations[account]
        table.add_row(
            name,
            account[:12],
            str(state.balance),
            str(state.slashed),
            str(state.available),
            "-" if rep is None else f"{rep:.2f}",
        )
    console.print(table)
