"""What verification costs: commitments per step, spot-check compute, end-to-end latency.

SmolLM2-135M-Instruct (fp32, hidden 576) cut into spans 0:10, 10:20, 20:30,
batch 1, a 19-token prompt, greedy decoding. Three parts:

    .venv/bin/python benchmarks/verify.py [--quick] [--threads 1] [--runs 5]
        [--no-append]

1. **Commitments, per step.** Every step a server answers carries a signed
   `potluck.verify.Commitment`, which the client rebuilds and checks. Timed
   call by call (median of 2,000 calls), for a decode step (1 token) and a
   prefill step (32 tokens): the server's side as `Server._inference` and
   `_compute` do it (`chain_inputs` + `row_digests` + `output_root` +
   `Commitment(...).signed`), the client's side as `HopSession._forward`
   does it (`chain_inputs` + `step_commitment` + `verify()`), one `Sampler`
   draw, and one `compare` of a step's rows (spot-checked steps only). Each
   is also given as a share of one decode step of the 10-block span 0:10
   with its KV cache (the serving compute the commitment rides on).
2. **Spot-check compute, in this process.** The three spans serve a session
   step by step with their KV caches (a prefill of the prompt, then N = 128
   decode steps, greedy through the client's head); their summed forward
   time is the serving compute, and its first 64 steps give N = 64. A
   spot-check makes a checker do, for every hop with at least one sampled
   step, ONE stateless forward over the hop's inputs up to its last sampled
   step, and the checker and client hash and sign/verify that `Forward`
   and compare the sampled rows (`potluck.client.spotcheck`). After each
   served session, that checker work is timed on the real history every 4
   tokens; three sessions and passes, medians. Then 2,000 sessions are drawn
   per (N, p), each with its own secret, by `Sampler(p)` exactly as the
   client draws (`hop session id / 0 / step`), three hops each, and the
   checker work of each hop's last sampled step is looked up (linear
   interpolation); the first 6 sessions are also recomputed for real, as a
   check on the lookup. Verification overhead = (spot-check work + the
   commitment and draw costs of part 1 on every step) / serving compute,
   against the target p + 2%. Torch runs with `--threads` threads (default
   1, as the swarm's servers and validator below).
3. **End to end.** A swarm like `potluck demo`'s without the cheater runs as
   separate processes on 127.0.0.1 (`LocalSwarm`): a bootstrap with the
   genesis (`init_swarm`), a validator holding all 30 blocks
   (`--validator --probe-interval 3600`: no probes during the run) and
   servers 0:10, 10:20, 20:30, all `--compute-threads 1`. One client per p in
   (0, 0.05, 0.1) (`spot_check_rate=p`, with the genesis) generates
   `--e2e-tokens` tokens greedily, `--runs` times after a warm-up, the order
   of p rotating between runs. A streamer stamps every token: per-step
   latency is the median gap between consecutive tokens; the close is the
   time from the last token to `generate()` returning (the session's
   spot-checks run there, before the usage receipts); total time covers the
   whole `generate()` call. Ratios are against p = 0 in the same run.

   A bug in potluck/ this benchmark works around: `SpotChecker` picks its
   checker from the client's swarm view when the session closes
   (`SwarmClient.servers`, which drops announcements past their expiry),
   but the client refreshes that view only when it routes, at the start of
   `generate()`. An announcement lives `--announce-ttl` (20 s) from when the
   validator made it, so a session that outlasts what was left of it (a
   128-token generation takes 15-20 s here) finds no checker and its sampled
   steps are counted `unchecked`, logged at INFO only. The streamer's `end()`
   therefore refreshes the view (`model.swarm.refresh`) after the last token,
   before the close, for every p alike (p = 0 too, so the close's difference
   stays fair); `--stock-close` leaves it out to show the bug.

Printed, and appended as a dated "Verification overhead" section to
docs/benchmarks.md unless `--no-append` (or `--quick`, a short smoke run
with smaller N, fewer calls and runs, which never appends).
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import hashlib
import itertools
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time, so that --help stays quick
    import torch

    from potluck.client import DistributedModelForCausalLM
    from potluck.model import BlockSpan, ClientHead
    from potluck.p2p.identity import Identity
    from potluck.verify.commitment import Commitment
    from potluck.wire import StepResult

from common import append_to_doc, command_line, load_average, potluck_source

COMMAND = ".venv/bin/python benchmarks/verify.py"
PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle on the shore."
)
SPANS = ((0, 10), (10, 20), (20, 30))
RATES = (0.0, 0.05, 0.1)
PREFILL_TOKENS = 32  # the prefill step of part 1
TARGET_MARGIN = 0.02  # target: overhead <= p + 2% of serving compute


@dataclass(frozen=True)
class Settings:
    quick: bool
    threads: int
    calls: int  # timed calls per micro-benchmark (part 1)
    tokens: tuple[int, ...]  # decode steps per session (part 2)
    reps: int  # served sessions, each followed by a pass of checker timings
    grid: int  # checker lengths timed every `grid` tokens
    sessions: int  # drawn sessions per (N, p)
    literal: int  # of which recomputed for real
    e2e_tokens: int
    runs: int
    refresh: bool  # refresh the client's swarm view before each session's close
    append: bool


# -- helpers -----------------------------------------------------------------------


def median_us(fn: Callable[[], object], calls: int, warmup: int = 20) -> float:
    """Median wall time of one call of `fn`, in microseconds, each call timed alone."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def interp(x: float, xs: Sequence[int], ys: Sequence[float]) -> float:
    """Piecewise-linear interpolation of (xs, ys) at x; xs sorted, x within their range."""
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return ys[i]
    if i == 0 or i == len(xs):
        raise ValueError(f"{x} is outside the timed lengths {xs[0]}..{xs[-1]}")
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def secret_for(session: int) -> bytes:
    """A fixed secret per drawn session, so that every run draws the same samples."""
    return hashlib.sha256(f"benchmarks/verify.py/{session}".encode()).digest()


# -- part 1: commitments per step --------------------------------------------------


@dataclass
class CommitCosts:
    """Microseconds per call, by row label and step size (tokens)."""

    us: dict[str, dict[int, float]] = field(default_factory=dict)
    decode_ms: float = 0.0  # one decode step of span 0:10 with its cache: the reference

    def server(self, tokens: int) -> float:
        return self.us["server total"][tokens]

    def client(self, tokens: int) -> float:
        return self.us["client total"][tokens]


def server_commitment(
    identity: Identity,
    swarm: str,
    session: str,
    step: int,
    previous: str,
    hidden: torch.Tensor,
    out: torch.Tensor,
) -> tuple[str, str]:
    """What a server does per step besides the forward: the input chain, the output's
    row digests and root, and its signature (`Server._inference` + `_compute`)."""
    from potluck.verify.commitment import Commitment, chain_inputs, output_root, row_digests

    inputs = chain_inputs(previous, hidden)
    commitment = Commitment(
        swarm=swarm,
        session=session,
        step=step,
        start=0,
        end=10,
        inputs=inputs,
        outputs=output_root(row_digests(out)),
        dtype="float32",
        server=identity.public_bytes.hex(),
    )
    return inputs, commitment.signed(identity).signature


def digest_root(out: torch.Tensor) -> str:
    from potluck.verify.commitment import output_root, row_digests

    return output_root(row_digests(out))


def client_commitment(
    reply: StepResult, server: str, previous: str, hidden: torch.Tensor
) -> Commitment:
    """What a client does per step on the reply (`HopSession._forward` / `verify_step`)."""
    from potluck.verify.commitment import chain_inputs, step_commitment

    chain = chain_inputs(previous, hidden)
    commitment = step_commitment(reply, server=server, start=0, end=10, inputs=chain)
    commitment.verify()
    return commitment


def measure_commitments(span: BlockSpan, settings: Settings) -> CommitCosts:
    import torch

    from potluck.p2p.identity import Identity
    from potluck.verify.commitment import (
        Commitment,
        chain_inputs,
        output_root,
        row_digests,
        step_commitment,
    )
    from potluck.verify.fingerprint import compare
    from potluck.verify.sampling import Sampler
    from potluck.wire import StepResult

    identity = Identity.generate()
    account = identity.public_bytes.hex()
    swarm = secrets.token_hex(32)
    session = secrets.token_hex(16)
    previous = hashlib.sha256(b"earlier steps").hexdigest()
    costs = CommitCosts()
    hidden_size = int(span.config.hidden_size)
    generator = torch.Generator().manual_seed(0)
    for tokens in (1, PREFILL_TOKENS):
        hidden = torch.randn(1, tokens, hidden_size, generator=generator)  # (batch, seq, hidden)
        out = span.forward(hidden).contiguous()  # a real output; costs do not depend on values
        _, signature = server_commitment(identity, swarm, session, 7, previous, hidden, out)
        reply = StepResult(session, 7, out, swarm, "float32", signature)
        roots = output_root(row_digests(out))
        chain = chain_inputs(previous, hidden)
        unsigned = Commitment(swarm, session, 7, 0, 10, chain, roots, "float32", account)
        signed = unsigned.signed(identity)
        near = out + 1e-7 * torch.randn(out.shape, generator=generator)  # a checker's rows
        rows: dict[str, Callable[[], object]] = {
            "server: chain_inputs": partial(chain_inputs, previous, hidden),
            "server: row_digests + output_root": partial(digest_root, out),
            "server: Commitment(...).signed": partial(unsigned.signed, identity),
            "server total": partial(
                server_commitment, identity, swarm, session, 7, previous, hidden, out
            ),
            "client: chain_inputs": partial(chain_inputs, previous, hidden),
            "client: step_commitment": partial(
                step_commitment, reply, server=account, start=0, end=10, inputs=chain
            ),
            "client: verify()": signed.verify,
            "client total": partial(client_commitment, reply, account, previous, hidden),
            "compare a step's rows (sampled steps only)": partial(
                compare, out, near, "float32", "float32"
            ),
        }
        for label, fn in rows.items():
            costs.us.setdefault(label, {})[tokens] = median_us(fn, settings.calls)
    sampler = Sampler(0.05)
    steps = iter(range(10**9))
    draw = median_us(lambda: sampler.should_check(session, 0, next(steps)), settings.calls)
    costs.us["client: sampler draw"] = {1: draw, PREFILL_TOKENS: draw}
    # the reference: one decode step of the span with its cache, after a 19-token prompt
    cache = span.new_cache()
    span.forward(torch.randn(1, 19, hidden_size, generator=generator), cache)
    token = torch.randn(1, 1, hidden_size, generator=generator)
    decode = [timed(lambda: span.forward(token, cache))[0] for _ in range(64)]
    costs.decode_ms = 1000 * statistics.median(decode)
    return costs


def commitment_lines(costs: CommitCosts) -> list[str]:
    ref = costs.decode_ms * 1000  # us
    lines = [
        "| per step | decode, 1 token (us) | % of a decode step | "
        f"prefill, {PREFILL_TOKENS} tokens (us) | % of a decode step |",
        "|---|---:|---:|---:|---:|",
    ]
    order = [
        "server: chain_inputs",
        "server: row_digests + output_root",
        "server: Commitment(...).signed",
        "server total",
        "client: chain_inputs",
        "client: step_commitment",
        "client: verify()",
        "client total",
        "client: sampler draw",
        "compare a step's rows (sampled steps only)",
    ]
    for label in order:
        one, many = costs.us[label][1], costs.us[label][PREFILL_TOKENS]
        bold = "**" if label.endswith("total") else ""
        lines.append(
            f"| {bold}{label}{bold} | {one:.1f} | {pct(one / ref)} | {many:.1f} | "
            f"{pct(many / ref)} |"
        )
    both = costs.server(1) + costs.client(1) + costs.us["client: sampler draw"][1]
    lines.append(
        f"| **server + client + draw, per decode step** | {both:.1f} | {pct(both / ref)} | | |"
    )
    lines.append(
        f"| reference: one decode step of span 0:10 with its KV cache | "
        f"{costs.decode_ms * 1000:.0f} | 100% | | |"
    )
    return lines


# -- part 2: spot-check compute in process ---------------------------------------


@dataclass
class Served:
    """A session served step by step through the three spans, `reps` times."""

    prompt: int  # tokens in the prefill step
    inputs: list[torch.Tensor]  # per hop, (1, total, hidden): every input the hop received
    outputs: list[torch.Tensor]  # per hop, (1, total, hidden): what it returned
    step_s: list[list[list[float]]]  # [rep][hop][step] seconds of the span's forward
    tokens: list[int]  # the greedy tokens generated

    def serving_s(self, decode_steps: int) -> float:
        """Median over reps of the three hops' forward time for prefill + N decode steps."""
        totals = [sum(sum(hop[: decode_steps + 1]) for hop in rep) for rep in self.step_s]
        return statistics.median(totals)

    def decode_ms(self, hop: int) -> float:
        return 1000 * statistics.median(s for rep in self.step_s for s in rep[hop][1:])


def serve_session(
    spans: Sequence[BlockSpan], head: ClientHead, prompt_ids: torch.Tensor, decode_steps: int
) -> Served:
    """A prefill of the prompt, then `decode_steps` greedy steps through the spans'
    caches, each span's forward timed."""
    import torch

    inputs: list[list[torch.Tensor]] = [[] for _ in spans]
    outputs: list[list[torch.Tensor]] = [[] for _ in spans]
    times: list[list[float]] = [[] for _ in spans]
    tokens: list[int] = []
    caches = [span.new_cache() for span in spans]
    ids = prompt_ids
    for _ in range(decode_steps + 1):
        hidden = head.embed(ids)  # (1, seq, hidden)
        for i, (span, cache) in enumerate(zip(spans, caches, strict=True)):
            inputs[i].append(hidden)
            seconds, hidden = timed(partial(span.forward, hidden, cache))
            times[i].append(seconds)
            outputs[i].append(hidden)
        ids = head.logits(hidden[:, -1:]).argmax(dim=-1)  # (1, 1): greedy
        tokens.append(int(ids))
    return Served(
        prompt=int(prompt_ids.shape[1]),
        inputs=[torch.cat(x, dim=1) for x in inputs],
        outputs=[torch.cat(x, dim=1) for x in outputs],
        step_s=[times],
        tokens=tokens,
    )


def checker_work(
    span: BlockSpan, history: torch.Tensor, checker: Identity, swarm: str
) -> tuple[torch.Tensor, Commitment]:
    """A spot-check's `Forward` over `history`: the checker's stateless forward and
    commitment (`Server._rpc`), and the client's check of it (`SpotChecker._forward`)."""
    from potluck.verify.commitment import (
        ZERO_CHAIN,
        Commitment,
        chain_inputs,
        output_root,
        row_digests,
    )

    out = span.forward(history).contiguous()  # (1, length, hidden)
    account = checker.public_bytes.hex()
    signature = (
        Commitment(
            swarm,
            "",
            0,
            span.start,
            span.end,
            chain_inputs(ZERO_CHAIN, history),
            output_root(row_digests(out)),
            "float32",
            account,
        )
        .signed(checker)
        .signature
    )
    commitment = Commitment(
        swarm=swarm,
        session="",
        step=0,
        start=span.start,
        end=span.end,
        inputs=chain_inputs(ZERO_CHAIN, history),
        outputs=output_root(row_digests(out)),
        dtype="float32",
        server=account,
        signature=signature,
    )
    commitment.verify()
    return out, commitment


@dataclass
class CheckTable:
    """Seconds of `checker_work` per hop, at the timed history lengths."""

    lengths: list[int]
    seconds: list[list[float]]  # [hop][length index]

    def at(self, hop: int, length: int) -> float:
        return interp(length, self.lengths, self.seconds[hop])


def time_checks(
    spans: Sequence[BlockSpan], served: Served, lengths: Sequence[int]
) -> list[list[float]]:
    """One pass of `checker_work` over every hop's history at `lengths`: [hop][length]."""
    from potluck.p2p.identity import Identity

    checker, swarm = Identity.generate(), secrets.token_hex(32)
    return [
        [
            timed(partial(checker_work, span, history[:, :n].contiguous(), checker, swarm))[0]
            for n in lengths
        ]
        for span, history in zip(spans, served.inputs, strict=True)
    ]


def serve_and_check(
    spans: Sequence[BlockSpan], head: ClientHead, prompt_ids: torch.Tensor, settings: Settings
) -> tuple[Served, CheckTable]:
    """`settings.reps` served sessions, each followed by a pass of checker timings, so that
    the machine's changing load weighs on both alike; medians over the passes."""
    longest = max(settings.tokens)
    served = serve_session(spans, head, prompt_ids, longest)
    lengths = sorted({*range(served.prompt, served.prompt + longest + 1, settings.grid)})
    lengths = sorted({*lengths, served.prompt + longest})
    passes = [time_checks(spans, served, lengths)]
    for rep in range(1, settings.reps):
        print(f"  repetition {rep + 1} of {settings.reps} ...", flush=True)
        again = serve_session(spans, head, prompt_ids, longest)
        if again.tokens != served.tokens:
            raise SystemExit("greedy tokens differ between repetitions of the same session")
        served.step_s += again.step_s
        passes.append(time_checks(spans, served, lengths))
    seconds = [
        [statistics.median(p[hop][j] for p in passes) for j in range(len(lengths))]
        for hop in range(len(spans))
    ]
    return served, CheckTable(lengths, seconds)


@dataclass
class Draws:
    """What the spot-checks of `sessions` sessions of N decode steps at rate p do."""

    prompt: int
    decode_steps: int
    rate: float
    sessions: int
    hops_checked: int = 0  # hops with at least one sampled step
    sampled: int = 0  # sampled steps, all hops
    checked_tokens: int = 0  # tokens recomputed, all hops
    check_s: float = 0.0  # looked-up checker work, all sessions
    literal_s: float = 0.0  # recomputed for real, the first `literal` sessions
    literal_table_s: float = 0.0  # the lookup's figure for those same sessions
    literal_mismatches: int = 0

    @property
    def hops(self) -> int:
        return self.sessions * len(SPANS)

    @property
    def checked_share(self) -> float:
        """Tokens recomputed over all tokens the hops served."""
        return self.checked_tokens / (self.hops * (self.prompt + self.decode_steps))


def draw_sessions(
    served: Served,
    spans: Sequence[BlockSpan],
    table: CheckTable,
    decode_steps: int,
    rate: float,
    settings: Settings,
) -> Draws:
    """Draw every step of every hop of `settings.sessions` sessions as the client does,
    and add up the checker work each session's spot-checks need."""
    from potluck.p2p.identity import Identity
    from potluck.verify.fingerprint import compare
    from potluck.verify.sampling import Sampler

    draws = Draws(served.prompt, decode_steps, rate, settings.sessions)
    checker, swarm = Identity.generate(), secrets.token_hex(32)
    steps = [served.prompt] + [1] * decode_steps  # tokens in each step
    for s in range(settings.sessions):
        sampler = Sampler(rate, secret_for(s))
        for hop in range(len(SPANS)):
            session_id = f"{s:030x}{hop:02x}"  # each hop has its own session id
            sampled = [k for k in range(len(steps)) if sampler.should_check(session_id, 0, k)]
            if not sampled:
                continue
            length = sum(steps[: max(sampled) + 1])
            looked_up = table.at(hop, length)
            draws.hops_checked += 1
            draws.sampled += len(sampled)
            draws.checked_tokens += length
            draws.check_s += looked_up
            if s >= settings.literal:
                continue
            history = served.inputs[hop][:, :length].contiguous()
            seconds, (out, _) = timed(partial(checker_work, spans[hop], history, checker, swarm))
            for k in sampled:  # as SpotChecker._check_hop compares them
                end = sum(steps[: k + 1])
                rows = slice(end - steps[k], end)
                if not compare(served.outputs[hop][:, rows], out[:, rows]).matches:
                    draws.literal_mismatches += 1
            draws.literal_s += seconds
            draws.literal_table_s += looked_up
    return draws


@dataclass(frozen=True)
class Overhead:
    """Verification's cost for one (N, p), per session of three hops, in ms."""

    draws: Draws
    serving_ms: float  # the three spans' forwards, prefill + N decode steps
    commit_ms: float  # server and client commitments on every step
    sampler_ms: float  # a draw per step (p > 0)
    compare_ms: float  # comparing the sampled steps

    @property
    def spot_ms(self) -> float:
        return 1000 * self.draws.check_s / self.draws.sessions + self.compare_ms

    @property
    def total_ms(self) -> float:
        return self.spot_ms + self.commit_ms + self.sampler_ms

    @property
    def share(self) -> float:
        return self.total_ms / self.serving_ms

    @property
    def target(self) -> float:
        return self.draws.rate + TARGET_MARGIN

    @property
    def met(self) -> bool:
        return self.share <= self.target


def overhead(served: Served, draws: Draws, costs: CommitCosts) -> Overhead:
    n, hops = draws.decode_steps, len(SPANS)
    per_hop_us = n * (costs.server(1) + costs.client(1)) + (
        costs.server(PREFILL_TOKENS) + costs.client(PREFILL_TOKENS)
    )  # the prompt's step costed as a 32-token step: a slight overestimate
    draw_us = costs.us["client: sampler draw"][1] * (n + 1) if draws.rate else 0.0
    compare_us = costs.us["compare a step's rows (sampled steps only)"][1]
    return Overhead(
        draws=draws,
        serving_ms=1000 * served.serving_s(n),
        commit_ms=hops * per_hop_us / 1000,
        sampler_ms=hops * draw_us / 1000,
        compare_ms=compare_us * draws.sampled / draws.sessions / 1000,
    )


def spot_lines(results: Sequence[Overhead]) -> list[str]:
    lines = [
        "| N | p | hops with a sample | sampled steps / hop | tokens recomputed | "
        "spot-check work (ms) | commitments + draws (ms) | serving compute (ms) | "
        "**overhead** | target p + 2% | met |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        d = r.draws
        lines.append(
            f"| {d.decode_steps} | {d.rate:g} | {pct(d.hops_checked / d.hops)} | "
            f"{d.sampled / d.hops:.2f} | {pct(d.checked_share)} | {r.spot_ms:.1f} | "
            f"{r.commit_ms + r.sampler_ms:.1f} | {r.serving_ms:.0f} | **{pct(r.share)}** | "
            f"{pct(r.target)} | {'yes' if r.met else '**no**'} |"
        )
    return lines


def literal_lines(results: Sequence[Overhead]) -> list[str]:
    checked = [r for r in results if r.draws.literal_s]
    if not checked:
        return []
    real = sum(r.draws.literal_s for r in checked)
    looked_up = sum(r.draws.literal_table_s for r in checked)
    wrong = sum(r.draws.literal_mismatches for r in checked)
    return [
        "Check on the lookup: the first sessions drawn for each (N, p) recomputed for real "
        f"took {1000 * real:.0f} ms, against {1000 * looked_up:.0f} ms looked up "
        f"({real / looked_up:.3f}x); their sampled steps against the served outputs "
        f"(`compare`): {wrong} mismatches."
    ]


@dataclass(frozen=True)
class PerToken:
    """Milliseconds per token over 10 blocks, median of the three spans."""

    decode_ms: float  # a decode step with the KV cache
    prefill_ms: float  # the prompt's prefill with the KV cache, per token
    check_ms: dict[int, float]  # checker work over prompt + N tokens, per token, by N
    prompt: int

    def lines(self) -> list[str]:
        d = self.decode_ms
        rows = [
            "| per token, 10 blocks (median of the 3 spans) | ms | ratio to a decode step |",
            "|---|---:|---:|",
            f"| serving: decode step with the KV cache | {d:.2f} | 1 |",
            f"| serving: the {self.prompt}-token prompt's prefill with the KV cache | "
            f"{self.prefill_ms:.2f} | {self.prefill_ms / d:.3f} |",
        ]
        rows += [
            f"| checking: stateless forward over {self.prompt + n} tokens + its commitment | "
            f"{ms:.2f} | {ms / d:.3f} |"
            for n, ms in self.check_ms.items()
        ]
        return rows


def per_token(served: Served, table: CheckTable, tokens: Sequence[int]) -> PerToken:
    hops = range(len(SPANS))
    prefill = [statistics.median(rep[h][0] for rep in served.step_s) for h in hops]
    check = {
        n: statistics.median(
            1000 * table.at(h, served.prompt + n) / (served.prompt + n) for h in hops
        )
        for n in tokens
    }
    return PerToken(
        decode_ms=statistics.median(served.decode_ms(h) for h in hops),
        prefill_ms=1000 * statistics.median(prefill) / served.prompt,
        check_ms=check,
        prompt=served.prompt,
    )


# -- part 3: end to end ----------------------------------------------------------


class StepClock:
    """A `generate` streamer that stamps every put: [0] the prompt, [i] token i.

    With `refresh`, its `end()` (after the last token, before the session closes and
    spot-checks) refreshes the client's swarm view: the workaround for the checker
    lookup bug described in the module docstring."""

    def __init__(self, model: DistributedModelForCausalLM | None = None) -> None:
        self.times: list[float] = []
        self.model = model

    def put(self, value: object) -> None:
        del value
        self.times.append(time.perf_counter())

    def end(self) -> None:
        if self.model is not None:
            self.model.runtime.run(self.model.swarm.refresh, self.model.runtime.host)


@dataclass(frozen=True)
class E2ERun:
    total_s: float  # the whole generate() call
    step_ms: float  # median gap between consecutive tokens
    first_s: float  # call -> first token: route, open, prefill
    close_ms: float  # last token -> generate() returns: spot-checks, receipts, close
    tokens: tuple[int, ...]
    counts: tuple[int, int, int, int]  # sampled, checked, unchecked, mismatches in this run


def checker_counts(model: DistributedModelForCausalLM) -> tuple[int, int, int, int]:
    checker = model.spot_checker
    if checker is None:
        return (0, 0, 0, 0)
    s = checker.stats
    return (s.sampled, s.checked, s.unchecked, s.mismatches)


def wait_for_validator(model: DistributedModelForCausalLM, timeout: float = 60.0) -> None:
    """Wait until the client knows a validator (the spot-checks' checker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s.validator for s in model.swarm.servers(include_validators=True)):
            return
        model.runtime.run(model.swarm.refresh, model.runtime.host)
        time.sleep(0.5)
    raise SystemExit("the client never saw the validator: its spot-checks would go unchecked")


def generate_once(
    model: DistributedModelForCausalLM,
    prompt_ids: torch.Tensor,
    kwargs: dict[str, Any],
    *,
    refresh: bool,
) -> E2ERun:
    before = checker_counts(model)
    clock = StepClock(model if refresh else None)
    t0 = time.perf_counter()
    out = model.generate(prompt_ids, streamer=clock, **kwargs)
    t1 = time.perf_counter()
    after = checker_counts(model)
    stamps = clock.times  # [0] the prompt, [1] the first new token, ...
    gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
    a, b, c, d = (x - y for x, y in zip(after, before, strict=True))
    return E2ERun(
        total_s=t1 - t0,
        step_ms=1000 * statistics.median(gaps),
        first_s=stamps[1] - t0,
        close_ms=1000 * (t1 - stamps[-1]),
        tokens=tuple(out[0, prompt_ids.shape[1] :].tolist()),
        counts=(a, b, c, d),
    )


def end_to_end(
    path: Path, prompt_ids: torch.Tensor, pad_id: int, settings: Settings
) -> dict[float, list[E2ERun]]:
    import torch

    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.ledger.genesis import init_swarm
    from potluck.model import model_identity
    from potluck.testing.swarm import LocalSwarm

    root = Path(tempfile.mkdtemp(prefix="potluck-bench-verify-"))
    _, (key,) = init_swarm(
        root / "swarm",
        name="bench-verify",
        model_name="smollm2",
        model_identity=model_identity(path),
        validators=1,
    )
    genesis = root / "swarm" / "genesis.json"
    flags = ["--genesis", str(genesis)]
    common = [*flags, "--compute-threads", "1"]
    n = settings.e2e_tokens
    kwargs: dict[str, Any] = {
        "attention_mask": torch.ones_like(prompt_ids),
        "do_sample": False,
        "min_new_tokens": n,
        "max_new_tokens": n,
        "pad_token_id": pad_id,
    }
    swarm = LocalSwarm(root / "nodes")
    models: dict[float, DistributedModelForCausalLM] = {}
    results: dict[float, list[E2ERun]] = {p: [] for p in RATES}
    try:
        boot = swarm.start_node("bootstrap", extra=flags)
        validator_flags = ["--validator", "--validator-key", str(key), "--probe-interval", "3600"]
        nodes = [
            swarm.start_node(
                "validator",
                model=str(path),
                blocks=f"0:{SPANS[-1][1]}",
                wait=False,
                extra=[*common, *validator_flags],
            )
        ]
        nodes += [
            swarm.start_node(
                f"server{i}", model=str(path), blocks=f"{a}:{b}", wait=False, extra=common
            )
            for i, (a, b) in enumerate(SPANS, 1)
        ]
        for node in nodes:
            swarm.wait_ready(node, timeout=600)
        for p in RATES:  # one client per rate, all on the same swarm
            models[p] = AutoDistributedModelForCausalLM.from_pretrained(
                path, initial_peers=[boot.addr], genesis=genesis, spot_check_rate=p
            )
            models[p].route()
            wait_for_validator(models[p])
        for p in RATES:
            print(f"warm-up p = {p:g} ...", flush=True)
            generate_once(models[p], prompt_ids, kwargs, refresh=settings.refresh)
        for i in range(settings.runs):
            for p in RATES[i % len(RATES) :] + RATES[: i % len(RATES)]:  # rotate who goes first
                run = generate_once(models[p], prompt_ids, kwargs, refresh=settings.refresh)
                results[p].append(run)
                print(
                    f"run {i + 1} p = {p:g}: {n / run.total_s:.2f} tokens/s, step "
                    f"{run.step_ms:.1f} ms, close {run.close_ms:.0f} ms, sampled/checked "
                    f"{run.counts[0]}/{run.counts[1]}",
                    flush=True,
                )
    finally:
        for model in models.values():
            model.close()
        swarm.stop()
    shutil.rmtree(root, ignore_errors=True)  # kept, with the nodes' logs, on failure
    return results


@dataclass(frozen=True)
class E2ESummary:
    """Medians over runs for one p."""

    step_ms: float
    close_ms: float
    total_s: float
    tokens_per_s: float
    counts: tuple[int, ...]  # totals over the runs
    step_range: tuple[float, float]  # the runs' lowest and highest per-step latency
    close_range: tuple[float, float]

    @property
    def unchecked(self) -> int:
        return self.counts[2]


def summarize(runs: list[E2ERun], n: int) -> E2ESummary:
    med = statistics.median
    steps, closes = [r.step_ms for r in runs], [r.close_ms for r in runs]
    return E2ESummary(
        step_ms=med(steps),
        close_ms=med(closes),
        total_s=med(r.total_s for r in runs),
        tokens_per_s=med(n / r.total_s for r in runs),
        counts=tuple(sum(r.counts[k] for r in runs) for k in range(4)),
        step_range=(min(steps), max(steps)),
        close_range=(min(closes), max(closes)),
    )


def e2e_lines(summaries: dict[float, E2ESummary]) -> list[str]:
    base = summaries[0.0]
    lines = [
        "| p | per-step latency (ms) | runs' range | ratio | close (ms) | runs' range | "
        "close minus p = 0's (ms) | total (s) | ratio | tokens/s | ratio | "
        "sampled / checked / unchecked / mismatches |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p, s in summaries.items():
        counts = " / ".join(map(str, s.counts)) if p else "- (no spot-checker)"
        lines.append(
            f"| {p:g} | {s.step_ms:.1f} | {s.step_range[0]:.0f}-{s.step_range[1]:.0f} | "
            f"{s.step_ms / base.step_ms:.3f} | {s.close_ms:.0f} | "
            f"{s.close_range[0]:.0f}-{s.close_range[1]:.0f} | "
            f"{s.close_ms - base.close_ms:+.0f} | {s.total_s:.2f} | "
            f"{s.total_s / base.total_s:.3f} | {s.tokens_per_s:.2f} | "
            f"{s.tokens_per_s / base.tokens_per_s:.3f} | {counts} |"
        )
    return lines


# -- the run -----------------------------------------------------------------------


@dataclass(frozen=True)
class Findings:
    costs: CommitCosts
    results: list[Overhead]
    tokens: PerToken
    e2e: dict[float, E2ESummary]
    e2e_runs: dict[float, list[E2ERun]]
    loads: tuple[str, str]

    @property
    def same_tokens(self) -> bool:
        return len({r.tokens for runs in self.e2e_runs.values() for r in runs}) == 1


def in_process(
    settings: Settings, path: Path, prompt_ids: torch.Tensor
) -> tuple[CommitCosts, list[Overhead], PerToken]:
    """Parts 1 and 2, with `settings.threads` torch threads."""
    import torch

    from potluck.model import BlockSpan, ClientHead

    own_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        head = ClientHead.load(path)
        spans = [BlockSpan.load(path, a, b) for a, b in SPANS]
        print("part 1: commitments per step ...", flush=True)
        costs = measure_commitments(spans[0], settings)
        print("\n".join(commitment_lines(costs)), flush=True)

        longest = max(settings.tokens)
        print(f"\npart 2: {settings.reps} session(s) of {longest} decode steps, each then checked")
        served, table = serve_and_check(spans, head, prompt_ids, settings)
        results = []
        for n in settings.tokens:
            results.append(overhead(served, Draws(served.prompt, n, 0.0, settings.sessions), costs))
            for p in RATES[1:]:
                print(f"drawing {settings.sessions} sessions, N = {n}, p = {p:g} ...", flush=True)
                draws = draw_sessions(served, spans, table, n, p, settings)
                results.append(overhead(served, draws, costs))
        tokens = per_token(served, table, settings.tokens)
        print("\n".join([*spot_lines(results), "", *tokens.lines(), "", *literal_lines(results)]))
        return costs, results, tokens
    finally:
        torch.set_num_threads(own_threads)


def run(settings: Settings) -> None:
    from transformers import AutoTokenizer

    from potluck.model import resolve_model

    load_before = load_average()
    path = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompt_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]  # (1, prompt)
    costs, results, tokens = in_process(settings, path, prompt_ids)

    print(f"\npart 3: end to end, {settings.e2e_tokens} tokens, {settings.runs} runs ...")
    runs = end_to_end(path, prompt_ids, int(tokenizer.eos_token_id), settings)
    e2e = {p: summarize(r, settings.e2e_tokens) for p, r in runs.items()}
    findings = Findings(costs, results, tokens, e2e, runs, (load_before, load_average()))
    print("\n".join(e2e_lines(e2e)))
    print(f"tokens equal across p: {'yes' if findings.same_tokens else 'NO'}")
    for line in unchecked_lines(findings):
        print(line)
    print(
        f"load average {findings.loads[0]} -> {findings.loads[1]}; potluck from {potluck_source()}"
    )
    paragraph = interpretation(findings, settings)
    print(f"\n{paragraph}")
    if settings.append:
        report(findings, settings, paragraph)
    else:
        print("\n(not appended to docs/benchmarks.md)")


def interpretation(f: Findings, settings: Settings) -> str:
    """One paragraph saying what the figures mean; every claim in it is computed."""
    longest = max(settings.tokens)
    by = {(r.draws.decode_steps, r.draws.rate): r for r in f.results}
    lo, hi, base = by[(longest, 0.05)], by[(longest, 0.1)], by[(longest, 0.0)]
    met = [f"p = {p:g}" for p in RATES[1:] if by[(longest, p)].met]
    verdict = (
        "it meets the target at " + " and ".join(met) if met else "it misses the target at both"
    )
    check_ratio = f.tokens.check_ms[longest] / f.tokens.decode_ms
    commit_us = f.costs.server(1) + f.costs.client(1)
    draw_us = f.costs.us["client: sampler draw"][1]
    e0, e1, e2 = f.e2e[0.0], f.e2e[0.05], f.e2e[0.1]
    # the overhead barely grows with p beyond this: the rate from which p + 2% covers it
    floor = max(0.0, hi.share - TARGET_MARGIN)
    return (
        f"With N = {longest} decode steps, the total verification overhead is "
        f"{pct(lo.share)} of serving compute at p = 0.05 and {pct(hi.share)} at p = 0.1 "
        f"(targets {pct(lo.target)} and {pct(hi.target)}): {verdict}. Doubling p takes the "
        f"spot-check work only from {lo.spot_ms:.0f} to {hi.spot_ms:.0f} ms per session "
        f"({hi.spot_ms / lo.spot_ms:.2f}x), because a spot-check of a decode step cannot "
        "re-run just that step: the checker has no KV cache, so it rebuilds it with one "
        "stateless forward over the hop's inputs up to the last sampled step. With "
        f"{0.05 * (longest + 1):.1f} and {0.1 * (longest + 1):.1f} expected samples per hop, "
        f"{pct(lo.draws.hops_checked / lo.draws.hops)} and "
        f"{pct(hi.draws.hops_checked / hi.draws.hops)} of hops are checked, recomputing "
        f"{pct(lo.draws.checked_share)} and {pct(hi.draws.checked_share)} of their tokens: "
        "about one prefill of the whole session per hop, whatever p is. What keeps that "
        f"affordable is the price of a prefill token, {check_ratio:.3f} of a decode step here "
        f"({f.tokens.check_ms[longest]:.2f} against {f.tokens.decode_ms:.2f} ms per token over "
        "10 blocks: a decode step does a matrix-vector product per weight, a prefill shares "
        "each weight read among all its tokens), so the spot-check compute is close to that "
        f"ratio times ({f.tokens.prompt} + N) / N of serving, and p + 2% covers it only from "
        f"about p = {floor:.3f} up: a lower p saves no checking compute once p x N is a few, "
        "it only lowers the chance of catching a cheater (`detection_probability`). A longer "
        "context would raise the ratio (the stateless forward's attention grows with the "
        f"square of the length). Signed commitments cost {commit_us:.0f} us per decode step on "
        f"both sides together ({pct(commit_us / (f.costs.decode_ms * 1000))} of one hop's "
        f"decode step; {pct(base.share)} of serving compute at p = 0) and a sampler draw "
        f"{draw_us:.1f} us. End to end, per-step latency against p = 0 is "
        f"{e1.step_ms / e0.step_ms:.3f}x and {e2.step_ms / e0.step_ms:.3f}x; spot-checking adds "
        "only the draw to a step (and keeps a reference to a sampled reply), so the difference "
        "is the shared machine's noise (single runs at p = 0 ranged "
        f"{e0.step_range[0]:.0f}-{e0.step_range[1]:.0f} ms per step). The checks show at the "
        "session's close, "
        f"{e1.close_ms - e0.close_ms:+.0f} ms at p = 0.05 and {e2.close_ms - e0.close_ms:+.0f} "
        "ms at p = 0.1 against p = 0: before `generate()` returns, the client sends each "
        "hop's history to the validator as one `Forward`, hop after hop. Total generation "
        f"time is {e1.total_s / e0.total_s:.3f}x and {e2.total_s / e0.total_s:.3f}x that at "
        "p = 0."
    )


def unchecked_lines(f: Findings) -> list[str]:
    missed = {p: s.unchecked for p, s in f.e2e.items() if s.unchecked}
    if not missed:
        return []
    return [
        "- **sampled steps left unchecked** (no checker found at the close): "
        + ", ".join(f"{n} at p = {p:g}" for p, n in missed.items())
        + "; the close and total figures of those runs lack their spot-checks"
    ]


def report(f: Findings, settings: Settings, paragraph: str) -> None:
    import torch

    section = [
        f"## Verification overhead ({datetime.date.today()})",
        "",
        "What verification costs: signed commitments on every step, spot-checks at rate p, "
        "and what a user sees end to end. SmolLM2-135M-Instruct, fp32, spans 0:10, 10:20, "
        f"20:30, batch 1, a {f.tokens.prompt}-token prompt, greedy decoding. Parts 1 and 2 run "
        f"in the benchmark's process with {settings.threads} torch thread(s), like the swarm's "
        "servers and validator; part 3 runs real node processes on 127.0.0.1 (`LocalSwarm`): "
        "a bootstrap with the genesis, a validator holding blocks 0:30 (`--probe-interval "
        "3600`) and servers 0:10, 10:20, 20:30, all `--compute-threads 1`. The method is in "
        "the docstring of benchmarks/verify.py.",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__}; in part 3 the client process uses {torch.get_num_threads()} "
        "torch threads and every process shares the same cores. Python "
        f"{platform.python_version()}; 1-minute load average {f.loads[0]} before and "
        f"{f.loads[1]} after; potluck from {potluck_source()}.",
        "",
        f"**1. Commitments per step** (median of {settings.calls} calls each; hidden states "
        "(1, tokens, 576) fp32; server = as `Server._inference` and `_compute`, client = as "
        "`HopSession._forward`):",
        "",
        *commitment_lines(f.costs),
        "",
        "**2. Spot-check compute per session of 3 hops** (serving compute: median of "
        f"{settings.reps} sessions served step by step with KV caches, each followed by a "
        "pass timing the checker's work (one stateless forward, its commitment and the "
        f"client's check of it) every {settings.grid} tokens of the real history, medians of "
        f"the {settings.reps} passes; spot-checks drawn for {settings.sessions} sessions with "
        "their own secrets, 3 hops each; overhead = (spot-check work + commitments + draws) / "
        "serving compute):",
        "",
        *spot_lines(f.results),
        "",
        *f.tokens.lines(),
        "",
        *literal_lines(f.results),
        "",
        f"**3. End to end** ({settings.e2e_tokens} new tokens; medians of {settings.runs} runs "
        "per p after a warm-up, the order of p rotated between runs; close = last token to "
        "`generate()` returning; counts are totals over the measured runs; "
        + (
            "the client's swarm view is refreshed after the last token of every session, "
            "for every p, to work around the checker-lookup bug in the docstring):"
            if settings.refresh
            else "stock close, without the workaround for the checker-lookup bug in the docstring):"
        ),
        "",
        *e2e_lines(f.e2e),
        "",
        f"- tokens equal across p: **{'yes' if f.same_tokens else 'NO'}**",
        *unchecked_lines(f),
        "",
        paragraph,
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
        "--quick",
        action="store_true",
        help="a short smoke run (N = 16, 32; 16 tokens end to end; fewer calls, sessions and "
        "runs); never appends to docs/benchmarks.md",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for parts 1 and 2 (default 1)"
    )
    parser.add_argument(
        "--runs", type=int, help="end-to-end runs per p (default 5; 2 with --quick)"
    )
    parser.add_argument(
        "--e2e-tokens", type=int, help="new tokens end to end (default 128; 16 with --quick)"
    )
    parser.add_argument(
        "--stock-close",
        action="store_true",
        help="do not refresh the client's swarm view before each session's close (sessions "
        "longer than the validator's announcement then go unchecked: see the docstring)",
    )
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    settings = Settings(
        quick=quick,
        threads=args.threads,
        calls=200 if quick else 2000,
        tokens=(16, 32) if quick else (64, 128),
        reps=1 if quick else 3,
        grid=8 if quick else 4,
        sessions=200 if quick else 2000,
        literal=1 if quick else 6,
        e2e_tokens=args.e2e_tokens or (16 if quick else 128),
        runs=args.runs or (2 if quick else 5),
        refresh=not args.stock_close,
        append=not (quick or args.no_append),
    )
    if settings.threads < 1 or settings.runs < 1 or settings.e2e_tokens < 2:
        parser.error("--threads and --runs must be at least 1, --e2e-tokens at least 2")
    run(settings)


if __name__ == "__main__":
    main()
