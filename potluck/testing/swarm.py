"""Real node processes on 127.0.0.1, started and stopped by PID.

Used by the integration tests, the benchmarks and `potluck demo`. Each node
is `python -m potluck node start ...` in its own data directory; it is ready
when it has written `node.json` there. `stop()` sends SIGTERM, waits, and
SIGKILLs whatever is left, so nothing outlives the swarm.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

import potluck
from potluck.errors import PotluckError
from potluck.node.run import READY_FILE

if TYPE_CHECKING:
    from potluck.ledger.genesis import Genesis
    from potluck.ledger.wallet import Wallet
    from potluck.p2p.identity import Identity

_T = TypeVar("_T")


class NodeStartError(PotluckError):
    """A node process exited or stayed silent instead of becoming ready."""


@dataclass
class NodeProcess:
    """One running `potluck node start` process."""

    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def addr(self) -> str:
        addrs = self.info.get("addrs")
        assert isinstance(addrs, list) and addrs
        return str(addrs[0])

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=10)


class LocalSwarm:
    """A set of node processes on loopback sharing one working directory."""

    def __init__(self, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        # nodes run the same potluck as this process, wherever they are started from
        root = str(Path(potluck.__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, self.env.get("PYTHONPATH", "")) if p
        )
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.nodes: list[NodeProcess] = []
        self._logs: list[IO[bytes]] = []

    @property
    def bootstrap_addrs(self) -> list[str]:
        return [self.nodes[0].addr] if self.nodes else []

    def start_node(
        self,
        name: str,
        *,
        model: str | None = None,
        blocks: str | None = None,
        initial_peers: Sequence[str] | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
        timeout: float = 120.0,
    ) -> NodeProcess:
        data_dir = self.workdir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / READY_FILE).unlink(missing_ok=True)
        peers = self.bootstrap_addrs if initial_peers is None else list(initial_peers)
        cmd = [sys.executable, "-m", "potluck", "node", "start", "--data-dir", str(data_dir)]
        if model is not None:
            cmd += ["--model", model]
        if blocks is not None:
            cmd += ["--blocks", blocks]
        for peer in peers:
            cmd += ["--initial-peers", peer]
        cmd += list(extra)
        log_path = data_dir / "node.log"
        log = log_path.open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        node = NodeProcess(name, data_dir, process, log_path)
        self.nodes.append(node)
        if wait:
            self.wait_ready(node, timeout=timeout)
        return node

    def wait_ready(self, node: NodeProcess, *, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        ready = node.data_dir / READY_FILE
        while time.monotonic() < deadline:
            if ready.exists():
                node.info = json.loads(ready.read_text())
                return
            if not node.alive():
                raise NodeStartError(
                    f"node {node.name} exited with {node.process.returncode}:\n{node.log_tail()}"
                )
            time.sleep(0.1)
        raise NodeStartError(
            f"node {node.name} not ready after {timeout:.0f} s:\n{node.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node, wait, then SIGKILL what is left."""
        for node in self.nodes:
            if node.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                node.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                node.kill(signal.SIGKILL)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ledger_genesis(folder: Path, model: Path, name: str, **economy: Any) -> tuple[Path, Path]:
    """A one-validator genesis for `model` in `folder`: its path and the validator's key.

    `economy` overrides `Economy` fields (checkpoints every 2 s unless given)."""
    from potluck.ledger.genesis import Economy, init_swarm
    from potluck.model import model_identity

    economy.setdefault("checkpoint_seconds", 2)
    _, (key,) = init_swarm(
        folder,
        name=name,
        model_name=model.name,
        model_identity=model_identity(model),
        validators=1,
        economy=Economy(**economy),
    )
    return folder / "genesis.json", key


def with_wallet(
    addr: str, genesis: Genesis, identity: Identity, fn: Callable[[Wallet], Awaitable[_T]]
) -> _T:
    """Run `fn(wallet)` for `identity`'s account, through the node at `addr`, on a
    libp2p host of its own."""
    from potluck.client.runtime import ClientRuntime
    from potluck.ledger.wallet import RemoteReplica, Wallet
    from potluck.p2p.host import parse_multiaddr

    runtime = ClientRuntime(identity)
    try:
        peer = str(parse_multiaddr(addr).get_peer_id())
        access = RemoteReplica(runtime.host, peer, [addr])
        wallet = Wallet(identity, genesis.swarm_id, access, validators=genesis.validators)
        return runtime.run(fn, wallet)
    finally:
        runtime.close()
