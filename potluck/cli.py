"""The `potluck` command: thin wrappers over the Python API.

A user mistake (a bad flag, a missing model, an unreachable peer) prints one
readable line and exits with status 2; it never shows a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from potluck.errors import ConfigError, PotluckError
from potluck.node.config import NodeConfig

app = typer.Typer(
    help="Potluck: a volunteer swarm for LLM inference with a ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run a node of the swarm.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect models.", no_args_is_help=True)
swarm_app = typer.Typer(
    help="Create a swarm: its genesis and validator keys.", no_args_is_help=True
)
wallet_app = typer.Typer(help="Your points: balance, history, send, receive.", no_args_is_help=True)
ledger_app = typer.Typer(help="Inspect a node's ledger replica.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(model_app, name="model")
app.add_typer(swarm_app, name="swarm")
app.add_typer(wallet_app, name="wallet")
app.add_typer(ledger_app, name="ledger")

console = Console(stderr=True)
_HELP = NodeConfig.help_texts()
_DEFAULT = NodeConfig()


@node_app.command("start")
def node_start(
    model: Annotated[str | None, typer.Option(help=_HELP["model"])] = None,
    blocks: Annotated[str | None, typer.Option(help=_HELP["blocks"])] = None,
    num_blocks: Annotated[int | None, typer.Option(help=_HELP["num_blocks"])] = None,
    memory_budget: Annotated[
        float, typer.Option(help=_HELP["memory_budget"])
    ] = _DEFAULT.memory_budget,
    rebalance_interval: Annotated[
        float, typer.Option(help=_HELP["rebalance_interval"])
    ] = _DEFAULT.rebalance_interval,
    rebalance_margin: Annotated[
        float, typer.Option(help=_HELP["rebalance_margin"])
    ] = _DEFAULT.rebalance_margin,
    host: Annotated[str, typer.Option(help=_HELP["host"])] = _DEFAULT.host,
    port: Annotated[int, typer.Option(help=_HELP["port"])] = _DEFAULT.port,
    initial_peers: Annotated[
        list[str] | None, typer.Option("--initial-peers", help=_HELP["initial_peers"])
    ] = None,
    data_dir: Annotated[Path, typer.Option(help=_HELP["data_dir"])] = _DEFAULT.data_dir,
    dtype: Annotated[str, typer.Option(help=_HELP["dtype"])] = _DEFAULT.dtype,
    quant: Annotated[str, typer.Option(help=_HELP["quant"])] = _DEFAULT.quant,
    max_frame: Annotated[int, typer.Option(help=_HELP["max_frame"])] = _DEFAULT.max_frame,
    cache_tokens: Annotated[int, typer.Option(help=_HELP["cache_tokens"])] = _DEFAULT.cache_tokens,
    max_session_length: Annotated[
        int, typer.Option(help=_HELP["max_session_length"])
    ] = _DEFAULT.max_session_length,
    sessions_per_peer: Annotated[
        int, typer.Option(help=_HELP["sessions_per_peer"])
    ] = _DEFAULT.sessions_per_peer,
    session_idle_timeout: Annotated[
        float, typer.Option(help=_HELP["session_idle_timeout"])
    ] = _DEFAULT.session_idle_timeout,
    request_timeout: Annotated[
        float, typer.Option(help=_HELP["request_timeout"])
    ] = _DEFAULT.request_timeout,
    announce_interval: Annotated[
        float, typer.Option(help=_HELP["announce_interval"])
    ] = _DEFAULT.announce_interval,
    announce_ttl: Annotated[
        float, typer.Option(help=_HELP["announce_ttl"])
    ] = _DEFAULT.announce_ttl,
    compute_threads: Annotated[
        int, typer.Option(help=_HELP["compute_threads"])
    ] = _DEFAULT.compute_threads,
    compute_delay: Annotated[
        float, typer.Option(help=_HELP["compute_delay"])
    ] = _DEFAULT.compute_delay,
    genesis: Annotated[Path | None, typer.Option(help=_HELP["genesis"])] = None,
    validator: Annotated[bool, typer.Option(help=_HELP["validator"])] = _DEFAULT.validator,
    validator_key: Annotated[Path | None, typer.Option(help=_HELP["validator_key"])] = None,
    ledger_sync_interval: Annotated[
        float, typer.Option(help=_HELP["ledger_sync_interval"])
    ] = _DEFAULT.ledger_sync_interval,
    ledger_page: Annotated[int, typer.Option(help=_HELP["ledger_page"])] = _DEFAULT.ledger_page,
    ledger_max_pending: Annotated[
        int, typer.Option(help=_HELP["ledger_max_pending"])
    ] = _DEFAULT.ledger_max_pending,
    checkpoint_interval: Annotated[
        float, typer.Option(help=_HELP["checkpoint_interval"])
    ] = _DEFAULT.checkpoint_interval,
    probe_interval: Annotated[
        float, typer.Option(help=_HELP["probe_interval"])
    ] = _DEFAULT.probe_interval,
    cheat: Annotated[str | None, typer.Option(help=_HELP["cheat"])] = None,
    compute_slots: Annotated[
        int, typer.Option(help=_HELP["compute_slots"])
    ] = _DEFAULT.compute_slots,
    paid_slots: Annotated[int, typer.Option(help=_HELP["paid_slots"])] = _DEFAULT.paid_slots,
    priority_aging: Annotated[
        float, typer.Option(help=_HELP["priority_aging"])
    ] = _DEFAULT.priority_aging,
    paid_reserve_tokens: Annotated[
        int, typer.Option(help=_HELP["paid_reserve_tokens"])
    ] = _DEFAULT.paid_reserve_tokens,
    bad_ticket: Annotated[str, typer.Option(help=_HELP["bad_ticket"])] = _DEFAULT.bad_ticket,
    request_log: Annotated[Path | None, typer.Option(help=_HELP["request_log"])] = None,
    dashboard: Annotated[str | None, typer.Option(help=_HELP["dashboard"])] = None,
    openai_model: Annotated[str | None, typer.Option(help=_HELP["openai_model"])] = None,
    api_keys: Annotated[Path | None, typer.Option(help=_HELP["api_keys"])] = None,
    openai_max_tokens: Annotated[
        int, typer.Option(help=_HELP["openai_max_tokens"])
    ] = _DEFAULT.openai_max_tokens,
) -> None:
    """Serve blocks of a model to the swarm (or, without --model, act as a bootstrap peer).

    Example: potluck node start --model smollm2 --blocks 0:10 [--quant int8]
    --initial-peers /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...
    """
    from potluck.node.run import run_node

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("potluck").setLevel(logging.INFO)

    config = NodeConfig(
        model=model,
        blocks=blocks,
        num_blocks=num_blocks,
        memory_budget=memory_budget,
        rebalance_interval=rebalance_interval,
        rebalance_margin=rebalance_margin,
        host=host,
        port=port,
        initial_peers=tuple(initial_peers or ()),
        data_dir=data_dir,
        dtype=dtype,
        quant=quant,
        max_frame=max_frame,
        cache_tokens=cache_tokens,
        max_session_length=max_session_length,
        sessions_per_peer=sessions_per_peer,
        session_idle_timeout=session_idle_timeout,
        request_timeout=request_timeout,
        announce_interval=announce_interval,
        announce_ttl=announce_ttl,
        compute_threads=compute_threads,
        compute_delay=compute_delay,
        genesis=genesis,
        validator=validator,
        validator_key=validator_key,
        ledger_sync_interval=ledger_sync_interval,
        ledger_page=ledger_page,
        ledger_max_pending=ledger_max_pending,
        checkpoint_interval=checkpoint_interval,
        probe_interval=probe_interval,
        cheat=cheat,
        compute_slots=compute_slots,
        paid_slots=paid_slots,
        priority_aging=priority_aging,
        paid_reserve_tokens=paid_reserve_tokens,
        bad_ticket=bad_ticket,
        request_log=request_log,
        dashboard=dashboard,
        openai_model=openai_model,
        api_keys=api_keys,
        openai_max_tokens=openai_max_tokens,
    )

    def ready(server: object) -> None:
        from potluck.node.server import Server

        assert isinstance(server, Server)
        span = server.span
        what = "bootstrap peer" if span is None else f"blocks {span.start}:{span.end}"
        _print_addresses(server)
        print(f"ready: serving {what}; Ctrl-C stops", flush=True)

    run_node(config, on_ready=ready)


def _print_addresses(server: Any) -> None:
    """The lines a ready node prints: its addresses, ledger account and dashboard URL."""
    for addr in server.host.addrs:
        print(f"potluck node listening on {addr}", flush=True)
    if server.replica is not None:
        print(f"ledger account {server.host.identity.public_bytes.hex()}", flush=True)
    if server.dashboard_url is not None:
        print(f"dashboard on {server.dashboard_url}", flush=True)


@app.command("dashboard")
def dashboard_command(
    initial_peers: Annotated[
        list[str], typer.Option("--initial-peers", help="Multiaddresses of peers to join through.")
    ],
    genesis: Annotated[
        Path | None,
        typer.Option(help="The swarm's genesis.json: keep a ledger replica and show balances."),
    ] = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve the dashboard on (a bare port: 127.0.0.1).")
    ] = "127.0.0.1:8000",
    data_dir: Annotated[
        Path, typer.Option(help="Directory for this node's key and ledger replica.")
    ] = Path(".potluck-dashboard"),
    port: Annotated[int, typer.Option(help="TCP port for libp2p (0 picks a free one).")] = 0,
    openai_model: Annotated[str | None, typer.Option(help=_HELP["openai_model"])] = None,
    api_keys: Annotated[Path | None, typer.Option(help=_HELP["api_keys"])] = None,
) -> None:
    """Serve the read-only web dashboard of a swarm: a node without a model that keeps a
    ledger replica and gathers the swarm view, with the dashboard and its JSON API on.

    Example: potluck dashboard --initial-peers /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...
    --genesis swarm/genesis.json --listen 127.0.0.1:8000 --openai-model smollm2
    """
    from potluck.node.run import run_node

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("potluck").setLevel(logging.INFO)
    config = NodeConfig(
        initial_peers=tuple(initial_peers),
        genesis=genesis,
        dashboard=listen,
        data_dir=data_dir,
        port=port,
        openai_model=openai_model,
        api_keys=api_keys,
    )

    def ready(server: object) -> None:
        _print_addresses(server)
        print("ready: serving the dashboard; Ctrl-C stops", flush=True)

    run_node(config, on_ready=ready)


@model_app.command("prepare")
def model_prepare(
    name: Annotated[str, typer.Argument(help="Model to prepare: smollm2.")] = "smollm2",
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where prepared models live (default ~/.cache/potluck/models)."),
    ] = None,
) -> None:
    """Convert a bundled model to a fast-loading safetensors folder, once.

    Example: potluck model prepare smollm2
    """
    from potluck.model import SMOLLM2_ALIASES, prepare_smollm2

    if name.casefold() not in {a.casefold() for a in SMOLLM2_ALIASES}:
        raise PotluckError(f"only smollm2 is bundled; {name!r} is not")
    path = prepare_smollm2(cache_dir)
    print(path)


@app.command("demo")
def demo(
    keep_running: Annotated[
        bool, typer.Option(help="Leave the swarm up and print how to connect to it.")
    ] = False,
    prompt: Annotated[
        str, typer.Option(help="What to ask the model.")
    ] = "What is a potluck dinner? Answer in two sentences.",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    workdir: Annotated[
        Path | None, typer.Option(help="Directory for the nodes' data (default: a temp dir).")
    ] = None,
) -> None:
    """Start a swarm with a ledger on 127.0.0.1 (a bootstrap, a validator, three servers
    and a cheater), chat through it, then show the cheater slashed and the balances.

    Example: potluck demo --keep-running
    """
    from potluck.demo import run_demo

    run_demo(
        keep_running=keep_running, prompt=prompt, max_new_tokens=max_new_tokens, workdir=workdir
    )


@swarm_app.command("init")
def swarm_init(
    name: Annotated[str, typer.Option(help="The swarm's name.")],
    model: Annotated[str, typer.Option(help="Model the swarm runs: smollm2 or a folder.")],
    validators: Annotated[int, typer.Option(help="How many validator keys to create.")] = 1,
    out: Annotated[Path, typer.Option(help="Folder for genesis.json and the keys.")] = Path(
        "swarm"
    ),
    grant_amount: Annotated[int, typer.Option(help="Points a validator grants.")] = 1000,
    checkpoint_seconds: Annotated[
        int, typer.Option(help="Seconds between a validator's checkpoints.")
    ] = 30,
) -> None:
    """Write a genesis file and validator keys; swarm_id is the genesis's hash.

    Example: potluck swarm init --name demo --model smollm2 --validators 3 --out swarm
    """
    from potluck.ledger.genesis import Economy, init_swarm
    from potluck.model.checkpoint import model_identity
    from potluck.model.registry import resolve_model

    path = resolve_model(model)
    genesis, keys = init_swarm(
        out,
        name=name,
        model_name=model,
        model_identity=model_identity(path),
        validators=validators,
        economy=Economy(grant_amount=grant_amount, checkpoint_seconds=checkpoint_seconds),
    )
    print(f"swarm {genesis.name}: id {genesis.swarm_id}")
    print(f"genesis: {out / 'genesis.json'}")
    for key, account in zip(keys, genesis.validators, strict=True):
        print(f"validator key {key} (account {account})")


_GENESIS_OPT = typer.Option(help="The swarm's genesis.json.")
_PEER_OPT = typer.Option(help="Address of a node to read and write through (/ip4/.../p2p/...).")
_KEY_OPT = typer.Option(help="Account key file (default: DATA_DIR/identity.key).")
_DATA_OPT = typer.Option(
    help="Data directory holding the account key (and wallet-<account>.json, the last seq written)."
)


def _wallet_key(key: Path | None, data_dir: Path) -> object:
    from potluck.ledger.genesis import load_key
    from potluck.p2p.identity import KEY_FILE, load_or_create_identity

    if key is not None:
        return load_key(key)
    if not (data_dir / KEY_FILE).exists():
        raise ConfigError(f"no account key in {data_dir}; give --key or --data-dir")
    return load_or_create_identity(data_dir)


def _run_wallet(
    genesis: Path, peer: str, key: Path | None, data_dir: Path, action: Callable[[Any], Any]
) -> Any:
    import trio

    from potluck.ledger.genesis import Genesis
    from potluck.ledger.tools import open_wallet
    from potluck.p2p.identity import Identity

    identity = _wallet_key(key, data_dir)
    assert isinstance(identity, Identity)
    swarm = Genesis.load(genesis)
    account = identity.public_bytes.hex()
    state_file = data_dir / f"wallet-{account[:16]}.json" if data_dir.is_dir() else None

    async def main() -> Any:
        async with open_wallet(identity, swarm, peer, state_file=state_file) as wallet:
            return await action(wallet)

    return trio.run(main)


@wallet_app.command("balance")
def wallet_balance(
    genesis: Annotated[Path, _GENESIS_OPT],
    peer: Annotated[str, _PEER_OPT],
    key: Annotated[Path | None, _KEY_OPT] = None,
    data_dir: Annotated[Path, _DATA_OPT] = _DEFAULT.data_dir,
) -> None:
    """Print the account's balance, and what it can receive.

    Example: potluck wallet balance --genesis swarm/genesis.json
    --peer /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...
    """

    async def action(wallet: Any) -> None:
        view = await wallet.access.account(wallet.account)
        frozen = " (FROZEN: this account forked its chain)" if view.state.frozen else ""
        print(f"account {wallet.account}")
        print(f"balance {view.state.balance}{frozen}")
        if view.state.slashed:
            state = view.state
            print(f"slashed {state.slashed}, available {state.available}")
        pending = sum(e.amount for e in view.receivable)
        print(f"receivable {pending} in {len(view.receivable)} transfers")

    _run_wallet(genesis, peer, key, data_dir, action)


@wallet_app.command("history")
def wallet_history(
    genesis: Annotated[Path, _GENESIS_OPT],
    peer: Annotated[str, _PEER_OPT],
    key: Annotated[Path | None, _KEY_OPT] = None,
    data_dir: Annotated[Path, _DATA_OPT] = _DEFAULT.data_dir,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 20,
) -> None:
    """Print the account's latest entries, newest first.

    Example: potluck wallet history --genesis swarm/genesis.json --peer /ip4/.../p2p/... --limit 5
    """

    async def action(wallet: Any) -> None:
        for entry in await wallet.history(limit):
            detail = json.dumps(dict(entry.body), sort_keys=True)
            print(f"#{entry.seq} {entry.kind:<10} balance {entry.balance:<8} {detail}")

    _run_wallet(genesis, peer, key, data_dir, action)


@wallet_app.command("send")
def wallet_send(
    to: Annotated[str, typer.Option(help="Account to pay: hex key or peer ID.")],
    amount: Annotated[int, typer.Option(help="Points to send.")],
    genesis: Annotated[Path, _GENESIS_OPT],
    peer: Annotated[str, _PEER_OPT],
    key: Annotated[Path | None, _KEY_OPT] = None,
    data_dir: Annotated[Path, _DATA_OPT] = _DEFAULT.data_dir,
    memo: Annotated[str, typer.Option(help="A note for the receiver.")] = "",
) -> None:
    """Sign a send and store it through the node; prints the entry's hash.

    Example: potluck wallet send --to 12D3KooW... --amount 25
    --genesis swarm/genesis.json --peer /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...
    """
    from potluck.ledger.tools import account_of

    target = account_of(to)

    async def action(wallet: Any) -> None:
        entry = await wallet.send(target, amount, memo)
        print(f"sent {amount} to {target}: entry {entry.hash} (seq {entry.seq})")
        print(f"balance {entry.balance}")

    _run_wallet(genesis, peer, key, data_dir, action)


@wallet_app.command("receive")
def wallet_receive(
    genesis: Annotated[Path, _GENESIS_OPT],
    peer: Annotated[str, _PEER_OPT],
    key: Annotated[Path | None, _KEY_OPT] = None,
    data_dir: Annotated[Path, _DATA_OPT] = _DEFAULT.data_dir,
) -> None:
    """Receive every transfer sent to this account.

    Example: potluck wallet receive --genesis swarm/genesis.json --peer /ip4/.../p2p/...
    """

    async def action(wallet: Any) -> None:
        received = await wallet.receive()
        for entry in received:
            print(f"received: entry {entry.hash} (seq {entry.seq}), balance {entry.balance}")
        if not received:
            print("nothing to receive")

    _run_wallet(genesis, peer, key, data_dir, action)


@wallet_app.command("grant")
def wallet_grant(
    to: Annotated[str, typer.Option(help="Account to grant to: hex key or peer ID.")],
    amount: Annotated[int, typer.Option(help="Points to grant.")],
    genesis: Annotated[Path, _GENESIS_OPT],
    peer: Annotated[str, _PEER_OPT],
    key: Annotated[Path, typer.Option(help="Validator key file (validator-N.key).")],
) -> None:
    """As a validator, grant new points to an account (it then runs `wallet receive`).

    Example: potluck wallet grant --to 12D3KooW... --amount 1000 --key swarm/validator-1.key ...
    """
    from potluck.ledger.tools import account_of

    target = account_of(to)

    async def action(wallet: Any) -> None:
        entry = await wallet.grant(target, amount)
        print(f"granted {amount} to {target}: entry {entry.hash}")

    _run_wallet(genesis, peer, key, Path("/nonexistent"), action)


@wallet_app.command("attest")
def wallet_attest(
    server: Annotated[str, typer.Option(help="Server to vouch for: hex key or peer ID.")],
    genesis: Annotated[Path, _GENESIS_OPT],
    peer: Annotated[str, _PEER_OPT],
    key: Annotated[Path, typer.Option(help="Validator key file (validator-N.key).")],
    hours: Annotated[
        float, typer.Option(help="Hours the attestation lasts (0: no expiry).")
    ] = 24.0,
    memo: Annotated[str, typer.Option(help="Why the server is trusted.")] = "",
) -> None:
    """As a validator, attest that a server is trusted for private routes.

    Example: potluck wallet attest --server 12D3KooW... --key swarm/validator-1.key
    --genesis swarm/genesis.json --peer /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...
    """
    import time

    from potluck.ledger.tools import account_of

    target = account_of(server)
    if hours < 0:
        raise ConfigError("--hours must be 0 (no expiry) or more")
    body: dict[str, Any] = {"server": target}
    if hours:
        body["until"] = int((time.time() + hours * 3600) * 1000)
    if memo:
        body["memo"] = memo

    async def action(wallet: Any) -> None:
        entry = await wallet.write("attest", body)
        print(f"attested {target}: entry {entry.hash}")

    _run_wallet(genesis, peer, key, Path("/nonexistent"), action)


@app.command("generate")
def generate(
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    initial_peers: Annotated[
        list[str], typer.Option("--initial-peers", help="Multiaddresses of peers to join through.")
    ],
    model: Annotated[str, typer.Option(help="Model: 'smollm2' or a checkpoint folder.")] = (
        "smollm2"
    ),
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 32,
    genesis: Annotated[
        Path | None, typer.Option(help="The swarm's genesis.json (needed to pay for priority).")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="Account key file that pays.")] = None,
    priority: Annotated[
        str, typer.Option(help="normal (free) or high (tickets buy priority on every server).")
    ] = "normal",
    route: Annotated[
        str, typer.Option(help="any, or trusted: only attested or --trusted servers.")
    ] = "any",
    trusted: Annotated[
        list[str] | None, typer.Option("--trusted", help="A server you trust (peer ID).")
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option(help="Most quantised weights to accept: none, int8 or nf4 (default any)."),
    ] = None,
    codec: Annotated[
        str,
        typer.Option(
            help="How hidden states travel: float32, float16, bfloat16, int8-block or int8-block/B."
        ),
    ] = "float32",
) -> None:
    """Generate text greedily on the swarm and print it.

    Example: potluck generate "The capital of France is" --initial-peers /ip4/.../p2p/...
    --genesis swarm/genesis.json --key me.key --priority high --route trusted
    [--quant none] [--codec int8-block]
    """
    from transformers import AutoTokenizer

    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.client.session import SessionOptions
    from potluck.ledger.genesis import load_key

    SessionOptions(priority=priority, route=route)  # a typo fails before joining the swarm
    identity = load_key(key) if key is not None else None
    distributed = AutoDistributedModelForCausalLM.from_pretrained(
        model,
        initial_peers=initial_peers,
        genesis=genesis,
        identity=identity,
        trusted_servers=tuple(trusted or ()),
        quant=quant,
        codec=codec,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(distributed.name_or_path)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = distributed.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, priority=priority, route=route
        )
        print(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        session = distributed.last_session_priorities
        if session:
            print(f"classes granted: {', '.join(session)}", file=sys.stderr)
    finally:
        distributed.close()


@ledger_app.command("status")
def ledger_status(
    genesis: Annotated[Path, _GENESIS_OPT],
    data_dir: Annotated[Path, typer.Option(help="The node's data directory.")] = _DEFAULT.data_dir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Entries, accounts, forks, counters and the frontier digest of a replica.

    Two replicas hold the same ledger when their frontier digests are equal.
    Example: potluck ledger status --genesis swarm/genesis.json --data-dir .potluck
    """
    from potluck.ledger.genesis import Genesis
    from potluck.ledger.tools import status

    info = status(data_dir, Genesis.load(genesis))
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    for name in ("swarm", "swarm_id", "entries", "accounts", "final_heads", "frontier_digest"):
        print(f"{name:<16} {info[name]}")
    print(f"{'forks':<16} {len(info['forks'])}")
    for fork in info["forks"]:
        print(f"  account {fork['account']} equivocated at seq {fork['seq']}")
    print(f"{'integrity':<16} {info['integrity_check']}")
    for name, value in sorted(info["counters"].items()):
        print(f"  {name:<30} {value}")


@ledger_app.command("verify")
def ledger_verify(
    genesis: Annotated[Path, _GENESIS_OPT],
    data_dir: Annotated[Path, typer.Option(help="The node's data directory.")] = _DEFAULT.data_dir,
) -> None:
    """Re-check every entry's bytes and signature and rebuild the state from scratch.

    Exits 1 if anything is wrong. Example: potluck ledger verify --genesis swarm/genesis.json
    """
    from rich.progress import Progress

    from potluck.ledger.genesis import Genesis
    from potluck.ledger.tools import verify

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("verifying entries", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = verify(data_dir, Genesis.load(genesis), advance=advance)
    print(f"entries {report.entries}, fraud proofs re-verified {report.forks_checked}")
    print(f"integrity {report.integrity}")
    for problem in report.bad[:50]:
        print(f"BAD {problem}")
    if not report.ok:
        raise typer.Exit(1)
    print("ok")


@ledger_app.command("audit")
def ledger_audit(
    genesis: Annotated[Path, _GENESIS_OPT],
    data_dir: Annotated[Path, typer.Option(help="The node's data directory.")] = _DEFAULT.data_dir,
    model: Annotated[
        str | None,
        typer.Option(help="Model to re-verify slashes with: smollm2 or a folder (default: skip)."),
    ] = None,
) -> None:
    """Check every balance against grants, mints, spends and slashes, and re-verify
    every slash's fraud proof by recomputing the span (with --model).

    Exits 1 if anything is wrong. Example:
    potluck ledger audit --genesis swarm/genesis.json --data-dir node1 --model smollm2
    """
    from rich.table import Table

    from potluck.ledger.genesis import Genesis
    from potluck.verify.audit import audit_ledger

    report = audit_ledger(data_dir, Genesis.load(genesis), model=model)
    table = Table(title=f"{len(report.balances.rows)} accounts")
    for column in ("account", "grants", "mints", "received", "spent", "slashed", "available"):
        table.add_column(column, justify="left" if column == "account" else "right")
    for row in report.balances.rows:
        table.add_row(
            row.account[:16],
            str(row.grants_received),
            str(row.mints_received),
            str(row.sends_received),
            str(row.spent),
            str(row.slashed),
            str(row.available),
        )
    console.print(table)
    for check in report.slashes:
        mark = "ok " if check.ok else "BAD"
        what = f"{check.account[:12]} ({check.reason}, {check.amount} points)"
        print(f"{mark} slash {check.entry[:12]} of {what}: {check.detail}")
    for problem in report.balances.problems:
        print(f"BAD {problem}")
    if not report.ok:
        raise typer.Exit(1)
    print("ok")


@ledger_app.command("export")
def ledger_export(
    genesis: Annotated[Path, _GENESIS_OPT],
    data_dir: Annotated[Path, typer.Option(help="The node's data directory.")] = _DEFAULT.data_dir,
    out: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
) -> None:
    """Write every entry as a JSON line: a list of the canonical entry JSON and its signature.

    Example: potluck ledger export --genesis swarm/genesis.json --out ledger.jsonl
    """
    from potluck.ledger.genesis import Genesis
    from potluck.ledger.tools import export

    swarm = Genesis.load(genesis)
    if out is None:
        count = export(data_dir, swarm, sys.stdout)
    else:
        with out.open("w") as handle:
            count = export(data_dir, swarm, handle)
    console.print(f"exported {count} entries")


def _first_user_error(exc: BaseException) -> PotluckError | None:
    """The `PotluckError` behind `exc`, also when trio wrapped it in exception groups."""
    if isinstance(exc, PotluckError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_user_error(inner)
            if found is not None:
                return found
    return None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        error = _first_user_error(exc)
        if error is None:
            raise
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        sys.exit(2)
