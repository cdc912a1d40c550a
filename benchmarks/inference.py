"""Greedy decoding through server processes vs local transformers, same run.

By default SmolLM2-135M-Instruct in fp32. A `LocalSwarm` starts a bootstrap
node and three servers holding blocks 0:10, 10:20 and 20:30; the client generates 128 new
tokens from a fixed chat prompt through them, and `AutoModelForCausalLM`
generates the same 128 tokens locally in this process. The sides run
interleaved `--runs` times after a warm-up and their medians are compared:

    .venv/bin/python benchmarks/inference.py [--runs 3] [--server-threads 1,0]
        [--omp-passive] [--no-profile] [--no-append]

`--server-threads` lists the `--compute-threads` settings to give the servers
(0: torch's default); each setting gets its own swarm, all of them up at once
and run interleaved with the local baseline, and the first one is the
headline. Printed: tokens/s of each side, the ratio distributed / local, the
overhead per hop in ms ((distributed - local) per-token time / 3 hops), and
whether the distributed tokens equal the local ones. The profile then breaks
one decode step down: each hop's round trip as the client's trio thread sees
it, the same 10 blocks computed in this process with the servers' number of
threads, and the round trip to a server of a one-block tiny model (transport
and protocol with almost no compute). `--omp-passive` sets
OMP_WAIT_POLICY=PASSIVE for every process, so that idle OpenMP threads sleep
instead of spinning on the shared cores. A dated section is appended to
docs/benchmarks.md unless `--no-append` is given.

`--model 1b` is the compute-heavy case: a random-initialised Llama of 0.85B
parameters (hidden 2048, intermediate 5632, 16 layers, 32 heads / 8 KV
heads, vocab 32000, untied head, fp32; seed 0), saved once with
`save_pretrained` under `--cache-dir` (default: Potluck's model cache), served
by two servers holding blocks 0:8 and 8:16, and compared with the same
checkpoint run locally; 32 new tokens after a fixed 32-token random prompt
unless `--new-tokens` says otherwise:

    .venv/bin/python benchmarks/inference.py --model 1b [--runs 3]
        [--server-threads 1,0] [--local-threads 0,1] [--cache-dir DIR]

`--local-threads` runs the local baseline once per torch thread count (each
a side of its own; 0 is torch's default) and compares against the fastest:
on a shared 2-core machine a 2-thread OpenMP team loses badly whenever another
process holds a core, and the 1b model's decode is then several times slower
with 2 threads than with 1, so the 1b case runs both by default.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common import append_to_doc, command_line, load_average, potluck_source

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
PROMPT = "Explain in a few sentences why the sky is blue."
COMMAND = ".venv/bin/python benchmarks/inference.py"
#: The compute-heavy case's architecture: about 0.85B parameters.
LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
LLAMA_1B_SEED = 0
LLAMA_1B_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class Case:
    """One model to benchmark and how the swarm splits it."""

    key: str  # the --model value
    title: str  # the heading of the docs section
    label: str  # what the model is, for the docs section
    spans: tuple[str, ...]  # one server per span, in route order
    new_tokens: int
    profile_steps: int
    target: float  # the ratio distributed / local aimed for
    local_threads: tuple[int, ...]  # default --local-threads

    @property
    def blocks(self) -> int:
        return int(self.spans[-1].split(":")[1])


CASES = {
    "smollm2": Case(
        key="smollm2",
        title="Inference: 3 server processes vs local transformers",
        label="SmolLM2-135M-Instruct, fp32",
        spans=("0:10", "10:20", "20:30"),
        new_tokens=128,
        profile_steps=20,
        target=0.85,
        local_threads=(0,),
    ),
    "1b": Case(
        key="1b",
        title="Inference, compute-heavy: a random 0.85B Llama on 2 server processes "
        "vs local transformers",
        label="A random-initialised Llama of 0.85B parameters (hidden 2048, intermediate "
        "5632, 16 layers, 32 heads / 8 KV heads, vocab 32000, untied LM head, seed "
        f"{LLAMA_1B_SEED}, saved with `save_pretrained`), fp32",
        spans=("0:8", "8:16"),
        new_tokens=32,
        profile_steps=8,
        target=0.9,
        local_threads=(0, 1),
    ),
}


@dataclass
class Figures:
    """Wall-clock seconds of each run of one side, and the tokens it produced."""

    label: str
    seconds: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class Profile:
    """Medians, in ms, of one decode step (one token) and of its parts."""

    local_forward_ms: float  # the local model's forward, all blocks and the head
    step_ms: float  # InferenceSession.step as generate() calls it, head work in between
    head_ms: float  # the client's norm + LM head for one token
    hop_ms: list[float]  # each hop's forward, timed on the client's trio thread
    span_ms: list[float]  # the same blocks computed in this process
    tiny_hop_ms: float  # a hop to a one-block tiny model: transport + protocol
    session_ms: float  # finding a route, opening and closing a session: once per generate()
    prefill_ms: float  # the prompt through the 3 hops
    local_prefill_ms: float  # the prompt through the local model
    startup_ms: list[float]  # 1 / throughput each server announced (measured at start)


# -- helpers ------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def ms(values: Sequence[float]) -> float:
    return 1000 * statistics.median(values)


def threads_label(threads: int) -> str:
    return "torch default" if threads == 0 else f"--compute-threads {threads}"


def local_label(threads: int) -> str:
    if threads == 0:
        return "torch default threads"
    return f"{threads} torch thread" + ("s" if threads > 1 else "")


def with_threads(threads: int, fn: Callable[[], Any]) -> Any:
    """Call `fn` with `threads` torch threads in this process (0: leave as is)."""
    import torch

    own = torch.get_num_threads()
    torch.set_num_threads(threads or own)
    try:
        return fn()
    finally:
        torch.set_num_threads(own)


def parse_threads(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,0, not {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("give distinct thread counts >= 0, like 1,0")
    return values


# -- the profile ----------------------------------------------------------------


def span_range(span: str) -> tuple[int, int]:
    start, end = span.split(":")
    return int(start), int(end)


def profile_step(
    case: Case,
    model: Any,
    local: Any,
    prompt_ids: Any,
    tiny_addr: str,
    *,
    steps: int,
    server_threads: int,
    local_threads: int,
) -> Profile:
    """Time one decode step hop by hop, and the same compute done in this process."""
    import torch

    from potluck.client.routing import Hop
    from potluck.client.session import HopSession
    from potluck.model import BlockSpan
    from potluck.p2p.host import parse_multiaddr
    from potluck.p2p.protocols import PROTOCOL_RPC
    from potluck.wire import InfoRequest, ServerInfo

    runtime = model.runtime
    token = torch.zeros(1, 1, dtype=torch.long)
    # the servers' spans, built on the local model's own layers (no second copy of the weights)
    layers, rotary = local.model.layers, local.model.rotary_emb
    spans = [
        BlockSpan(local.config, a, b, layers[a:b], rotary)
        for a, b in (span_range(s) for s in case.spans)
    ]

    async def hop_times(hops: Sequence[Any], hidden: torch.Tensor) -> list[float]:
        """Run `hidden` through `hops` on the trio thread, timing each hop there."""
        times = []
        for hop in hops:
            t0 = time.perf_counter()
            hidden = await hop.forward(hidden)
            times.append(time.perf_counter() - t0)
        return times

    def open_and_close() -> None:
        with model.inference_session(max_length=8):
            pass

    session_s = [timed(open_and_close)[0] for _ in range(5)]
    prefill_s: list[float] = []
    step_s: list[float] = []
    head_s: list[float] = []
    hop_s: list[list[float]] = [[] for _ in case.spans]
    span_s: list[list[float]] = [[] for _ in case.spans]
    with model.inference_session(max_length=prompt_ids.shape[1] + 2 * steps) as session:
        route = session.route
        prompt_hidden = model.head.embed(prompt_ids)  # (1, prompt, hidden)
        prefill_s.append(timed(lambda: session.step(prompt_hidden))[0])
        # as in generate(): each step followed by the client's own head (2 threads)
        for _ in range(steps):
            x = model.head.embed(token)  # (1, 1, hidden)
            seconds, out = timed(partial(session.step, x))
            step_s.append(seconds)
            head_s.append(timed(partial(model.head.logits, out))[0])
        # the hops back to back, timed on the trio thread, no torch work in between
        for _ in range(steps):
            x = model.head.embed(token)
            for i, seconds in enumerate(runtime.run(hop_times, session.hops, x)):
                hop_s[i].append(seconds)
            session.position += 1  # the hops were driven directly
    # the servers' compute, redone here with the servers' number of threads
    own_threads = torch.get_num_threads()
    torch.set_num_threads(server_threads or own_threads)
    try:
        caches = [span.new_cache() for span in spans]
        h = prompt_hidden
        for span, cache in zip(spans, caches, strict=True):
            h = span.forward(h, cache)
        for _ in range(steps):
            h = model.head.embed(token)
            for i, (span, cache) in enumerate(zip(spans, caches, strict=True)):
                seconds, h = timed(partial(span.forward, h, cache))
                span_s[i].append(seconds)
    finally:
        torch.set_num_threads(own_threads)

    tiny_peer = str(parse_multiaddr(tiny_addr).get_peer_id())

    async def tiny_round_trips() -> list[float]:
        info = await runtime.host.request(tiny_peer, PROTOCOL_RPC, InfoRequest(), addrs=[tiny_addr])
        assert isinstance(info, ServerInfo)
        hop = HopSession(Hop(info, info.start, info.start + 1), max_length=steps + 1)
        await hop.open(runtime.host)
        try:
            hidden = torch.zeros(1, 1, 64)  # the tiny model's hidden size
            return [t for _ in range(steps) for t in await hop_times([hop], hidden)]
        finally:
            await hop.close()

    tiny_s = runtime.run(tiny_round_trips)

    local_s: list[float] = []
    local_prefill_s: list[float] = []

    def local_steps() -> None:
        with torch.inference_mode():
            seconds, out = timed(lambda: local(prompt_ids, use_cache=True))
            local_prefill_s.append(seconds)
            past = out.past_key_values
            for _ in range(steps):
                seconds, out = timed(partial(local, token, past_key_values=past, use_cache=True))
                local_s.append(seconds)
                past = out.past_key_values

    with_threads(local_threads, local_steps)

    return Profile(
        local_forward_ms=ms(local_s),
        step_ms=ms(step_s),
        head_ms=ms(head_s),
        hop_ms=[ms(v) for v in hop_s],
        span_ms=[ms(v) for v in span_s],
        tiny_hop_ms=ms(tiny_s),
        session_ms=ms(session_s),
        prefill_ms=ms(prefill_s),
        local_prefill_ms=ms(local_prefill_s),
        startup_ms=[1000 / hop.server.throughput for hop in route],
    )


def profile_lines(p: Profile, case: Case, local_threads: int) -> list[str]:
    hops = len(case.spans)
    lines = [
        "| one decode step (1 token) | median |",
        "|---|---:|",
        f"| local model forward, {case.blocks} blocks + head, in this process "
        f"({local_label(local_threads)}) | {p.local_forward_ms:.1f} ms |",
        f"| `InferenceSession.step` through the {hops} hops, as in `generate` "
        f"| {p.step_ms:.1f} ms |",
        f"| client's norm + LM head after each step | {p.head_ms:.1f} ms |",
    ]
    for i, (hop, span) in enumerate(zip(p.hop_ms, p.span_ms, strict=True)):
        start, end = span_range(case.spans[i])
        lines += [
            f"| hop {i + 1} ({case.spans[i]}): round trip on the client's trio thread "
            f"| {hop:.1f} ms |",
            f"| hop {i + 1}: the same {end - start} blocks computed in this process, with the "
            f"servers' threads | {span:.1f} ms |",
        ]
    lines += [
        f"| sum of hop round trips minus sum of in-process compute "
        f"| {sum(p.hop_ms) - sum(p.span_ms):.1f} ms |",
        f"| step as in `generate` minus the sum of back-to-back hop round trips "
        f"| {p.step_ms - sum(p.hop_ms):.1f} ms |",
        f"| round trip to a server of a 1-block tiny model (transport + protocol floor) "
        f"| {p.tiny_hop_ms:.1f} ms |",
        f"| prompt prefill: local model / through the {hops} hops "
        f"| {p.local_prefill_ms:.1f} / {p.prefill_ms:.1f} ms |",
        f"| route + open + close a session (once per `generate`) | {p.session_ms:.1f} ms |",
        f"| servers' own figure at start-up (1 / announced throughput), hops 1-{hops} | "
        + ", ".join(f"{v:.1f}" for v in p.startup_ms)
        + " ms |",
    ]
    return lines


# -- the models -------------------------------------------------------------------


def prepare_llama_1b(folder: Path) -> Path:
    """The compute-heavy case's checkpoint in `folder`, made (seeded) on first use."""
    done = folder / ".complete"
    if done.exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    print(f"making the random 0.85B Llama in {folder} (once) ...", flush=True)
    torch.manual_seed(LLAMA_1B_SEED)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_1B), dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), max_shard_size="10GB")  # one model.safetensors
    params = sum(p.numel() for p in model.parameters())
    done.write_text(f"{params} parameters, seed {LLAMA_1B_SEED}\n")
    return folder


def load_case(case: Case, cache_dir: Path | None) -> tuple[Path, Any, dict[str, Any], Any]:
    """The checkpoint folder, prompt ids (1, prompt), generate() kwargs besides
    the token counts, and a tokenizer (None for the random model)."""
    import torch
    from transformers import AutoTokenizer

    from potluck.model import default_cache_dir, resolve_model

    if case.key == "1b":
        folder = (cache_dir or default_cache_dir()) / f"bench-llama-0.85b-seed{LLAMA_1B_SEED}"
        path = prepare_llama_1b(folder)
        generator = torch.Generator().manual_seed(LLAMA_1B_SEED)
        vocab = LLAMA_1B["vocab_size"]
        prompt_ids = torch.randint(3, vocab, (1, LLAMA_1B_PROMPT_TOKENS), generator=generator)
        return path, prompt_ids, {"pad_token_id": LLAMA_1B["pad_token_id"]}, None
    path = resolve_model("smollm2", cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    return path, prompt_ids, {"pad_token_id": tokenizer.eos_token_id}, tokenizer


# -- the run ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.testing.models import make_tiny_llama
    from potluck.testing.swarm import LocalSwarm

    case: Case = CASES[args.model]
    load_before = load_average()
    path, prompt_ids, kwargs, tokenizer = load_case(case, args.cache_dir)
    kwargs |= {
        "do_sample": False,
        "min_new_tokens": args.new_tokens,
        "max_new_tokens": args.new_tokens,
    }
    local = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    local.eval()

    workdir = Path(tempfile.mkdtemp(prefix="potluck-bench-"))
    swarms = [LocalSwarm(workdir / f"threads{t}") for t in args.server_threads]
    models: list[Any] = []
    results = [Figures(f"local-{t}") for t in args.local_threads]
    results += [Figures(f"distributed-{t}") for t in args.server_threads]
    profile: Profile | None = None
    try:
        for swarm, threads in zip(swarms, args.server_threads, strict=True):
            extra = ["--compute-threads", str(threads)] if threads else []
            boot = swarm.start_node("bootstrap")
            servers = [
                swarm.start_node(f"server{i}", model=str(path), blocks=s, extra=extra, wait=False)
                for i, s in enumerate(case.spans, 1)
            ]
            for node in servers:
                swarm.wait_ready(node, timeout=600)
            models.append(
                AutoDistributedModelForCausalLM.from_pretrained(path, initial_peers=[boot.addr])
            )
        sides: list[Callable[[], Any]] = [
            partial(with_threads, t, partial(local.generate, prompt_ids, **kwargs))
            for t in args.local_threads
        ]
        sides += [partial(m.generate, prompt_ids, **kwargs) for m in models]
        for figures, generate in zip(results, sides, strict=True):
            print(f"warm-up {figures.label} ...", flush=True)
            generate()
        for i in range(args.runs):
            order = list(range(len(sides)))
            order = order[i % len(order) :] + order[: i % len(order)]  # rotate who goes first
            for k in order:
                seconds, out = timed(sides[k])
                new = out[0, prompt_ids.shape[1] :].tolist()
                if len(new) != args.new_tokens:
                    raise SystemExit(
                        f"{results[k].label}: {len(new)} tokens, not {args.new_tokens}"
                    )
                results[k].seconds.append(seconds)
                results[k].tokens.append(new)
                print(f"run {i + 1} {results[k].label}: {args.new_tokens / seconds:.2f} tokens/s")
        if args.profile:
            tiny = make_tiny_llama(workdir / "tiny", num_layers=1)
            extra = ["--compute-threads", str(t)] if (t := args.server_threads[0]) else []
            node = swarms[0].start_node("tiny", model=str(tiny), blocks="0:1", extra=extra)
            profile = profile_step(
                case,
                models[0],
                local,
                prompt_ids,
                node.addr,
                steps=args.profile_steps,
                server_threads=args.server_threads[0],
                local_threads=fastest_local(args, results),
            )
    finally:
        for model in models:
            model.close()
        for swarm in swarms:
            swarm.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with the nodes' logs, on failure

    first = results[0].tokens[0]
    text = tokenizer.decode(first) if tokenizer is not None else f"token ids {first[:24]}"
    loads = (load_before, load_average())
    report(args, case, results, profile, prompt_ids.shape[1], text, loads)


def fastest_local(args: argparse.Namespace, results: list[Figures]) -> int:
    """The --local-threads setting whose runs had the lowest median."""
    figures = results[: len(args.local_threads)]
    best = min(range(len(figures)), key=lambda i: figures[i].median())
    threads: int = args.local_threads[best]
    return threads


def report(
    args: argparse.Namespace,
    case: Case,
    results: list[Figures],
    profile: Profile | None,
    prompt_tokens: int,
    text: str,
    loads: tuple[str, str],
) -> None:
    import torch

    n = args.new_tokens
    hops = len(case.spans)
    locals_, dists = results[: len(args.local_threads)], results[len(args.local_threads) :]
    local_threads = fastest_local(args, results)
    local = locals_[args.local_threads.index(local_threads)]
    if args.local_threads == [0]:  # the original single baseline
        labels = ["local transformers `generate`"]
    else:
        labels = [f"local transformers `generate`, {local_label(t)}" for t in args.local_threads]
    labels += [f"distributed, {hops} servers, {threads_label(t)}" for t in args.server_threads]
    rows = [
        "| | tokens/s (median) | ms/token (median) | tokens/s (best) | runs (tokens/s) |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {label} | {n / f.median():.2f} | {1000 * f.median() / n:.1f} | "
            f"{n / min(f.seconds):.2f} | " + ", ".join(f"{n / s:.2f}" for s in f.seconds) + " |"
            for label, f in zip(labels, results, strict=True)
        ),
    ]
    same = all(t == local.tokens[0] for f in results for t in f.tokens)
    summary = []
    for threads, dist in zip(args.server_threads, dists, strict=True):
        ratio = local.median() / dist.median()
        best = min(local.seconds) / min(dist.seconds)
        per_hop = 1000 * (dist.median() - local.median()) / n / hops
        headline = " (headline)" if dist is dists[0] else ""
        summary.append(
            f"- servers with {threads_label(threads)}{headline}: ratio distributed / local "
            f"**{ratio:.2f}** (target {case.target:g}; best run against best run {best:.2f}); "
            f"overhead per hop **{per_hop:.1f} ms** per token"
        )
    if len(locals_) > 1:
        summary.append(
            f"- ratios and overheads are against the faster local setting, "
            f"{local_label(local_threads)}"
        )
    summary.append(f"- distributed tokens equal local tokens: **{'yes' if same else 'NO'}**")
    plines = profile_lines(profile, case, local_threads) if profile is not None else []

    print()
    print("\n".join(rows))
    print("\n".join(summary))
    print(f"sample output: {text[:160]!r}")
    print(f"load average {loads[0]} -> {loads[1]}; potluck from {potluck_source()}")
    if plines:
        print()
        print("\n".join(plines))
    if args.no_append:
        return

    prompt = (
        "chat prompt" if case.key == "smollm2" else f"prompt (random ids, seed {LLAMA_1B_SEED})"
    )
    section = [
        f"## {case.title} ({datetime.date.today()})",
        "",
        f"{case.label}, greedy (`do_sample=False`), {n} new tokens "
        f"(`min_new_tokens = max_new_tokens = {n}`) after a {prompt_tokens}-token {prompt}. "
        f"A bootstrap node and servers holding blocks {', '.join(case.spans)} run as "
        "separate processes on 127.0.0.1 (`LocalSwarm`); the client and the local "
        "baseline share the benchmark's process. Time is the wall clock of the whole "
        "`generate` call (prefill included; for the distributed side also finding a "
        f"route and opening the session). Each side ran {args.runs} times, interleaved "
        "with a rotating order, after a warm-up; medians, with the best run beside them. "
        f"Overhead per hop = (distributed - local) per-token time / {hops}.",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads in the client and "
        "baseline process (the baseline's as labelled when several were run); servers' "
        "torch threads as labelled (`--compute-threads`; torch's default is one per core). "
        "Every process shares the same cores. "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}. Python "
        f"{platform.python_version()}; 1-minute load average {loads[0]} before and "
        f"{loads[1]} after the run; potluck from {potluck_source()}.",
        "",
        *rows,
        "",
        *summary,
        "",
    ]
    if plines:
        section += [
            f"Where one decode step goes ({threads_label(args.server_threads[0])} servers, "
            f"median of {args.profile_steps} steps):",
            "",
            *plines,
            "",
        ]
    section += [f"Command: `{command_line(COMMAND, __file__)}`", ""]
    append_to_doc("\n".join(section))


def main(argv: Sequence[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--model",
        choices=sorted(CASES),
        default="smollm2",
        help="smollm2 (default): 3 servers; 1b: a random 0.85B Llama on 2 servers",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--new-tokens", type=int, help="tokens to generate (default 128; 32 with --model 1b)"
    )
    parser.add_argument(
        "--server-threads",
        type=parse_threads,
        default=[1, 0],
        help="comma-separated --compute-threads settings for the servers, headline first; "
        "0 is torch's default (default: 1,0)",
    )
    parser.add_argument(
        "--local-threads",
        type=parse_threads,
        help="comma-separated torch thread counts for the local baseline, each its own side; "
        "0 is torch's default; ratios use the fastest (default: 0; 0,1 with --model 1b)",
    )
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the breakdown of one decode step",
    )
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="set OMP_WAIT_POLICY=PASSIVE for every process (baseline, client, servers)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where models are prepared (default: Potluck's model cache); "
        "the 1b checkpoint takes 3.4 GB",
    )
    parser.add_argument("--profile-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    case = CASES[args.model]
    if args.new_tokens is None:
        args.new_tokens = case.new_tokens
    if args.profile_steps is None:
        args.profile_steps = case.profile_steps
    if args.local_threads is None:
        args.local_threads = list(case.local_threads)
    if args.runs < 1 or args.new_tokens < 1:
        parser.error("--runs and --new-tokens must be at least 1")
    if args.omp_passive:  # before torch starts OpenMP here; the servers inherit it
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    run(args)


if __name__ == "__main__":
    main()
