"""The `potluck` command: thin wrappers over the Python API.

A user mistake (a bad flag, a missing model, an unreachable peer) prints one
readable line and exits with status 2; it never shows a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from potluck.errors import PotluckError
from potluck.node.config import NodeConfig

app = typer.Typer(
    help="Potluck: a volunteer swarm for LLM inference with a ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run a node of the swarm.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect models.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(model_app, name="model")

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
) -> None:
    """Serve blocks of a model to the swarm (or, without --model, act as a bootstrap peer).

    Example: potluck node start --model smollm2 --blocks 0:10
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
    )

    def ready(server: object) -> None:
        from potluck.node.server import Server

        assert isinstance(server, Server)
        span = server.span
        what = "bootstrap peer" if span is None else f"blocks {span.start}:{span.end}"
        for addr in server.host.addrs:
            print(f"potluck node listening on {addr}", flush=True)
        print(f"ready: serving {what}; Ctrl-C stops", flush=True)

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
    """Start a bootstrap node and three servers on 127.0.0.1 and chat through them.

    Example: potluck demo --keep-running
    """
    from potluck.demo import run_demo

    run_demo(
        keep_running=keep_running, prompt=prompt, max_new_tokens=max_new_tokens, workdir=workdir
    )


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
