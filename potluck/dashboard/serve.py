"""Serving the dashboard inside a node's trio loop, with hypercorn's trio worker.

`run_dashboard` opens a `NodeSource` over the node's swarm view and ledger
file, starts hypercorn on `listen` in a nursery of its own (so handlers run
in the node's `trio.run`, next to libp2p), samples the swarm view for
uptimes, and yields the URL it listens on; leaving the block stops it all.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from fastapi import APIRouter, FastAPI
from hypercorn.config import Config
from hypercorn.trio import serve

from potluck.dashboard.app import create_app
from potluck.dashboard.source import open_node_source
from potluck.errors import ConfigError
from potluck.ledger.genesis import Genesis
from potluck.wire import SwarmView

__all__ = ["run_dashboard", "serve_app"]

log = logging.getLogger("potluck.dashboard")


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_app(
    app: FastAPI,
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `host:port` until cancelled; `started` with the URL (port 0
    picks a free port, and the URL names the one taken)."""
    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    http_log = logging.getLogger("potluck.dashboard.http")
    if http_log.level == logging.NOTSET:
        http_log.setLevel(logging.WARNING)  # hypercorn says "Running on ..." at INFO
    config.errorlog = http_log
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 5.0

    try:  # a taken port or an unknown host is the user's to fix: say so in one line
        sockets = config.create_sockets()
    except OSError as exc:
        raise ConfigError(
            f"the dashboard cannot listen on {_bind(host, port)}: {exc.strerror or exc}"
        ) from None
    for sock in sockets.insecure_sockets:
        if port == 0:  # keep the free port the check found
            config.bind = [_bind(host, sock.getsockname()[1])]
        sock.close()

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        url = binds[0].rstrip("/") + "/"
        task_status.started(url)


@asynccontextmanager
async def run_dashboard(
    host: str,
    port: int,
    *,
    view: Callable[[], SwarmView],
    ledger_path: Path | None,
    genesis: Genesis | None,
    model: str,
    model_identity: str,
    num_blocks: int | None,
    node_id: str | None,
    clock: Callable[[], float],
    routers: Sequence[APIRouter] = (),
) -> AsyncIterator[str]:
    """The dashboard of a running node on `host:port`; yields its URL."""
    async with (
        open_node_source(
            view,
            ledger_path=ledger_path,
            genesis=genesis,
            model=model,
            model_identity=model_identity,
            num_blocks=num_blocks,
            node_id=node_id,
            clock=clock,
        ) as source,
        trio.open_nursery() as nursery,
    ):
        app = create_app(source, routers=routers)
        url: str = await nursery.start(serve_app, app, host, port)
        nursery.start_soon(source.watch)
        log.debug("dashboard on %s", url)
        try:
            yield url
        finally:
            nursery.cancel_scope.cancel()
