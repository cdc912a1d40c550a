"""The node's one typed config.

Every field carries its help text; the CLI flags of `potluck node start` are
generated from these fields, so the flags, the defaults and the docs cannot
drift apart. Nothing here reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from potluck.errors import ConfigError
from potluck.wire import DEFAULT_MAX_FRAME, QUANT_MODES


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def parse_blocks(text: str) -> tuple[int, int]:
    """`"4:12"` -> `(4, 12)`: blocks 4 up to, not including, 12."""
    try:
        start_s, end_s = text.split(":")
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise ConfigError(f"--blocks takes START:END, like 0:10, not {text!r}") from None
    if not 0 <= start < end:
        raise ConfigError(f"--blocks {text}: need 0 <= START < END")
    return start, end


def parse_cheat(text: str) -> tuple[float, float]:
    """`"0.1:0.01"` -> `(0.1, 0.01)`: corrupt 10% of outputs by relative error 1e-2.

    The magnitude defaults to 0.01."""
    fraction_s, _, magnitude_s = text.partition(":")
    try:
        fraction = float(fraction_s)
        magnitude = float(magnitude_s) if magnitude_s else 0.01
    except ValueError:
        raise ConfigError(
            f"--cheat takes FRACTION[:MAGNITUDE], like 0.1:0.01, not {text!r}"
        ) from None
    if not (0 < fraction <= 1 and math.isfinite(magnitude) and magnitude > 0):
        raise ConfigError(f"--cheat {text}: need 0 < FRACTION <= 1 and MAGNITUDE > 0")
    return fraction, magnitude


def parse_listen(text: str, *, flag: str = "--dashboard") -> tuple[str, int]:
    """`"127.0.0.1:8000"` -> `("127.0.0.1", 8000)`; a bare port (`"8000"`, `":8000"`)
    listens on loopback; an IPv6 host goes in brackets (`"[::1]:8000"`). Port 0 picks
    a free one."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{flag} takes HOST:PORT, like 127.0.0.1:8000, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag} {text}: the port must be between 0 and 65535")
    if any(c.isspace() or c in "/[]@" for c in host):
        raise ConfigError(f"{flag} {text}: {host!r} is not a host name or IP address")
    return host, port


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one `potluck node start` process."""

    model: str | None = _opt(
        None, "Model to serve: 'smollm2' or a local checkpoint folder. None: bootstrap only."
    )
    blocks: str | None = _opt(
        None, "Blocks to serve as START:END, e.g. 0:10. Default: chosen where the swarm is weakest."
    )
    num_blocks: int | None = _opt(
        None, "Without --blocks: how many blocks to serve (default: what --memory-budget holds)."
    )
    memory_budget: float = _opt(
        0.0, "GiB of weights to hold when choosing how many blocks (0: half the free memory)."
    )
    rebalance_interval: float = _opt(
        60.0, "Without --blocks: seconds between checks whether to move to weaker blocks."
    )
    rebalance_margin: float = _opt(
        0.2, "Move only if the swarm's weakest block gets this much faster (0.2 = 20%)."
    )
    host: str = _opt("127.0.0.1", "Address to listen on.")
    port: int = _opt(0, "TCP port to listen on (0 picks a free one).")
    initial_peers: tuple[str, ...] = _opt((), "Multiaddresses of peers to join through.")
    data_dir: Path = _opt(Path(".potluck"), "Directory for the identity key and state.")  # noqa: RUF009
    dtype: str = _opt("float32", "Compute dtype for the served blocks: float32 or bfloat16.")
    quant: str = _opt(
        "none",
        "Quantise the served blocks' weights: none, int8 or nf4 (bitsandbytes), or "
        "dynamic-int8 (torch, often fastest on CPU). Needs --dtype float32.",
    )
    max_frame: int = _opt(DEFAULT_MAX_FRAME, "Largest message accepted, in bytes.")
    cache_tokens: int = _opt(65536, "KV-cache budget: total tokens reserved by all open sessions.")
    max_session_length: int = _opt(8192, "Longest max_length one session may reserve.")
    sessions_per_peer: int = _opt(16, "Open inference sessions allowed per client peer.")
    session_idle_timeout: float = _opt(300.0, "Seconds before an idle session is dropped.")
    request_timeout: float = _opt(60.0, "Seconds to wait for a peer before giving up.")
    announce_interval: float = _opt(5.0, "Seconds between announcements to known peers.")
    announce_ttl: float = _opt(20.0, "Seconds an announcement stays valid.")
    compute_threads: int = _opt(0, "torch threads for compute (0: torch's default).")
    compute_slots: int = _opt(1, "Computations run at once for any session.")
    paid_slots: int = _opt(
        1, "Extra computations run at once only for sessions with a ticket (paid or private)."
    )
    priority_aging: float = _opt(
        2.0, "Seconds a queued step waits before it moves up one class (normal never starves)."
    )
    paid_reserve_tokens: int = _opt(
        0, "KV-cache tokens only sessions with a ticket may take (0: no reserve)."
    )
    bad_ticket: str = _opt(
        "normal",
        "A session whose ticket fails its checks: 'normal' runs it at normal priority, "
        "'refuse' refuses it.",
    )
    request_log: Path | None = _opt(  # noqa: RUF009
        None,
        "Append one JSON line per session opened, step and forward served (peer, session, "
        "class, tokens) to this file.",
    )
    compute_delay: float = _opt(
        0.0, "TESTING AID: sleep this many seconds before every computation (a slow server)."
    )
    cheat: str | None = _opt(
        None,
        "TESTING AID, makes this server a cheater: corrupt FRACTION of its outputs by "
        "relative error MAGNITUDE (FRACTION[:MAGNITUDE], e.g. 0.1:0.01). Spot-checks catch "
        "it and validators slash it.",
    )
    genesis: Path | None = _opt(  # noqa: RUF009
        None, "Swarm genesis file (potluck swarm init); with it the node keeps a ledger replica."
    )
    validator: bool = _opt(
        False,
        "Act as a validator (needs --validator-key): sign checkpoints; with --model, also "
        "referee disputes, probe servers and mint each epoch.",
    )
    validator_key: Path | None = _opt(  # noqa: RUF009
        None, "Validator key file written by `potluck swarm init` (validator-N.key)."
    )
    ledger_sync_interval: float = _opt(10.0, "Seconds between anti-entropy syncs of the ledger.")
    ledger_page: int = _opt(2000, "Ledger entries per sync page and per push batch.")
    ledger_max_pending: int = _opt(
        20000, "Ledger entries held back while what they depend on has not arrived."
    )
    checkpoint_interval: float = _opt(
        0.0, "Validator: seconds between checkpoints (0: the genesis economy's value)."
    )
    probe_interval: float = _opt(
        0.0, "Validator: seconds between probes of each server (0: the genesis economy's value)."
    )
    dashboard: str | None = _opt(
        None,
        "Serve the read-only web dashboard and its JSON API on HOST:PORT (e.g. 127.0.0.1:8000; "
        "a bare port listens on 127.0.0.1). None: no dashboard.",
    )
    openai_model: str | None = _opt(
        None,
        "With --dashboard: also serve the OpenAI-compatible /v1/completions and "
        "/v1/chat/completions through the swarm, for this model ('smollm2' or a folder).",
    )
    api_keys: Path | None = _opt(  # noqa: RUF009
        None,
        "With --openai-model: a JSON file {api key: account key file}; a request with a key "
        "may pay for priority from that account (needs --genesis).",
    )
    openai_max_tokens: int = _opt(512, "With --openai-model: most tokens one request may ask for.")

    def __post_init__(self) -> None:
        if self.blocks is not None and self.model is None:
            raise ConfigError("--blocks needs --model")
        if self.blocks is not None:
            parse_blocks(self.blocks)
            if self.num_blocks is not None:
                raise ConfigError("give either --blocks or --num-blocks, not both")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError("--num-blocks must be at least 1")
        if not (math.isfinite(self.memory_budget) and self.memory_budget >= 0):
            raise ConfigError("--memory-budget must be 0 (automatic) or more GiB")
        if not (math.isfinite(self.rebalance_margin) and self.rebalance_margin >= 0):
            raise ConfigError("--rebalance-margin must be 0 or more")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--dtype must be float32 or bfloat16, not {self.dtype!r}")
        if self.quant not in QUANT_MODES:
            modes = ", ".join(QUANT_MODES)
            raise ConfigError(f"--quant must be one of {modes}, not {self.quant!r}")
        if self.quant != "none" and self.dtype != "float32":
            raise ConfigError(f"--quant {self.quant} computes in float32: leave --dtype alone")
        for name in ("cache_tokens", "max_session_length", "sessions_per_peer", "max_frame"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        for name in (
            "session_idle_timeout",
            "request_timeout",
            "announce_interval",
            "announce_ttl",
            "rebalance_interval",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a positive number of seconds"
                )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port}")
        if not (math.isfinite(self.compute_delay) and self.compute_delay >= 0):
            raise ConfigError("--compute-delay must be 0 or more seconds")
        if self.compute_slots < 1 or self.paid_slots < 0:
            raise ConfigError("--compute-slots must be at least 1 and --paid-slots at least 0")
        if not (math.isfinite(self.priority_aging) and self.priority_aging > 0):
            raise ConfigError("--priority-aging must be a positive number of seconds")
        if not 0 <= self.paid_reserve_tokens <= self.cache_tokens:
            raise ConfigError("--paid-reserve-tokens must be between 0 and --cache-tokens")
        if self.bad_ticket not in ("normal", "refuse"):
            raise ConfigError(f"--bad-ticket must be normal or refuse, not {self.bad_ticket!r}")
        if self.compute_threads < 0:
            raise ConfigError("--compute-threads must be 0 (torch's default) or more")
        if self.validator and (self.validator_key is None or self.genesis is None):
            raise ConfigError("--validator needs --validator-key and --genesis")
        if self.validator_key is not None and not self.validator:
            raise ConfigError("--validator-key is only used with --validator")
        for name in ("ledger_page", "ledger_max_pending"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.ledger_page > 20000:
            raise ConfigError("--ledger-page must be at most 20000")
        if not (math.isfinite(self.ledger_sync_interval) and self.ledger_sync_interval > 0):
            raise ConfigError("--ledger-sync-interval must be a positive number of seconds")
        if self.cheat is not None:
            parse_cheat(self.cheat)
        if not (math.isfinite(self.probe_interval) and self.probe_interval >= 0):
            raise ConfigError("--probe-interval must be 0 (the genesis value) or more seconds")
        if not (math.isfinite(self.checkpoint_interval) and self.checkpoint_interval >= 0):
            raise ConfigError("--checkpoint-interval must be 0 (genesis value) or more seconds")
        if self.announce_ttl <= self.announce_interval:
            raise ConfigError("--announce-ttl must be longer than --announce-interval")
        if self.dashboard is not None:
            parse_listen(self.dashboard)
        if self.openai_model is not None and self.dashboard is None:
            raise ConfigError("--openai-model needs --dashboard")
        if self.api_keys is not None and self.openai_model is None:
            raise ConfigError("--api-keys needs --openai-model")
        if self.openai_max_tokens < 1:
            raise ConfigError("--openai-max-tokens must be at least 1")

    @property
    def span(self) -> tuple[int, int] | None:
        return None if self.blocks is None else parse_blocks(self.blocks)

    @classmethod
    def help_texts(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}
