"""Wire compression of hidden states: bytes, speed and quality of each codec.

    .venv/bin/python benchmarks/wire.py [--models smollm2,1b]
        [--codecs float32,float16,bfloat16,int8-block/64,int8-block/32,int8-block/256]
        [--tokens 200] [--tokens-1b N] [--runs 3] [--speed-tokens 32] [--threads 1]
        [--swarm] [--no-local] [--swarm-codecs float32,float16,bfloat16,int8-block,int8-block/128]
        [--swarm-tokens 64] [--server-threads 1] [--no-append]

The codecs are `potluck.wire.compress.WireCodec`s, named by their labels:
``float32`` (exact), ``float16``, ``bfloat16`` and ``int8-block/B`` (int8 codes
with one float32 scale per `B` consecutive elements of a token's row;
``int8-block`` alone is B = 64). The first codec must be float32: it is the
reference every other one is compared with.

Part 1, in process (no swarm, no sockets). The model's blocks are cut into the
hops the real swarm uses, one `BlockSpan.load(path, a, b)` each: SmolLM2 0:10,
10:20, 20:30; the random 0.85B Llama 0:8, 8:16. Between a float32
`ClientHead` and the spans, every hand-off of hidden states goes through
``codec.encode(x).decode()``: the client's embeddings to the first hop, each
hop's output to the next, and the last hop's output back to the client (4
hand-offs per step on SmolLM2, 3 on the 1b), prompt rows included. That is one
rounding per sender (the client encodes what it sends, each server encodes its
output). Today's client relays every hop's output through itself (client ->
hop 1 -> client -> hop 2 ...); forwarding the bytes it received adds no
rounding, and the benchmark counts the hop-to-hop hand-offs where decoding and
re-encoding them instead would (``encode(decode(e)).decode() != decode(e)``),
with the largest relative change of a token row that made. `--threads` torch
threads. Per model and codec:

- bytes per token on the wire: `wire_bytes(codec, hidden, 1)` for one
  hand-off (the hidden and scales tensors' data, no message header; checked
  against every encoded tensor's size), and per generated token for the whole
  route, both as server-to-server hand-offs (hops + 1 transfers) and as the
  client relays them today (2 x hops transfers: each hop's input sent, its
  output received).
- hidden-state round-trip error: ``||decode(encode(x)) - x|| / ||x||`` per
  token row at every hand-off of the free-running generation; mean and max,
  and the mean per hand-off in a second table.
- relative error of logits against float32, teacher-forced: fed float32's own
  generated tokens, the logits that choose each of the `--tokens` tokens (the
  prompt's last row, then one per decode step) are compared with float32's,
  ``||logits - ref|| / ||ref||`` per step: mean and max over the steps.
  Teacher-forced top-1 agreement: the share of those steps whose argmax is
  float32's token.
- free-running greedy agreement over `--tokens` generated tokens: the length
  of the prefix identical to float32's tokens, and the share of positions
  whose token equals float32's. Generation does not stop at an end-of-text
  token. Where a codec first diverges, the notes under the tables give the
  step, both tokens and float32's margin there (its top-1 minus top-2 logit).
- in-process decode tokens/s: `--runs` runs of a prefill then
  `--speed-tokens` greedy decode steps, the codecs' runs interleaved (each run
  goes through every codec, the order rotating); per run, steps / their summed
  time (embedding, hand-offs, blocks, LM head, argmax); the median run, and
  its ratio to float32's. Nothing crosses a socket here, so this is the cost
  of encoding and decoding on the CPU, not the time saved on a network; the
  codec's own time per decode step (every hand-off's encode + decode) is given
  beside it.

Models: SmolLM2-135M-Instruct (hidden 576) answering the chat prompt of
``benchmarks/quantization.py``; the random 0.85B Llama of
``benchmarks/inference.py --model 1b`` (hidden 2048, seed 0, made once in the
model cache) after a fixed 32-token random prompt, `--tokens-1b` tokens
(default: `--tokens`). Its logits are nearly flat, so its greedy agreement
says little about a trained model's.

Part 2, the real swarm (`--swarm`; needs a client whose
``AutoDistributedModelForCausalLM.from_pretrained`` takes ``codec=``, and
prints why it is skipped otherwise). A `LocalSwarm` runs a bootstrap node and
three SmolLM2 servers holding blocks 0:10, 10:20, 20:30 (`--server-threads`
torch threads each); the client opens one model per codec of
`--swarm-codecs` (the first, float32, is the reference), and each generates
`--swarm-tokens` greedy tokens from the same chat prompt, once as a warm-up
and then `--runs` times, the codecs interleaved with a rotating order.
Reported per codec: tokens/s (new tokens / wall-clock seconds of the whole
`generate` call, route and session included), the median and its ratio to
float32's; the bytes the client sends and receives per generated token
(`wire_bytes` for one token, times the 3 hops, each way); token agreement with
float32 (identical prefix, share equal), whether every run gave the same
tokens, and whether they equal part 1's tokens for the same codec (when part 1
ran with the same codec in the same invocation).

Printed: the tables; a dated section is appended to docs/benchmarks.md unless
`--no-append` is given.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
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

COMMAND = ".venv/bin/python benchmarks/wire.py"
MODELS = ("smollm2", "1b")
#: The hops of the real swarm, per model: one `BlockSpan` each.
SPLITS: dict[str, tuple[tuple[int, int], ...]] = {
    "smollm2": ((0, 10), (10, 20), (20, 30)),
    "1b": ((0, 8), (8, 16)),
}
CODECS = ("float32", "float16", "bfloat16", "int8-block/64", "int8-block/32", "int8-block/256")
SWARM_CODECS = ("float32", "float16", "bfloat16", "int8-block", "int8-block/128")


def parse_codec(text: str) -> Any:
    """The `WireCodec` for a label, or ``int8-block`` alone (the default block size)."""
    from potluck.wire.compress import WireCodec

    return WireCodec("int8-block") if text == "int8-block" else WireCodec.from_label(text)


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


# -- part 1: in process ----------------------------------------------------------------


@dataclass
class Route:
    """A model's client head and its hops, as the swarm splits it, in this process."""

    model: str
    head: Any  # ClientHead
    spans: list[Any]  # BlockSpan, in route order
    prompt_ids: Any  # (1, prompt)
    tokenizer: Any  # None for the random model

    @property
    def hidden(self) -> int:
        return int(self.head.config.hidden_size)

    @property
    def handoffs(self) -> int:
        return len(self.spans) + 1

    def describe(self, tokens: Sequence[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, tokens))
        return repr(self.tokenizer.decode(list(tokens)))


def load_route(model: str) -> Route:
    from quantization import model_inputs

    from potluck.model import BlockSpan, ClientHead

    path, prompt_ids = model_inputs(model)
    head = ClientHead.load(path)
    spans = [BlockSpan.load(path, a, b) for a, b in SPLITS[model]]
    tokenizer = None
    if model == "smollm2":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return Route(model, head, spans, prompt_ids, tokenizer)


@dataclass
class Probe:
    """What a quality run records at each hand-off, besides the tokens."""

    handoffs: int
    errors: list[list[Any]] = field(default_factory=list)  # per hand-off: (rows,) rel. errors
    bytes_checked: int = 0  # encoded tensors whose size matched wire_bytes
    relayed: int = 0  # hand-offs from a hop to the next one, which a client relays
    relay_changed: int = 0  # of which decode -> encode -> decode changed the tensor
    relay_change_max: float = 0.0  # the largest relative change of a token row it made

    def __post_init__(self) -> None:
        self.errors = [[] for _ in range(self.handoffs)]

    def record(self, index: int, x: Any, encoded: Any, decoded: Any) -> None:
        import torch

        from potluck.wire.compress import wire_bytes

        batch, seq, hidden = x.shape
        size = encoded.hidden.nbytes + encoded.scales.nbytes
        if size != wire_bytes(encoded.codec, hidden, batch * seq):
            raise AssertionError(f"{encoded.codec.label}: {size} bytes encoded, not wire_bytes")
        self.bytes_checked += 1
        ref = x.to(torch.float32)
        rows = (decoded - ref).norm(dim=-1) / ref.norm(dim=-1)  # (batch, seq)
        self.errors[index].append(rows.flatten())
        if 0 < index < self.handoffs - 1:  # a hop's output on its way to the next hop
            again = encoded.codec.encode(decoded).decode()
            self.relayed += 1
            if not torch.equal(again, decoded):
                self.relay_changed += 1
                change = (again - decoded).norm(dim=-1) / decoded.norm(dim=-1)
                self.relay_change_max = max(self.relay_change_max, float(change.max()))

    def per_handoff(self) -> list[Any]:
        import torch

        return [torch.cat(e) for e in self.errors]


@dataclass
class Run:
    """One generation through a route under one codec."""

    logits: Any  # (tokens, vocab): the logits that chose each token
    tokens: list[int]
    step_s: list[float]  # each decode step's seconds (the prefill excluded)
    codec_s: list[float]  # of which encoding and decoding, all hand-offs


def generate(
    route: Route,
    codec: Any,
    tokens: int,
    *,
    forced: Any = None,
    probe: Probe | None = None,
) -> Run:
    """Greedy decoding through `route`, every hand-off encoded and decoded by `codec`.

    With `forced` (1, tokens) ids, each step is fed the forced token instead of
    the one it chose (teacher forcing)."""
    import torch

    caches = [span.new_cache() for span in route.spans]
    current = route.prompt_ids  # (1, seq)
    rows: list[Any] = []
    chosen: list[int] = []
    step_s: list[float] = []
    codec_s: list[float] = []
    for step in range(tokens):
        t0 = time.perf_counter()
        in_codec = 0.0
        hidden = route.head.embed(current)  # (1, seq, hidden)
        for i in range(route.handoffs):
            t1 = time.perf_counter()
            encoded = codec.encode(hidden)
            received = encoded.decode()  # (1, seq, hidden) float32
            in_codec += time.perf_counter() - t1
            if probe is not None:
                probe.record(i, hidden, encoded, received)
            hidden = received
            if i < len(route.spans):
                hidden = route.spans[i].forward(hidden, caches[i])  # (1, seq, hidden)
        row = route.head.logits(hidden[:, -1:])[:, -1]  # (1, vocab)
        token = row.argmax(-1, keepdim=True)  # (1, 1)
        if step:  # step 0 is the prefill
            step_s.append(time.perf_counter() - t0)
            codec_s.append(in_codec)
        rows.append(row[0])
        chosen.append(int(token))
        current = token if forced is None else forced[:, step : step + 1]
    return Run(torch.stack(rows), chosen, step_s, codec_s)


@dataclass
class Divergence:
    step: int  # 0-based: the first generated token that differs
    reference: str  # float32's token there, as text (ids for the random model)
    chosen: str  # the codec's token there
    margin: float  # float32's top-1 minus top-2 logit at that step
    codec_margin: float  # the codec's logit for its token minus its logit for float32's
    context: str  # the 8 tokens before it


@dataclass
class Quality:
    model: str
    label: str
    hidden: int
    handoffs: int
    hops: int
    tokens: int
    logit_err_mean: float
    logit_err_max: float
    forced_agree: float
    free_prefix: int
    free_equal: float
    row_err_mean: float
    row_err_max: float
    handoff_err: list[float]  # mean per hand-off
    relayed: int
    relay_changed: int
    relay_change_max: float
    free_tokens: list[int]
    divergence: Divergence | None
    speeds: list[float] = field(default_factory=list)
    codec_ms: list[float] = field(default_factory=list)  # median per run

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.speeds)


def measure_model(model: str, labels: Sequence[str], args: argparse.Namespace) -> list[Quality]:
    """Part 1 for one model: every codec's quality, then their interleaved speed runs."""
    import torch

    tokens = args.tokens_1b if model == "1b" else args.tokens
    t0 = time.perf_counter()
    route = load_route(model)
    codecs = [parse_codec(label) for label in labels]
    generate(route, codecs[0], 2)  # warm-up
    print(f"{model}: loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    results: list[Quality] = []
    reference: Run | None = None
    for codec in codecs:
        t0 = time.perf_counter()
        probe = Probe(route.handoffs)
        free = generate(route, codec, tokens, probe=probe)
        if reference is None:
            reference = forced = free
        else:
            forced_ids = torch.tensor([reference.tokens])
            forced = generate(route, codec, tokens, forced=forced_ids)
        want = reference.logits
        errors = (forced.logits - want).norm(dim=-1) / want.norm(dim=-1)
        same = [a == b for a, b in zip(free.tokens, reference.tokens, strict=True)]
        prefix = same.index(False) if False in same else tokens
        rows = probe.per_handoff()
        every = torch.cat(rows)
        results.append(
            Quality(
                model=model,
                label=codec.label,
                hidden=route.hidden,
                handoffs=route.handoffs,
                hops=len(route.spans),
                tokens=tokens,
                logit_err_mean=float(errors.mean()),
                logit_err_max=float(errors.max()),
                forced_agree=sum(
                    a == b for a, b in zip(forced.tokens, reference.tokens, strict=True)
                )
                / tokens,
                free_prefix=prefix,
                free_equal=sum(same) / tokens,
                row_err_mean=float(every.mean()),
                row_err_max=float(every.max()),
                handoff_err=[float(r.mean()) for r in rows],
                relayed=probe.relayed,
                relay_changed=probe.relay_changed,
                relay_change_max=probe.relay_change_max,
                free_tokens=free.tokens,
                divergence=divergence(route, reference, forced, free, prefix),
            )
        )
        print(
            f"{model} {codec.label}: logits err {fmt(results[-1].logit_err_mean)}, "
            f"prefix {prefix}/{tokens}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    for run in range(args.runs):
        order = list(range(len(codecs)))
        order = order[run % len(order) :] + order[: run % len(order)]  # rotate who goes first
        for k in order:
            timed = generate(route, codecs[k], args.speed_tokens + 1)
            results[k].speeds.append(len(timed.step_s) / sum(timed.step_s))
            results[k].codec_ms.append(1000 * statistics.median(timed.codec_s))
        print(
            f"{model} speed run {run + 1}: "
            + ", ".join(f"{r.label} {r.speeds[-1]:.2f}" for r in results),
            flush=True,
        )
    del route
    gc.collect()
    return results


def divergence(
    route: Route, reference: Run, forced: Run, free: Run, prefix: int
) -> Divergence | None:
    """Where free-running generation first left float32's tokens.

    Up to that step both saw the same tokens, so the teacher-forced logits there
    are the ones the free run chose from."""
    if prefix == len(reference.tokens):
        return None
    ref_row = reference.logits[prefix]
    top2 = ref_row.topk(2).values
    want, got = reference.tokens[prefix], free.tokens[prefix]
    row = forced.logits[prefix]
    return Divergence(
        step=prefix,
        reference=route.describe([want]),
        chosen=route.describe([got]),
        margin=float(top2[0] - top2[1]),
        codec_margin=float(row[got] - row[want]),
        context=route.describe(reference.tokens[max(0, prefix - 8) : prefix]),
    )


def quality_lines(results: Sequence[Quality]) -> list[str]:
    from potluck.wire.compress import wire_bytes

    lines = [
        "| model | codec | tokens | bytes / token, one hand-off | bytes / generated token, "
        "whole route: hand-offs / relayed by the client | hidden-state round-trip rel. error, "
        "mean / max | decode tokens/s in process (vs float32) | codec time / decode step "
        "| logits rel. error vs fp32, mean / max | teacher-forced top-1 agreement "
        "| free-running: identical prefix, share equal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.model: r for r in results if r.label == "float32"}
    for r in results:
        codec = parse_codec(r.label)
        one = wire_bytes(codec, r.hidden, 1)
        ref = base.get(r.model)
        ratio = f" ({r.tokens_per_s / ref.tokens_per_s:.2f}x)" if ref else ""
        full = wire_bytes(parse_codec("float32"), r.hidden, 1)
        lines.append(
            f"| {r.model} | {r.label} | {r.tokens} | {one:,} ({one / full:.0%}) "
            f"| {one * r.handoffs:,} / {one * 2 * r.hops:,} "
            f"| {fmt(r.row_err_mean)} / {fmt(r.row_err_max)} "
            f"| {r.tokens_per_s:.2f}{ratio} | {statistics.median(r.codec_ms):.2f} ms "
            f"| {fmt(r.logit_err_mean)} / {fmt(r.logit_err_max)} "
            f"| {100 * r.forced_agree:.1f}% "
            f"| {r.free_prefix}, {100 * r.free_equal:.1f}% |"
        )
    return lines


def handoff_lines(results: Sequence[Quality]) -> list[str]:
    most = max(r.handoffs for r in results)
    lines = [
        "| model | codec | "
        + " | ".join(f"hand-off {i + 1}" for i in range(most))
        + " | hop-to-hop hand-offs changed by decoding and re-encoding them, "
        "largest rel. change of a token row |",
        "|---|---|" + "---:|" * most + "---:|",
    ]
    for r in results:
        cells = [fmt(e) for e in r.handoff_err] + [""] * (most - r.handoffs)
        lines.append(
            f"| {r.model} | {r.label} | "
            + " | ".join(cells)
            + f" | {r.relay_changed} of {r.relayed}, {fmt(r.relay_change_max)} |"
        )
    return lines


def divergence_lines(results: Sequence[Quality]) -> list[str]:
    lines = []
    for r in results:
        d = r.divergence
        if d is None:
            continue
        lines.append(
            f"- {r.model} {r.label}: first differs at generated token {d.step + 1} of "
            f"{r.tokens}, after {d.context}: float32 chose {d.reference}, "
            f"{r.label} chose {d.chosen}; float32's margin there "
            f"{d.margin:.3g} logits, the codec's for its own token {d.codec_margin:.3g}"
        )
    return lines


def remark_lines(results: Sequence[Quality]) -> list[str]:
    """What a reader needs to read the tables right, for the models and codecs that ran."""
    lines = [
        f"- In-process decode tokens/s of each run, {model}: "
        + "; ".join(
            f"{r.label} " + ", ".join(f"{v:.2f}" for v in r.speeds)
            for r in results
            if r.model == model
        )
        for model in dict.fromkeys(r.model for r in results)
    ]
    exact = [r.label for r in results if r.model == "smollm2" and r.handoff_err[0] == 0]
    exact = [label for label in exact if label != "float32"]
    if exact:
        lines.append(
            f"- SmolLM2's token embeddings are its GGUF's Q8_0 table (int8 with one scale per "
            f"32 values), so {', '.join(exact)} carr{'ies' if len(exact) == 1 else 'y'} "
            "hand-off 1 (the client's embeddings) exactly."
        )
    if any(r.model == "1b" for r in results):
        lines.append(
            "- The 0.85B Llama has random weights: its logits are nearly flat, so its greedy "
            "tokens turn on tiny margins and its agreement figures say little about a trained "
            "model's."
        )
    return lines


# -- part 2: the real swarm --------------------------------------------------------------


@dataclass
class SwarmFigures:
    label: str  # the codec= value given to from_pretrained
    seconds: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)

    def tokens_per_s(self, n: int) -> float:
        return n / statistics.median(self.seconds)


def client_takes_codec() -> bool:
    from potluck.client import AutoDistributedModelForCausalLM

    return "codec" in inspect.signature(AutoDistributedModelForCausalLM.from_pretrained).parameters


def measure_swarm(args: argparse.Namespace) -> tuple[list[SwarmFigures], int, int] | None:
    """Part 2: the figures per codec, the hidden size and the prompt's length; None if skipped."""
    from quantization import model_inputs

    from potluck.client import AutoDistributedModelForCausalLM
    from potluck.model import load_config
    from potluck.testing.swarm import LocalSwarm

    if not client_takes_codec():
        print(
            "part 2 (--swarm) skipped: AutoDistributedModelForCausalLM.from_pretrained has no "
            "codec= parameter in this checkout",
            flush=True,
        )
        return None
    path, prompt_ids = model_inputs("smollm2")
    config = load_config(path)
    hidden = int(config.hidden_size)
    n = args.swarm_tokens
    kwargs = {
        "do_sample": False,
        "min_new_tokens": n,
        "max_new_tokens": n,
        "pad_token_id": config.eos_token_id,
    }
    workdir = Path(tempfile.mkdtemp(prefix="potluck-wire-"))
    swarm = LocalSwarm(workdir)
    models: list[Any] = []
    results = [SwarmFigures(label) for label in args.swarm_codecs]
    try:
        extra = ["--compute-threads", str(args.server_threads)] if args.server_threads else []
        boot = swarm.start_node("bootstrap")
        servers = [
            swarm.start_node(
                f"server{i}", model=str(path), blocks=f"{a}:{b}", extra=extra, wait=False
            )
            for i, (a, b) in enumerate(SPLITS["smollm2"], 1)
        ]
        for node in servers:
            swarm.wait_ready(node, timeout=600)
        from_pretrained: Callable[..., Any] = AutoDistributedModelForCausalLM.from_pretrained
        for label in args.swarm_codecs:
            models.append(from_pretrained(path, initial_peers=[boot.addr], codec=label))
        sides = [partial(m.generate, prompt_ids, **kwargs) for m in models]
        for figures, side in zip(results, sides, strict=True):
            print(f"warm-up {figures.label} ...", flush=True)
            side()
        for run in range(args.runs):
            order = list(range(len(sides)))
            order = order[run % len(order) :] + order[: run % len(order)]
            for k in order:
                t0 = time.perf_counter()
                out = sides[k]()
                seconds = time.perf_counter() - t0
                new = out[0, prompt_ids.shape[1] :].tolist()
                if len(new) != n:
                    raise SystemExit(f"{results[k].label}: {len(new)} tokens, not {n}")
                results[k].seconds.append(seconds)
                results[k].tokens.append(new)
                print(f"swarm run {run + 1} {results[k].label}: {n / seconds:.2f} tokens/s")
    finally:
        for model in models:
            model.close()
        swarm.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with the nodes' logs, on failure
    return results, hidden, int(prompt_ids.shape[1])


def swarm_lines(
    results: Sequence[SwarmFigures], hidden: int, n: int, local: Sequence[Quality]
) -> list[str]:
    from potluck.wire.compress import wire_bytes

    hops = len(SPLITS["smollm2"])
    in_process = {r.label: r.free_tokens for r in local if r.model == "smollm2"}
    ref = results[0]
    lines = [
        "| codec= | tokens/s, median (vs float32) | runs (tokens/s) | client sends / receives "
        "per generated token | identical prefix, share equal vs float32 | same tokens every "
        "run | same tokens as in process (part 1) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        codec = parse_codec(r.label)
        one = wire_bytes(codec, hidden, 1) * hops
        same = [a == b for a, b in zip(r.tokens[0], ref.tokens[0], strict=True)]
        prefix = same.index(False) if False in same else n
        stable = all(t == r.tokens[0] for t in r.tokens)
        local_tokens = in_process.get(codec.label)
        if local_tokens is None:
            versus = "not run"
        else:
            m = min(n, len(local_tokens))
            first = next((i for i in range(m) if r.tokens[0][i] != local_tokens[i]), None)
            versus = f"yes ({m} tokens)" if first is None else f"no: from token {first + 1}"
        lines.append(
            f"| {r.label} | {r.tokens_per_s(n):.2f} "
            f"({r.tokens_per_s(n) / ref.tokens_per_s(n):.2f}x) | "
            + ", ".join(f"{n / s:.2f}" for s in r.seconds)
            + f" | {one:,} B / {one:,} B | {prefix}, {100 * sum(same) / n:.1f}% "
            f"| {'yes' if stable else 'NO'} | {versus} |"
        )
    return lines


# -- main ----------------------------------------------------------------------------------


def split_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="smollm2,1b (both)")
    parser.add_argument(
        "--codecs", default=",".join(CODECS), help="part 1's codec labels, float32 first"
    )
    parser.add_argument("--tokens", type=int, default=200, help="generated tokens (200)")
    parser.add_argument("--tokens-1b", type=int, help="generated tokens for 1b (--tokens)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each codec (3)")
    parser.add_argument("--speed-tokens", type=int, default=32, help="decode steps per run (32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads here (1)")
    parser.add_argument("--no-local", action="store_true", help="skip part 1 (in process)")
    parser.add_argument("--swarm", action="store_true", help="run part 2 (a real local swarm)")
    parser.add_argument(
        "--swarm-codecs",
        default=",".join(SWARM_CODECS),
        help="part 2's codec= values, float32 first",
    )
    parser.add_argument("--swarm-tokens", type=int, default=64, help="part 2's new tokens (64)")
    parser.add_argument(
        "--server-threads", type=int, default=1, help="part 2 servers' --compute-threads (1)"
    )
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    import torch

    from potluck.errors import MessageError

    models = split_list(args.models)
    args.codecs = split_list(args.codecs)
    args.swarm_codecs = split_list(args.swarm_codecs)
    if args.tokens_1b is None:
        args.tokens_1b = args.tokens
    if not models or not set(models) <= set(MODELS):
        parser.error(f"--models takes {', '.join(MODELS)}")
    for option, labels in (("--codecs", args.codecs), ("--swarm-codecs", args.swarm_codecs)):
        try:
            codecs = [parse_codec(label) for label in labels]
        except MessageError as e:
            parser.error(f"{option}: {e}")
        if not codecs or codecs[0].name != "float32" or len(set(codecs)) != len(codecs):
            parser.error(f"{option}: distinct codecs, float32 (the reference) first")
    if min(args.threads, args.runs, args.speed_tokens, args.swarm_tokens) < 1:
        parser.error("--threads, --runs, --speed-tokens, --swarm-tokens must be >= 1")
    if min(args.tokens, args.tokens_1b) < 2 or args.server_threads < 0:
        parser.error("--tokens must be >= 2 and --server-threads >= 0")
    if args.no_local and not args.swarm:
        parser.error("--no-local without --swarm leaves nothing to do")

    torch.set_num_threads(args.threads)
    load_before = load_average()
    started = time.perf_counter()
    local: list[Quality] = []
    if not args.no_local:
        for model in models:
            local += measure_model(model, args.codecs, args)
    swarm = measure_swarm(args) if args.swarm else None
    load_after = load_average()
    elapsed = time.perf_counter() - started

    sections: list[str] = []
    if local:
        quality = quality_lines(local)
        handoffs = handoff_lines(local)
        notes = divergence_lines(local)
        remarks = remark_lines(local)
        print("\n".join(["", *quality, "", *handoffs, "", *notes, "", *remarks]), flush=True)
        tokens = {r.model: r.tokens for r in local}  # in --models order
        sections += [
            f"In process (no swarm), {args.threads} torch thread"
            f"{'s' if args.threads > 1 else ''}: the blocks cut into the swarm's hops ("
            + "; ".join(
                f"{m}: " + ", ".join(f"{a}:{b}" for a, b in SPLITS[m])
                for m in SPLITS
                if m in models
            )
            + "), one `BlockSpan` each, between a float32 `ClientHead`; every hand-off "
            "(client to hop 1, hop to hop, last hop to client; prompt rows included) goes "
            "through `codec.encode(x).decode()`, one rounding per sender. Greedy tokens: "
            + ", ".join(f"{m} {n}" for m, n in tokens.items())
            + "; SmolLM2 answers the chat prompt of `benchmarks/quantization.py`, the random "
            "0.85B Llama follows a 32-token random prompt. Bytes: `wire_bytes` (hidden and "
            "scales tensors, no header; in brackets, against float32), checked against every "
            "encoded tensor; the whole route per generated token as hops + 1 hand-offs, or "
            "as today's client relays it (each hop's input sent and output received). "
            "Round-trip error: `||decode(encode(x)) - x|| / ||x||` per token row over every "
            "hand-off of the free-running generation. Tokens/s: median of "
            f"{args.runs} runs of {args.speed_tokens} decode steps (embedding, hand-offs, "
            "blocks, LM head), the codecs interleaved; nothing crosses a socket, so this is "
            "only the codecs' CPU cost. Logits error and teacher-forced agreement: fed "
            "float32's tokens, per generated token. Free-running: each codec generates on "
            "its own.",
            "",
            *quality,
            "",
            "Mean round-trip error per hand-off (1 is the client's embeddings to hop 1, the "
            "last is the last hop's output to the client), and, for the hop-to-hop hand-offs "
            "that today's client relays, how many would change if the client decoded and "
            "re-encoded them instead of forwarding the bytes it received:",
            "",
            *handoffs,
            "",
        ]
        if notes:
            sections += ["Where free-running generation first leaves float32's tokens:", "", *notes]
        else:
            sections += ["Every codec generated exactly float32's tokens."]
        sections += ["", *remarks, ""] if remarks else [""]
    if swarm is not None:
        figures, hidden, prompt = swarm
        lines = swarm_lines(figures, hidden, args.swarm_tokens, local)
        print("\n".join(["", *lines]), flush=True)
        sections += [
            "### Through a real swarm",
            "",
            "A bootstrap node and 3 SmolLM2 servers (blocks "
            + ", ".join(f"{a}:{b}" for a, b in SPLITS["smollm2"])
            + f", `--compute-threads {args.server_threads}`) as processes on 127.0.0.1 "
            "(`LocalSwarm`); one client model per codec (`from_pretrained(..., codec=...)`), "
            f"each generating {args.swarm_tokens} greedy tokens after the {prompt}-token chat "
            f"prompt, a warm-up then {args.runs} runs interleaved with a rotating order. "
            "Tokens/s: new tokens / wall clock of the whole `generate` (route and session "
            f"included). Bytes: `wire_bytes` for one token times {len(SPLITS['smollm2'])} "
            "hops, each way.",
            "",
            *lines,
            "",
        ]
    elif args.swarm:
        sections += [
            "Part 2 (real swarm) skipped: `from_pretrained` takes no `codec=` in this checkout.",
            "",
        ]
    if args.no_append or not (local or swarm):
        return
    section = [
        f"## Wire compression of hidden states: float32, float16, bfloat16, int8-block "
        f"({datetime.date.today()})",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__}; Python {platform.python_version()}; 1-minute load average "
        f"{load_before} before and {load_after} after; {elapsed:.0f} s; potluck from "
        f"{potluck_source()}.",
        "",
        *sections,
        f"Command: `{command_line(COMMAND, __file__)}`",
        "",
    ]
    append_to_doc("\n".join(section))


if __name__ == "__main__":
    main()
