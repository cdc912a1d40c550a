"""Time from a server's death to the next token, with the client failing over mid-generation.

A `LocalSwarm` starts a bootstrap node and four servers with redundant
coverage: SmolLM2-135M-Instruct (fp32) over blocks 0:10, 10:20, 10:20 and
20:30, or with `--model tiny` a random 8-block tiny Llama over 0:3, 3:6, 2:7
and 6:8 (as in tests/node/test_failover.py). Servers run with
`--compute-threads 1 --announce-interval 1 --announce-ttl 5`.

    .venv/bin/python benchmarks/recovery.py [--model smollm2|tiny] [--kills 5]
        [--new-tokens 48] [--no-append]

First one undisturbed distributed generation (the warm-up and the token
reference) and a local transformers one. Then, `--kills` times, a fresh
client generates `--new-tokens` tokens greedily with a streamer that stamps
every token with `time.monotonic()` and, once token k is out (k spread over
the generation), SIGKILLs the server on the route that holds the middle
block, stamping the kill. The killed server is restarted afterwards (same
name, data directory, identity and span) and the next run waits until the
client sees two servers on the middle block again.

Per kill: the gap from the kill to the next token ("recovery"), the median
gap between consecutive tokens of the same run outside the prefill and the
kill ("normal"), their ratio, when the client noticed the failure (the
session's "hop ... failed" warning), how long it spent finding a
replacement route, `model.last_session_failovers`, and whether the tokens
equal the undisturbed run. Printed, and appended as a dated section to
docs/benchmarks.md unless `--no-append`.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time, so that --help stays quick
    from potluck.client import DistributedModelForCausalLM, InferenceSession
    from potluck.client.swarm import SwarmClient
    from potluck.testing.swarm import LocalSwarm, NodeProcess

from common import append_to_doc, command_line, load_average, potluck_source

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
COMMAND = ".venv/bin/python benchmarks/recovery.py"
SERVER_FLAGS = ["--compute-threads", "1", "--announce-interval", "1", "--announce-ttl", "5"]
PROMPT = "Explain in a few sentences why the sky is blue."
TINY_PROMPT = [1, 33, 7, 250, 91, 4]
STEP_TIMEOUT = 10.0
ROUTE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Setup:
    """The model and the servers' spans (name -> START:END) of one swarm."""

    label: str
    model: str  # what `--model` the servers and the client get
    spans: dict[str, str]
    block: int  # the block whose server is killed


@dataclass
class KillRun:
    """One generation with a server SIGKILLed after token `at`."""

    at: int
    victim: str  # its name, span and the blocks the route used it for
    replacement: str  # the hop(s) that took over
    recovery_s: float  # kill -> next token
    normal_s: float  # median gap between consecutive tokens of the same run
    detect_s: float | None  # kill -> the session's "hop ... failed" warning
    route_s: float | None  # time in wait_for_route after the kill
    failovers: int
    same: bool  # tokens equal the undisturbed run

    @property
    def rest_s(self) -> float | None:
        """Kill -> next token, less noticing and routing: open + replay + rest of the step."""
        if self.detect_s is None or self.route_s is None:
            return None
        return self.recovery_s - self.detect_s - self.route_s


# -- helpers --------------------------------------------------------------------


def kill_points(kills: int, new_tokens: int) -> list[int]:
    """`kills` tokens spread from the 2nd to the 4th-last, after which to kill."""
    first, last = 2, new_tokens - 3
    if kills == 1:
        return [(first + last) // 2]
    return [round(first + i * (last - first) / (kills - 1)) for i in range(kills)]


def normal_gap(times: Sequence[float], at: int | None) -> float:
    """Median gap between consecutive tokens, leaving out the prefill and the kill's gap.

    `times[0]` is when the prompt was streamed (before prefill), `times[i]`
    when token i was.
    """
    gaps = [times[i + 1] - times[i] for i in range(1, len(times) - 1) if i != at]
    return statistics.median(gaps)


class WarningClock(logging.Handler):
    """Stamps the session's warnings with `time.monotonic()`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.getMessage()))


class KillStreamer:
    """A streamer: a timestamp per token; SIGKILLs the middle block's server after token `at`."""

    def __init__(
        self, swarm: LocalSwarm, model: DistributedModelForCausalLM, block: int, at: int | None
    ) -> None:
        self.swarm, self.model, self.block, self.at = swarm, model, block, at
        self.times: list[float] = []  # [0]: the prompt, [i]: token i
        self.session: InferenceSession | None = None
        self.victim: NodeProcess | None = None
        self.killed_hop: tuple[int, int] = (0, 0)  # the blocks the route used it for
        self.kill_time: float | None = None

    def put(self, value: Any) -> None:
        self.times.append(time.monotonic())
        self.session = self.model.current_session or self.session
        if self.at is not None and len(self.times) - 1 == self.at and self.victim is None:
            assert self.session is not None, "generate() runs without a session"
            hop = next(h for h in self.session.route if h.start <= self.block < h.end)
            self.victim = node_of(self.swarm, hop.peer_id)
            self.killed_hop = (hop.start, hop.end)
            self.victim.kill(signal.SIGKILL)  # returns once the process is reaped
            self.kill_time = time.monotonic()

    def end(self) -> None:
        pass


def node_of(swarm: LocalSwarm, peer_id: str) -> NodeProcess:
    return next(n for n in swarm.nodes if n.alive() and n.info.get("peer_id") == peer_id)


def name_of(swarm: LocalSwarm, peer_id: str) -> str:
    """The node name of a peer ID (the latest process with it, alive or not)."""
    names = [n.name for n in swarm.nodes if n.info.get("peer_id") == peer_id]
    return names[-1] if names else peer_id[:16]


def time_route_waits(swarm_client: SwarmClient, waits: list[tuple[float, float]]) -> None:
    """Record (start, end) of every `wait_for_route` call of this client."""
    original = swarm_client.wait_for_route

    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return await original(*args, **kwargs)
        finally:
            waits.append((t0, time.monotonic()))

    swarm_client.wait_for_route = timed  # type: ignore[method-assign]


def wait_for_redundancy(
    model: DistributedModelForCausalLM, block: int, timeout: float = 60.0
) -> None:
    """Refresh the client's view until two live servers hold `block`."""
    from potluck.client.routing import coverage

    deadline = time.monotonic() + timeout
    while True:
        model.runtime.run(model.swarm.refresh, model.runtime.host)
        if coverage(model.swarm.servers(), model.swarm.num_blocks)[block] >= 2:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"block {block} not held twice after {timeout:.0f} s")
        time.sleep(0.5)


# -- the run ------------------------------------------------------------------------


def make_setup(which: str, workdir: Path) -> Setup:
    if which == "tiny":
        from potluck.testing.models import make_tiny_llama

        path = make_tiny_llama(workdir / "llama8", num_layers=8, seed=5, initializer_range=0.5)
        spans = {"a": "0:3", "b": "3:6", "c": "2:7", "d": "6:8"}
        return Setup("tiny random Llama, 8 blocks, hidden 64, fp32", str(path), spans, 4)
    spans = {"a": "0:10", "b": "10:20", "c": "10:20", "d": "20:30"}
    return Setup("SmolLM2-135M-Instruct, 30 blocks, fp32", "smollm2", spans, 15)


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.model import resolve_model
    from potluck.testing.swarm import LocalSwarm

    load_before = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="potluck-recovery-"))
    setup = make_setup(args.model, workdir)
    path = resolve_model(setup.model)
    kwargs: dict[str, Any] = {
        "do_sample": False,
        "min_new_tokens": args.new_tokens,
        "max_new_tokens": args.new_tokens,
    }
    if args.model == "tiny":
        prompt_ids = torch.tensor([TINY_PROMPT])
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        messages = [{"role": "user", "content": PROMPT}]
        prompt_ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        kwargs["pad_token_id"] = tokenizer.eos_token_id
    local = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    local_tokens = local.generate(prompt_ids, **kwargs)[0, prompt_ids.shape[1] :].tolist()
    del local

    warnings = WarningClock()
    logging.getLogger("potluck.client.session").addHandler(warnings)
    swarm = LocalSwarm(workdir / "swarm")
    runs: list[KillRun] = []
    try:
        swarm.start_node("boot", extra=SERVER_FLAGS)
        servers = [
            swarm.start_node(name, model=setup.model, blocks=span, extra=SERVER_FLAGS, wait=False)
            for name, span in setup.spans.items()
        ]
        for node in servers:
            swarm.wait_ready(node)

        def generate(
            at: int | None,
        ) -> tuple[list[int], KillStreamer, int, list[tuple[float, float]]]:
            model = AutoDistributedModelForCausalLM.from_pretrained(
                path,
                initial_peers=swarm.bootstrap_addrs,
                step_timeout=STEP_TIMEOUT,
                route_timeout=ROUTE_TIMEOUT,
            )
            waits: list[tuple[float, float]] = []
            try:
                wait_for_redundancy(model, setup.block)
                time_route_waits(model.swarm, waits)
                streamer = KillStreamer(swarm, model, setup.block, at)
                out = model.generate(prompt_ids, streamer=streamer, **kwargs)
                failovers = model.last_session_failovers
            finally:
                model.close()
            return out[0, prompt_ids.shape[1] :].tolist(), streamer, failovers, waits

        print("undisturbed run ...", flush=True)
        reference, plain, _, _ = generate(None)
        undisturbed_gap = normal_gap(plain.times, None)
        same_as_local = reference == local_tokens
        print(f"  normal gap {1000 * undisturbed_gap:.1f} ms; equals local: {same_as_local}")

        for at in kill_points(args.kills, args.new_tokens):
            warnings.records.clear()
            tokens, streamer, failovers, waits = generate(at)
            victim, kill_time, session = streamer.victim, streamer.kill_time, streamer.session
            if victim is None or kill_time is None or session is None:
                raise SystemExit(f"nobody was killed after token {at}")
            span = setup.spans[victim.name]
            next_token = streamer.times[at + 1]
            detect = [t for t, msg in warnings.records if t >= kill_time and "failed" in msg]
            route = [end - start for start, end in waits if start >= kill_time]
            first, last = streamer.killed_hop
            replaced = [
                f"{name_of(swarm, h.peer_id)} {h.start}:{h.end}"
                for h in session.route
                if first <= h.start and h.end <= last
            ]
            result = KillRun(
                at=at,
                victim=f"{victim.name} (serves {span}) for {first}:{last}",
                replacement=", ".join(replaced),
                recovery_s=next_token - kill_time,
                normal_s=normal_gap(streamer.times, at),
                detect_s=detect[0] - kill_time if detect else None,
                route_s=sum(route) if route else None,
                failovers=failovers,
                same=tokens == reference,
            )
            runs.append(result)
            print(
                f"kill {victim.name} ({span}) after token {at}: next token "
                f"{1000 * result.recovery_s:.1f} ms later "
                f"(normal {1000 * result.normal_s:.1f} ms); "
                f"failovers {failovers}; same tokens: {result.same}",
                flush=True,
            )
            swarm.start_node(victim.name, model=setup.model, blocks=span, extra=SERVER_FLAGS)
    finally:
        logging.getLogger("potluck.client.session").removeHandler(warnings)
        swarm.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with the nodes' logs, on failure
    report(
        args,
        setup,
        runs,
        undisturbed_gap,
        same_as_local,
        prompt_ids.shape[1],
        (load_before, load_average()),
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def report(
    args: argparse.Namespace,
    setup: Setup,
    runs: list[KillRun],
    undisturbed_gap: float,
    reference_is_local: bool,
    prompt_tokens: int,
    loads: tuple[str, str],
) -> None:
    import torch

    rows = [
        "| kill after token | killed | replaced by (hops now on those blocks) "
        "| kill -> next token (ms) | normal gap (ms) "
        "| ratio | kill -> failure noticed (ms) | finding a route (ms) "
        "| the rest: open, replay, rest of the step (ms) | failovers | tokens = undisturbed |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r.at} | {r.victim} | {r.replacement} | {_ms(r.recovery_s)} | {_ms(r.normal_s)} "
            f"| {r.recovery_s / r.normal_s:.1f} | {_ms(r.detect_s)} | {_ms(r.route_s)} "
            f"| {_ms(r.rest_s)} | {r.failovers} | {'yes' if r.same else 'NO'} |"
            for r in runs
        ),
    ]
    recovery = statistics.median(r.recovery_s for r in runs)
    normal = statistics.median(r.normal_s for r in runs)
    same = all(r.same for r in runs)
    summary = [
        f"- median kill -> next token: **{1000 * recovery:.1f} ms**; median normal gap between "
        f"tokens: **{1000 * normal:.1f} ms** (undisturbed run: {1000 * undisturbed_gap:.1f} ms); "
        f"ratio **{recovery / normal:.1f}**; extra time per kill "
        f"{1000 * (recovery - normal):.1f} ms",
        f"- tokens equal the undisturbed run after every kill: **{'yes' if same else 'NO'}**; "
        f"the undisturbed run equals local transformers: "
        f"**{'yes' if reference_is_local else 'NO'}**",
        f"- `last_session_failovers` per run: {', '.join(str(r.failovers) for r in runs)}",
    ]
    print()
    print("\n".join(rows))
    print("\n".join(summary))
    print(f"load average {loads[0]} -> {loads[1]}; potluck from {potluck_source()}")
    if args.no_append:
        return
    spans = ", ".join(f"{name} {span}" for name, span in setup.spans.items())
    section = [
        f"## Recovery: a server SIGKILLed mid-generation ({datetime.date.today()})",
        "",
        f"{setup.label}; a bootstrap node and four servers ({spans}) as separate "
        f"processes on 127.0.0.1 (`LocalSwarm`), servers with `{' '.join(SERVER_FLAGS)}`. "
        f"Each run: a fresh client (`step_timeout={STEP_TIMEOUT:g}`, "
        f"`route_timeout={ROUTE_TIMEOUT:g}`) generates {args.new_tokens} tokens greedily "
        f"after a {prompt_tokens}-token prompt, with a streamer that stamps each token "
        "(`time.monotonic()`) and, once the given token is out, SIGKILLs the server on the "
        f"route holding block {setup.block} (the kill is stamped once the process is "
        "reaped); the server is restarted with the same identity and span afterwards. "
        "Normal gap: median gap between consecutive tokens of the same run, prefill and the "
        "kill's gap left out. Failure noticed: the session's `hop ... failed` warning. "
        "Finding a route: time in `SwarmClient.wait_for_route` after the kill. The rest: "
        "opening the replacement's session, replaying the failed hop's inputs (prompt and "
        "every token so far) as one prefill, then the hops after it and the client's head.",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__}; Python {platform.python_version()}; 1-minute load average "
        f"{loads[0]} before and {loads[1]} after; potluck from {potluck_source()}.",
        "",
        *rows,
        "",
        *summary,
        "",
        f"Command: `{command_line(COMMAND, __file__)}`",
        "",
    ]
    append_to_doc("\n".join(section))


def main(argv: Sequence[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--model",
        choices=["smollm2", "tiny"],
        default="smollm2",
        help="SmolLM2 over 4 servers (default) or a tiny random 8-block Llama",
    )
    parser.add_argument("--kills", type=int, default=5, help="runs with a kill (default 5)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens per run (default 48)")
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.new_tokens < 8:
        parser.error("--kills must be at least 1 and --new-tokens at least 8")
    run(args)


if __name__ == "__main__":
    main()
