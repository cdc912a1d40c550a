"""Per-step latency of a paid session and of a normal one on a saturated server.

What high priority buys, measured on real processes. For each setting a
`LocalSwarm` starts a bootstrap node with a one-validator genesis
(`ledger_genesis`, `spot_check_rate=0`, `priority_price=10`) and ONE server
holding every block of the model, with `--compute-threads 1 --compute-slots 1
--paid-slots N --request-log FILE` (and the swarm's genesis). The validator's
key grants points to the client's identity (`with_wallet`), as in
tests/node/test_priority.py. Settings:

- `smollm2`: SmolLM2-135M-Instruct (fp32), all 30 blocks, real compute and no
  artificial delay, `--paid-slots 1` (the default: one slot kept for sessions
  with a ticket, beside the general one);
- `smollm2-no-lane`: the same with `--paid-slots 0`, i.e. strict class
  priority plus aging only, to show what the reserved slot buys;
- `tiny` and `tiny-no-lane`: a random 6-block tiny Llama (hidden 64) with
  `--compute-delay 0.05`, a compute-free baseline where a step is a 50 ms
  sleep (the setting of the test).

    .venv/bin/python benchmarks/priority.py [--runs 3] [--steps 40]
        [--settings smollm2,smollm2-no-lane,tiny,tiny-no-lane]
        [--no-interference] [--no-write]

Every client lives in this process, each model object with its own libp2p
host and trio thread: one bought `priority="high"` (its sessions must be
granted class `paid`), five are free (`normal`). A session is stepped with
`session.step(torch.randn(1, 1, hidden))`, one token per step (decode), each
timed with `time.perf_counter()` around the call. Per run (`--runs`, each on
fresh sessions, the swarm kept), in this order:

1. idle: a paid session and a normal session (the "extra" one) are opened; each
   alone takes 3 warm-up steps and then `--steps` timed steps (the two kinds
   alternate which goes first from run to run);
2. load: 4 more normal sessions, each in its own thread, step in a closed loop
   (each always has a step queued or running: it sends the next step the
   moment the last one returns) until every one of them has done 3 steps;
3. loaded: the paid session takes `--steps` timed steps, then the extra normal
   session does (the order alternates from run to run), the 4 load sessions
   still stepping; then the load stops and the sessions close.

Per run and kind: median and p95 (`statistics.quantiles(n=20)[-1]`) of the
step times; the ratios loaded / idle of the same kind (median to median, p95
to p95). The normal share is counted from the server's request log (one JSON
line per step served: `kind` "step", `time`, `session`, `priority`): among
the steps that finished while the paid session was being measured, the share
whose class was `normal`. While the paid session is measured, the CPU time the
server process (/proc/PID/stat) and this process (every client; `os.times`)
used is divided by the wall time: cores busy. Over the whole run, the CPU time
all cores spent busy (/proc/stat) less that of the server, the bootstrap node
and this process, per second: the other processes' cores, which show a run
that shared the machine with other work. Each timed step of the paid session
is also split at the server's log line for it (the server writes it once the
step is computed, before the reply; both processes read the same clock): sent
-> logged (transport, queueing, compute, bookkeeping) and logged -> back at
the client (the reply). The table gives the medians over
the runs of each figure; the target, from the issue, is a paid p95 at most
1.5x its idle p95 with the normal sessions still getting at least 20% of the
steps served.

Unless `--no-interference`, before any swarm starts, this process times a
decode step of the whole of SmolLM2 (`BlockSpan` 0:30, 1 torch thread, as the
server computes it; medians of 40 steps): alone; with a second thread of this
process running the same steps (the server's two slots busy at once: the GIL,
cores, caches and memory bandwidth shared); with another process running the
same steps (everything but the GIL shared); and alone again, to show whether
the machine stayed quiet.

Printed, and appended as a dated section to docs/benchmarks.md unless
`--no-write`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time, so that --help stays quick
    from potluck.client import DistributedModelForCausalLM, InferenceSession

from common import append_to_doc, command_line, load_average, potluck_source

COMMAND = ".venv/bin/python benchmarks/priority.py"
FAST = ["--announce-interval", "0.5", "--announce-ttl", "3", "--ledger-sync-interval", "1"]
LOAD_SESSIONS = 4
WARMUP = 3
PRICE = 10  # points per 1000 tokens x blocks
GRANT = 100_000
PAID_LENGTH = 256  # max_length of the paid and the extra normal session
LOAD_LENGTH = 4096  # max_length of a load session (free)
TARGET_RATIO = 1.5
TARGET_SHARE = 0.2
INTERFERENCE_STEPS = 40


@dataclass(frozen=True)
class Setting:
    """One swarm: the model its server holds and how it schedules."""

    key: str
    label: str
    model: str  # "smollm2" or "tiny"
    paid_slots: int
    delay: float  # --compute-delay


SETTINGS = {
    s.key: s
    for s in (
        Setting("smollm2", "SmolLM2, 30 blocks, --paid-slots 1", "smollm2", 1, 0.0),
        Setting("smollm2-no-lane", "SmolLM2, 30 blocks, --paid-slots 0", "smollm2", 0, 0.0),
        Setting("tiny", "tiny Llama, --compute-delay 0.05, --paid-slots 1", "tiny", 1, 0.05),
        Setting(
            "tiny-no-lane", "tiny Llama, --compute-delay 0.05, --paid-slots 0", "tiny", 0, 0.05
        ),
    )
}


@dataclass(frozen=True)
class Run:
    """One run's figures (seconds, shares, cores)."""

    load: str  # 1-minute load average when the run started
    idle_paid: list[float]
    idle_normal: list[float]
    loaded_paid: list[float]
    loaded_normal: list[float]
    normal_share: float  # of the steps served while the paid session was measured
    window_steps: int  # how many steps the server finished in that window
    load_sessions_served: int  # load sessions with a step in that window
    server_cores: float  # CPU of the server process / wall time, same window
    client_cores: float  # CPU of this process (every client) / wall time, same window
    other_cores: float  # CPU of every other process on the machine / wall time, whole run
    paid_idle_split: tuple[float, float]  # medians: sent -> logged, logged -> returned
    paid_loaded_split: tuple[float, float]


@dataclass(frozen=True)
class Interference:
    """Median decode step of SmolLM2 0:30, 1 torch thread, with and without a neighbour."""

    alone: float
    with_thread: float  # a second thread of this process running the same steps
    with_process: float  # another process running the same steps
    alone_after: float  # alone again, after the others


def p95(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


Stamps = dict[tuple[str, int], tuple[float, float]]
"""(session id, step) -> wall-clock times (`time.time()`) the step was sent and returned."""


def timed_steps(
    session: InferenceSession, n: int, hidden: int, stamps: Stamps | None = None
) -> list[float]:
    import torch

    times = []
    for _ in range(n):
        x = torch.randn(1, 1, hidden)
        hop = session.hops[0]
        key = (hop.session_id, hop.step)
        w0, t0 = time.time(), time.perf_counter()
        session.step(x)
        times.append(time.perf_counter() - t0)
        if stamps is not None:
            stamps[key] = (w0, time.time())
    return times


def split(stamps: Stamps, logged: dict[tuple[str, int], float]) -> tuple[float, float]:
    """Medians of (sent -> the server logged it, logged -> back at the client) over `stamps`.

    The server logs a step once computed, before it sends the reply; one clock serves both
    processes."""
    pairs = [(logged[k] - w0, w1 - logged[k]) for k, (w0, w1) in stamps.items() if k in logged]
    if not pairs:
        return (float("nan"), float("nan"))
    return (med([a for a, _ in pairs]), med([b for _, b in pairs]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, every thread (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every core spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Load:
    """Normal sessions stepping in a closed loop, each in its own thread."""

    def __init__(self, models: Sequence[DistributedModelForCausalLM], hidden: int) -> None:
        self.models, self.hidden = models, hidden
        self.stop_event = threading.Event()
        self.steps = [0] * len(models)
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(len(models))]

    def _run(self, i: int) -> None:
        import torch

        try:
            with self.models[i].inference_session(max_length=LOAD_LENGTH) as session:
                while not self.stop_event.is_set():
                    session.step(torch.randn(1, 1, self.hidden))
                    self.steps[i] += 1
        except Exception as exc:  # noqa: BLE001 (reported by the main thread)
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 120
        while min(self.steps) < WARMUP and not self.errors:
            if time.monotonic() > deadline:
                raise SystemExit(f"load sessions stuck: steps {self.steps}")
            time.sleep(0.05)
        self.check()
        return self

    def check(self) -> None:
        if self.errors:
            raise SystemExit(f"a load session failed: {self.errors[0]!r}")

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=120)


# -- interference: what two slots at once cost on this machine ------------------------

NEIGHBOUR = """
import sys, torch
from potluck.model import BlockSpan
torch.set_num_threads(1)
span = BlockSpan.load(sys.argv[1], 0, 30)
x = torch.randn(1, 1, span.config.hidden_size)
print("ready", flush=True)
while True:
    cache = span.new_cache()
    for _ in range(64):
        span.forward(x, cache)
"""


def interference(path: Path) -> Interference:
    import torch

    from potluck.model import BlockSpan

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        span = BlockSpan.load(path, 0, 30)
        x = torch.randn(1, 1, span.config.hidden_size)

        def steps(n: int, stop: threading.Event | None = None) -> float:
            """The median of `n` decode steps (or of those until `stop` is set)."""
            times: list[float] = []
            cache = span.new_cache()
            span.forward(x, cache)  # warm-up
            while (stop is None and len(times) < n) or (stop is not None and not stop.is_set()):
                if len(times) % 64 == 63:
                    cache = span.new_cache()
                t0 = time.perf_counter()
                span.forward(x, cache)
                times.append(time.perf_counter() - t0)
            return med(times) if times else 0.0

        def beside_thread(target: Callable[[threading.Event], object]) -> float:
            stop = threading.Event()
            neighbour = threading.Thread(target=target, args=(stop,))
            neighbour.start()
            try:
                time.sleep(0.3)
                return steps(INTERFERENCE_STEPS)
            finally:
                stop.set()
                neighbour.join()

        alone = steps(INTERFERENCE_STEPS)
        with_thread = beside_thread(lambda stop: steps(0, stop))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-c", NEIGHBOUR, str(path)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("the neighbour process did not start")
            time.sleep(0.5)
            with_process = steps(INTERFERENCE_STEPS)
        finally:
            proc.kill()
            proc.wait()
        alone_after = steps(INTERFERENCE_STEPS)
    finally:
        torch.set_num_threads(threads_before)
    return Interference(alone, with_thread, with_process, alone_after)


# -- one swarm ------------------------------------------------------------------------


def run_setting(setting: Setting, runs: int, steps: int, workdir: Path) -> list[Run]:
    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.ledger.genesis import Genesis, load_key
    from potluck.model import resolve_model
    from potluck.p2p.identity import Identity
    from potluck.testing.swarm import LocalSwarm, ledger_genesis, with_wallet

    folder = workdir / setting.key
    if setting.model == "tiny":
        from potluck.testing.models import make_tiny_llama

        path = make_tiny_llama(folder / "llama6", num_layers=6, seed=3, initializer_range=0.5)
        server_model, blocks = str(path), "0:6"
    else:
        path, server_model, blocks = resolve_model("smollm2"), "smollm2", "0:30"
    genesis_path, key = ledger_genesis(
        folder / "swarm", path, "priority", spot_check_rate=0.0, priority_price=PRICE
    )
    genesis = Genesis.load(genesis_path)
    log_path = folder / "requests.jsonl"
    client = Identity.generate()
    results: list[Run] = []
    with LocalSwarm(folder / "nodes") as swarm:
        flags = ["--genesis", str(genesis_path), *FAST]
        boot = swarm.start_node("boot", extra=flags)
        server = swarm.start_node(
            "server",
            model=server_model,
            blocks=blocks,
            extra=[
                *flags,
                "--compute-threads",
                "1",
                "--compute-delay",
                str(setting.delay),
                "--compute-slots",
                "1",
                "--paid-slots",
                str(setting.paid_slots),
                "--request-log",
                str(log_path),
            ],
        )
        with_wallet(
            boot.addr,
            genesis,
            load_key(key),
            lambda validator: validator.grant(client.public_bytes.hex(), GRANT),
        )

        def open_model(identity: Identity | None = None) -> DistributedModelForCausalLM:
            return AutoDistributedModelForCausalLM.from_pretrained(
                path,
                initial_peers=[boot.addr],
                genesis=genesis_path,
                identity=identity,
                step_timeout=60,
            )

        paid_model = open_model(client)
        models = [open_model() for _ in range(1 + LOAD_SESSIONS)]
        extra_model, load_models = models[0], models[1:]
        hidden = int(paid_model.config.hidden_size)
        try:
            for i in range(runs):
                results.append(
                    one_run(
                        i,
                        paid_model,
                        extra_model,
                        load_models,
                        hidden,
                        steps,
                        log_path,
                        (server.pid, boot.pid),
                    )
                )
                r = results[-1]
                print(
                    f"  run {i + 1}: paid p95 {1e3 * p95(r.idle_paid):.1f} -> "
                    f"{1e3 * p95(r.loaded_paid):.1f} ms, normal p95 "
                    f"{1e3 * p95(r.idle_normal):.1f} -> {1e3 * p95(r.loaded_normal):.1f} ms, "
                    f"normal share {100 * r.normal_share:.0f}% of {r.window_steps} steps, "
                    f"cores server {r.server_cores:.2f} clients {r.client_cores:.2f}, "
                    f"other processes {r.other_cores:.2f} over the run",
                    flush=True,
                )
        finally:
            for model in (paid_model, *models):
                model.close()
    return results


def one_run(
    i: int,
    paid_model: DistributedModelForCausalLM,
    extra_model: DistributedModelForCausalLM,
    load_models: Sequence[DistributedModelForCausalLM],
    hidden: int,
    steps: int,
    log_path: Path,
    pids: tuple[int, int],
) -> Run:
    """One run; `pids` are the server's and the bootstrap node's."""
    server_pid = pids[0]
    load = load_average()

    def ours() -> float:
        return sum(cpu_seconds(pid) for pid in pids) + own_cpu_seconds()

    busy0, ours0, start = machine_busy_seconds(), ours(), time.perf_counter()
    with (
        paid_model.inference_session(max_length=PAID_LENGTH, priority="high") as paid,
        extra_model.inference_session(max_length=PAID_LENGTH) as extra,
    ):
        if paid.priorities != ["paid"] or extra.priorities != ["normal"]:
            raise SystemExit(f"classes granted: paid {paid.priorities}, extra {extra.priorities}")
        paid_id = paid.hops[0].session_id

        paid_idle: Stamps = {}
        paid_loaded: Stamps = {}

        def measure(session: InferenceSession) -> list[float]:
            timed_steps(session, WARMUP, hidden)
            return timed_steps(session, steps, hidden, paid_idle if session is paid else None)

        kinds: list[tuple[str, InferenceSession]] = [("paid", paid), ("normal", extra)]
        if i % 2:
            kinds.reverse()
        idle = {kind: measure(session) for kind, session in kinds}
        loaded: dict[str, list[float]] = {}
        window = (0.0, 0.0)
        cores = (0.0, 0.0)
        with Load(load_models, hidden) as running:
            for kind, session in kinds:
                if kind == "paid":
                    cpu0, own0 = cpu_seconds(server_pid), own_cpu_seconds()
                    t0, w0 = time.time(), time.perf_counter()
                    loaded[kind] = timed_steps(session, steps, hidden, paid_loaded)
                    t1, w1 = time.time(), time.perf_counter()
                    wall = w1 - w0
                    cores = (
                        (cpu_seconds(server_pid) - cpu0) / wall,
                        (own_cpu_seconds() - own0) / wall,
                    )
                    window = (t0, t1)
                else:
                    loaded[kind] = timed_steps(session, steps, hidden)
                running.check()
        others = machine_busy_seconds() - busy0 - (ours() - ours0)
        other_cores = max(0.0, others) / (time.perf_counter() - start)
    time.sleep(0.2)  # the server's log is line-buffered; let the last lines land
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    served = [
        r for r in records if r.get("kind") == "step" and window[0] <= float(r["time"]) <= window[1]
    ]
    if any(r["priority"] != "paid" for r in served if r["session"] == paid_id):
        raise SystemExit("the server logged a step of the paid session in another class")
    normal = [r for r in served if r["priority"] == "normal"]
    logged = {
        (r["session"], int(r["step"])): float(r["time"])
        for r in records
        if r.get("kind") == "step" and r["session"] == paid_id
    }
    return Run(
        load=load,
        idle_paid=idle["paid"],
        idle_normal=idle["normal"],
        loaded_paid=loaded["paid"],
        loaded_normal=loaded["normal"],
        normal_share=len(normal) / max(1, len(served)),
        window_steps=len(served),
        load_sessions_served=len({r["session"] for r in normal}),
        server_cores=cores[0],
        client_cores=cores[1],
        other_cores=other_cores,
        paid_idle_split=split(paid_idle, logged),
        paid_loaded_split=split(paid_loaded, logged),
    )


# -- report ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


def summarise(runs: Sequence[Run]) -> dict[str, float]:
    """Medians over the runs of each run's figures."""

    def over(fn: Callable[[Run], float]) -> float:
        return med([fn(r) for r in runs])

    return {
        "idle_paid_med": over(lambda r: med(r.idle_paid)),
        "idle_paid_p95": over(lambda r: p95(r.idle_paid)),
        "loaded_paid_med": over(lambda r: med(r.loaded_paid)),
        "loaded_paid_p95": over(lambda r: p95(r.loaded_paid)),
        "idle_normal_med": over(lambda r: med(r.idle_normal)),
        "idle_normal_p95": over(lambda r: p95(r.idle_normal)),
        "loaded_normal_med": over(lambda r: med(r.loaded_normal)),
        "loaded_normal_p95": over(lambda r: p95(r.loaded_normal)),
        "paid_ratio_med": over(lambda r: med(r.loaded_paid) / med(r.idle_paid)),
        "paid_ratio_p95": over(lambda r: p95(r.loaded_paid) / p95(r.idle_paid)),
        "normal_ratio_med": over(lambda r: med(r.loaded_normal) / med(r.idle_normal)),
        "normal_ratio_p95": over(lambda r: p95(r.loaded_normal) / p95(r.idle_normal)),
        "share": over(lambda r: r.normal_share),
        "server_cores": over(lambda r: r.server_cores),
        "client_cores": over(lambda r: r.client_cores),
        "idle_up": over(lambda r: r.paid_idle_split[0]),
        "idle_down": over(lambda r: r.paid_idle_split[1]),
        "loaded_up": over(lambda r: r.paid_loaded_split[0]),
        "loaded_down": over(lambda r: r.paid_loaded_split[1]),
    }


def findings(summaries: dict[str, dict[str, float]], inter: Interference | None) -> list[str]:
    """Bullets that read the tables: targets, what the reserved slot buys, interference."""
    lines = []
    for key, s in summaries.items():
        ok = s["paid_ratio_p95"] <= TARGET_RATIO and s["share"] >= TARGET_SHARE
        lines.append(
            f"- {SETTINGS[key].label}: paid p95 loaded / idle **{s['paid_ratio_p95']:.2f}** "
            f"(median {s['paid_ratio_med']:.2f}; target {TARGET_RATIO:g}), normal share "
            f"**{100 * s['share']:.0f}%** (target {100 * TARGET_SHARE:.0f}%): "
            f"{'met' if ok else '**not met**'}"
        )
    for lane, no_lane in (("smollm2", "smollm2-no-lane"), ("tiny", "tiny-no-lane")):
        if lane in summaries and no_lane in summaries:
            a, b = summaries[lane], summaries[no_lane]
            lines.append(
                f"- {SETTINGS[lane].model}: the reserved slot takes the loaded paid step from "
                f"{_ms(b['loaded_paid_med'])} ms (p95 {_ms(b['loaded_paid_p95'])}) without it "
                f"to {_ms(a['loaded_paid_med'])} ms (p95 {_ms(a['loaded_paid_p95'])}) with it; "
                f"idle {_ms(a['idle_paid_med'])} ms"
            )
    if any(SETTINGS[k].paid_slots == 0 for k in summaries):
        lines.append(
            "- Without a reserved slot (`--paid-slots 0`) a running step is never preempted, "
            "and a closed-loop paid session's next step reaches the server only after the "
            "reply to its last one went back to the client; by then the general slot has gone "
            "to a queued normal step, so every paid step waits out one normal step (about "
            "twice its idle latency) and the normal sessions get half of the steps. Aging "
            "plays no part here: no normal step waits anywhere near `--priority-aging` (2 s)."
        )
    lines.append(
        f"- The {LOAD_SESSIONS + 1} normal sessions share the one general slot in arrival "
        "order, so a normal step under load takes about as many idle step times as there "
        "are normal sessions."
    )
    if inter is not None:
        thread, process = inter.with_thread / inter.alone, inter.with_process / inter.alone
        text = "- With the reserved slot a paid step starts at once, beside a running normal one"
        if tiny := summaries.get("tiny"):
            text += (
                " (the tiny setting, whose steps are sleeps: paid loaded / idle median "
                f"{tiny['paid_ratio_med']:.2f})"
            )
        text += "; on SmolLM2 the two steps compute in two threads of the one server process"
        if smol := summaries.get("smollm2"):
            text += f", which used {smol['server_cores']:.2f} of the {os.cpu_count()} cores then"
        text += (
            f". A SmolLM2 step takes {thread:.2f}x as long beside a second thread of the same "
            f"process computing steps and {process:.2f}x beside another process computing steps"
        )
        if thread > 1.1 and thread > process + 0.1 and inter.alone_after < 1.1 * inter.alone:
            text += (
                ": what slows it is sharing one process, whose GIL a batch-1 step of a small "
                "model takes between its many small torch calls, not the cores, caches or "
                "memory bandwidth"
            )
        if smol:
            gained = smol["loaded_paid_med"] - smol["idle_paid_med"]
            up = smol["loaded_up"] - smol["idle_up"]
            text += (
                f". Under load SmolLM2's paid step gained {_ms(gained)} ms (median), "
                f"{_ms(up)} ms of them before the server logged it (waiting, computing, the "
                f"server's bookkeeping) and {_ms(smol['loaded_down'] - smol['idle_down'])} ms "
                "after (the reply); the second thread's compute accounts for about "
                f"{_ms(inter.with_thread - inter.alone)} ms; the rest is spent in the server "
                "process too, whose trio thread decodes, queues and answers every session's "
                "steps under the same GIL"
            )
        lines.append(text + ".")
    return lines


def report(
    args: argparse.Namespace,
    results: dict[str, list[Run]],
    inter: Interference | None,
    loads: tuple[str, str],
) -> None:
    import torch

    summaries = {key: summarise(runs) for key, runs in results.items()}
    absolute = [
        "| setting | paid idle: median / p95 (ms) | paid loaded: median / p95 (ms) "
        "| normal idle: median / p95 (ms) | extra normal loaded: median / p95 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    ratios = [
        "| setting | paid loaded / idle: median, **p95** | normal loaded / idle: median, p95 "
        "| normal share of steps while paid measured | cores busy then: server, clients "
        "| target: paid p95 <= 1.5x, share >= 20% |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, s in summaries.items():
        label = SETTINGS[key].label
        absolute.append(
            f"| {label} | {_ms(s['idle_paid_med'])} / {_ms(s['idle_paid_p95'])} "
            f"| {_ms(s['loaded_paid_med'])} / {_ms(s['loaded_paid_p95'])} "
            f"| {_ms(s['idle_normal_med'])} / {_ms(s['idle_normal_p95'])} "
            f"| {_ms(s['loaded_normal_med'])} / {_ms(s['loaded_normal_p95'])} |"
        )
        met = s["paid_ratio_p95"] <= TARGET_RATIO and s["share"] >= TARGET_SHARE
        ratios.append(
            f"| {label} | {s['paid_ratio_med']:.2f}, **{s['paid_ratio_p95']:.2f}** "
            f"| {s['normal_ratio_med']:.2f}, {s['normal_ratio_p95']:.2f} "
            f"| {100 * s['share']:.0f}% | {s['server_cores']:.2f}, {s['client_cores']:.2f} "
            f"| {'yes' if met else '**no**'} |"
        )
    per_run = [
        "| setting | run | load avg at start | other processes' cores | paid median idle "
        "-> loaded (ms) | paid p95 idle -> loaded (ms) | p95 ratio | normal p95 idle -> "
        "loaded (ms) | normal share (steps in window) | load sessions served |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, runs in results.items():
        for i, r in enumerate(runs, 1):
            per_run.append(
                f"| {key} | {i} | {r.load} | {r.other_cores:.2f} "
                f"| {_ms(med(r.idle_paid))} -> {_ms(med(r.loaded_paid))} "
                f"| {_ms(p95(r.idle_paid))} -> {_ms(p95(r.loaded_paid))} "
                f"| {p95(r.loaded_paid) / p95(r.idle_paid):.2f} "
                f"| {_ms(p95(r.idle_normal))} -> {_ms(p95(r.loaded_normal))} "
                f"| {100 * r.normal_share:.0f}% ({r.window_steps}) "
                f"| {r.load_sessions_served} of {LOAD_SESSIONS} |"
            )
    split_rows = [
        "| setting | idle: sent -> logged, logged -> back (ms) "
        "| loaded: sent -> logged, logged -> back (ms) |",
        "|---|---:|---:|",
        *(
            f"| {SETTINGS[key].label} | {_ms(s['idle_up'])}, {_ms(s['idle_down'])} "
            f"| {_ms(s['loaded_up'])}, {_ms(s['loaded_down'])} |"
            for key, s in summaries.items()
        ),
    ]
    inter_rows: list[str] = []
    if inter is not None:
        inter_rows = [
            "| SmolLM2 decode step, 30 blocks, 1 torch thread, in this process | median (ms) "
            "| ratio |",
            "|---|---:|---:|",
            f"| alone | {_ms(inter.alone)} | 1.00 |",
            f"| a second thread of this process running the same steps (the server's "
            f"two slots) | {_ms(inter.with_thread)} | {inter.with_thread / inter.alone:.2f} |",
            f"| another process running the same steps | {_ms(inter.with_process)} "
            f"| {inter.with_process / inter.alone:.2f} |",
            f"| alone again, after the above | {_ms(inter.alone_after)} "
            f"| {inter.alone_after / inter.alone:.2f} |",
        ]
    notes = findings(summaries, inter)
    print()
    for table in (absolute, ratios, split_rows, per_run, inter_rows, notes):
        if table:
            print("\n".join(table))
            print()
    print(f"load average {loads[0]} -> {loads[1]}; potluck from {potluck_source()}")
    if args.no_write:
        return
    section = [
        f"## Priority: paid and normal sessions on a saturated server ({datetime.date.today()})",
        "",
        "Per-step latency (one decode token per step) of a session that bought "
        '`priority="high"` (class `paid`) and of a free (`normal`) one, on one server '
        "process holding every block (`--compute-threads 1 --compute-slots 1`, "
        "`--paid-slots` as labelled), idle and then with 4 more normal sessions stepping in a "
        "closed loop (each always has a step queued); ratios are loaded / idle of the same "
        "kind. A bootstrap with a one-validator genesis and the server run as separate "
        "processes on 127.0.0.1 (`LocalSwarm`); every client is in the benchmark's process, "
        f"each with its own libp2p host. {args.steps} timed steps per measurement (on the idle "
        f"server after {WARMUP} warm-up steps); {args.runs} runs per setting on fresh sessions, "
        "medians "
        "over the runs of each run's median and p95 (p95 = `statistics.quantiles(n=20)[-1]`). "
        "Normal share: among the steps the server's `--request-log` shows finished while the "
        "paid session was measured, those of class `normal`. Cores busy: CPU time of the "
        "server process and of the benchmark's process (all clients) over the same window, "
        "per second of wall time; other processes' cores: the same for every other process "
        "on the machine, over the whole run (/proc/stat). The method is in the docstring of "
        "benchmarks/priority.py.",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__}; Python {platform.python_version()}; 1-minute load average "
        f"{loads[0]} before and {loads[1]} after; potluck from {potluck_source()}.",
        "",
        *absolute,
        "",
        *ratios,
        "",
        "Where the paid step's time goes, split at the server's request-log line for it "
        "(written once the step is computed, before the reply is sent; medians over the "
        "steps, then over the runs):",
        "",
        *split_rows,
        "",
        "Each run:",
        "",
        *per_run,
        "",
    ]
    if inter_rows:
        section += [
            "What a step costs when both of the server's slots compute at once (measured "
            f"before the swarms started; median of {INTERFERENCE_STEPS} steps each):",
            "",
            *inter_rows,
            "",
        ]
    section += [*notes, "", f"Command: `{command_line(COMMAND, __file__)}`", ""]
    append_to_doc("\n".join(section))


def main(argv: Sequence[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (default 3)")
    parser.add_argument(
        "--steps", type=int, default=40, help="timed steps per measurement (default 40)"
    )
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated settings to run (default: all of {', '.join(SETTINGS)})",
    )
    parser.add_argument(
        "--no-interference",
        action="store_true",
        help="skip timing SmolLM2 steps with a neighbour thread and process",
    )
    parser.add_argument("--no-write", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    keys = [k for k in args.settings.split(",") if k]
    if unknown := [k for k in keys if k not in SETTINGS]:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    if args.runs < 1 or args.steps < 20:
        parser.error("--runs must be at least 1 and --steps at least 20")

    from potluck.model import resolve_model

    loads_before = load_average()
    inter = None
    if not args.no_interference:
        print("SmolLM2 steps with a neighbour thread / process ...", flush=True)
        inter = interference(resolve_model("smollm2"))
    workdir = Path(tempfile.mkdtemp(prefix="potluck-priority-"))
    results: dict[str, list[Run]] = {}
    for key in keys:
        print(f"{SETTINGS[key].label}:", flush=True)
        results[key] = run_setting(SETTINGS[key], args.runs, args.steps, workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with the nodes' logs, on failure
    report(args, results, inter, (loads_before, load_average()))


if __name__ == "__main__":
    main()
