"""Honest float noise a spot-check sees, and what a corrupted output looks like.

A server runs its span of blocks with a KV cache, step by step: a prefill of
the prompt, then one token per decode step. A spot-check's checker recomputes
the same blocks in ONE stateless forward over the input history up to the
last sampled step (`potluck.client.spotcheck`), and the client compares the
rows of each sampled step with `potluck.verify.fingerprint.relative_errors`
(per row ``||server - checker|| / ||checker||``). This script measures that
error for honest servers and checkers:

    .venv/bin/python benchmarks/calibrate.py [--models smollm2,tiny,tiny-wide]
        [--tokens 200] [--prompt-tokens 24] [--threads 1,2] [--lengths 4]
        [--seeds 5] [--no-append]

- models: SmolLM2-135M-Instruct (30 blocks, hidden 576) cut into spans
  0:10, 10:20, 20:30, and 0:30 (the whole model on one server); "tiny", a random 6-block Llama from
  `potluck.testing.models.make_tiny_llama` (hidden 64, initializer range
  0.02: its blocks barely change the residual stream) and "tiny-wide", the
  same with initializer range 0.5 and seed 3 (the tests' `tiny_model`), cut
  into 0:3 and 3:6.
- inputs: real hidden states. SmolLM2 answers a chat prompt greedily (fp32,
  with caches, through its three spans) until the session holds `--tokens`
  tokens, and each span's inputs are what the span before it returned at
  every step, exactly as in a swarm. The tiny models are fed `--tokens` random
  token ids (`--prompt-tokens` of them as the prompt) the same way.
- each side computes in float32 or bfloat16 (inputs arrive in float32, as on
  the wire, and are cast to the span's dtype; outputs are cast back), with
  `torch.set_num_threads` taken from `--threads` on either side.
- the checker's forward covers the first L tokens of the history for
  `--lengths` values of L evenly spread over the decode steps (the last one
  the whole session), and every row the server returned below L is compared:
  the prefill's rows and each decode step's row.
- pairs: server and checker both float32; both bfloat16; a bfloat16 server
  against a float32 checker. Every thread combination and checker length is
  pooled into one distribution per (model, dtype pair).

Corruptions, applied to the server's float32 wire output as the node's
`--cheat` does: ``out + m * ||row|| * u`` with `u` a random unit direction
per row (additive), and ``out * (1 + m * randn)`` (multiplicative), for
magnitudes `m` from 1e-4 to 0.7, `--seeds` draws each; the errors are
measured against the checker's honest rows, and the share of rows over the
current `THRESHOLDS` is "caught".

Printed: the tables; a dated section is appended to docs/benchmarks.md
unless `--no-append` is given. The thresholds themselves are set by hand in
potluck/verify/fingerprint.py from these numbers (docs/verification.md).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import append_to_doc, command_line, load_average, potluck_source

COMMAND = ".venv/bin/python benchmarks/calibrate.py"
PROMPT = (
    "Write a long, detailed essay on the history of the printing press, from "
    "woodblocks to Gutenberg and beyond."
)
SMOLLM2_SPANS = ((0, 10), (10, 20), (20, 30))  # the swarm's servers, in route order
SMOLLM2_WHOLE = (0, 30)  # also measured: the whole model on one server
TINY_SPANS = ((0, 3), (3, 6))
DTYPES = ("float32", "bfloat16")
#: (server dtype, checker dtype): the comparisons a swarm makes.
PAIRS = (("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32"))
MAGNITUDES = (1e-4, 1e-3, 1e-2, 0.1, 0.3, 0.5, 0.7)
MODES = ("additive", "multiplicative")


@dataclass
class Session:
    """One session's inputs to each span: (1, tokens, hidden) float32, and the prompt length."""

    spans: list[tuple[int, int]]
    inputs: list[Any]
    prompt: int

    @property
    def tokens(self) -> int:
        return int(self.inputs[0].shape[1])


@dataclass
class Pooled:
    """Honest relative errors of one (model, dtype pair), pooled over spans, threads, lengths."""

    prefill: list[Any] = field(default_factory=list)  # tensors of per-row errors
    decode: list[Any] = field(default_factory=list)
    exact: list[int] = field(default_factory=lambda: [0, 0])  # bit-identical rows: prefill, decode
    rows: list[int] = field(default_factory=lambda: [0, 0])
    by_span: dict[int, float] = field(default_factory=dict)  # max error
    by_threads: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # max, exact share


# -- the sessions -----------------------------------------------------------------


def record_inputs(
    head: Any, spans: Sequence[Any], prompt_ids: Any, tokens: int, next_token: Callable[..., Any]
) -> list[Any]:
    """Run a session through `spans` (fp32, with caches) and return each span's inputs."""
    import torch

    caches = [span.new_cache() for span in spans]
    inputs: list[list[Any]] = [[] for _ in spans]
    current = prompt_ids  # (1, seq)
    done = 0
    while done < tokens:
        hidden = head.embed(current)  # (1, seq, hidden)
        for i, (span, cache) in enumerate(zip(spans, caches, strict=True)):
            inputs[i].append(hidden)
            hidden = span.forward(hidden, cache)
        done += current.shape[1]
        current = next_token(head.logits(hidden)[:, -1], done)  # (1, 1)
    return [torch.cat(steps, dim=1).contiguous() for steps in inputs]


def smollm2_session(tokens: int) -> tuple[Path, Session]:
    from transformers import AutoTokenizer

    from potluck.model import BlockSpan, ClientHead, resolve_model

    path = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    head = ClientHead.load(path)
    spans = [BlockSpan.load(path, a, b) for a, b in SMOLLM2_SPANS]
    greedy = lambda logits, _done: logits.argmax(-1, keepdim=True)  # noqa: E731
    inputs = record_inputs(head, spans, prompt_ids, tokens, greedy)
    # the whole model's inputs are the first span's: the embeddings
    return path, Session(
        [*SMOLLM2_SPANS, SMOLLM2_WHOLE], [*inputs, inputs[0]], int(prompt_ids.shape[1])
    )


def tiny_session(folder: Path, tokens: int, prompt: int) -> Session:
    import torch

    from potluck.model import BlockSpan, ClientHead

    head = ClientHead.load(folder)
    spans = [BlockSpan.load(folder, a, b) for a, b in TINY_SPANS]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, head.config.vocab_size, (1, tokens), generator=generator)
    forced = lambda _logits, done: ids[:, done : done + 1]  # noqa: E731
    inputs = record_inputs(head, spans, ids[:, :prompt], tokens, forced)
    return Session(list(TINY_SPANS), inputs, prompt)


# -- the honest runs ----------------------------------------------------------------


def server_rows(span: Any, history: Any, prompt: int, threads: int) -> Any:
    """(tokens, hidden) float32: a prefill of `prompt` tokens, then one token per step."""
    import torch

    torch.set_num_threads(threads)
    cache = span.new_cache()
    x = history.to(span.dtype)
    outs = [span.forward(x[:, :prompt], cache)]
    for t in range(prompt, x.shape[1]):
        outs.append(span.forward(x[:, t : t + 1], cache))  # (1, 1, hidden)
    return torch.cat(outs, dim=1)[0].float()


def checker_rows(span: Any, history: Any, length: int, threads: int) -> Any:
    """(length, hidden) float32: one stateless forward over the first `length` tokens."""
    import torch

    torch.set_num_threads(threads)
    return span.forward(history[:, :length].to(span.dtype))[0].float()


def checker_lengths(session: Session, count: int) -> list[int]:
    decode = session.tokens - session.prompt
    return sorted({session.prompt + (decode * (i + 1)) // count for i in range(count)})


@dataclass
class Runs:
    """Every honest output of one model: server rows and checker rows, by span and side."""

    server: dict[tuple[int, str, int], Any] = field(default_factory=dict)  # (span, dtype, threads)
    checker: dict[tuple[int, str, int, int], Any] = field(default_factory=dict)  # + length


def run_model(path: Path, session: Session, threads: Sequence[int], lengths: Sequence[int]) -> Runs:
    import torch

    from potluck.model import BlockSpan

    runs = Runs()
    for i, (a, b) in enumerate(session.spans):
        for dtype in DTYPES:
            span = BlockSpan.load(path, a, b, dtype=getattr(torch, dtype))
            history = session.inputs[i]
            for t in threads:
                runs.server[i, dtype, t] = server_rows(span, history, session.prompt, t)
                for length in lengths:
                    runs.checker[i, dtype, t, length] = checker_rows(span, history, length, t)
    return runs


def pool(runs: Runs, session: Session, threads: Sequence[int], lengths: Sequence[int]) -> Any:
    """Honest errors per dtype pair, pooled (see `Pooled`)."""
    import torch

    from potluck.verify.fingerprint import relative_errors

    pooled = {pair: Pooled() for pair in PAIRS}
    for (ds, dc), pd in pooled.items():
        for ts, tc in itertools.product(threads, threads):
            worst, exact, rows = 0.0, 0, 0
            for i, length in itertools.product(range(len(session.spans)), lengths):
                out = runs.server[i, ds, ts][:length]
                ref = runs.checker[i, dc, tc, length]
                err = relative_errors(out, ref)
                same = (out == ref).all(dim=-1)
                pd.prefill.append(err[: session.prompt])
                pd.decode.append(err[session.prompt :])
                for k, part in enumerate((same[: session.prompt], same[session.prompt :])):
                    pd.exact[k] += int(part.sum())
                    pd.rows[k] += len(part)
                exact += int(same.sum())
                rows += len(err)
                worst = max(worst, float(err.max()))
                pd.by_span[i] = max(pd.by_span.get(i, 0.0), float(err.max()))
            pd.by_threads[ts, tc] = [worst, exact / rows]
    return {pair: (pd, torch.cat(pd.prefill), torch.cat(pd.decode)) for pair, pd in pooled.items()}


def side_facts(runs: Runs, session: Session, threads: Sequence[int], lengths: Sequence[int]) -> Any:
    """Bit-exactness of one side against itself: threads, checker length."""
    facts = {}
    spans = range(len(session.spans))
    for dtype in DTYPES:
        if len(threads) > 1:
            t0, t1 = threads[0], threads[1]
            facts[f"{dtype} server, {t0} vs {t1} threads"] = all(
                bool((runs.server[i, dtype, t0] == runs.server[i, dtype, t1]).all()) for i in spans
            )
            facts[f"{dtype} checker, {t0} vs {t1} threads"] = all(
                bool(
                    (
                        runs.checker[i, dtype, t0, lengths[-1]]
                        == runs.checker[i, dtype, t1, lengths[-1]]
                    ).all()
                )
                for i in spans
            )
        full = lengths[-1]
        facts[f"{dtype} checker, L={lengths[0]} vs L={full} on the first {lengths[0]} rows"] = all(
            bool(
                (
                    runs.checker[i, dtype, threads[0], lengths[0]]
                    == runs.checker[i, dtype, threads[0], full][: lengths[0]]
                ).all()
            )
            for i in spans
        )
    return facts


# -- corruptions ----------------------------------------------------------------------


def corrupt(out: Any, mode: str, magnitude: float, generator: Any) -> Any:
    """`out` (rows, hidden) float32 with a corruption of relative size `magnitude` per row."""
    import torch

    noise = torch.randn(out.shape, generator=generator)
    if mode == "additive":
        unit = noise / noise.norm(dim=-1, keepdim=True)
        return out + magnitude * out.norm(dim=-1, keepdim=True) * unit
    return out * (1 + magnitude * noise)


def corruption_errors(
    runs: Runs, session: Session, threads: Sequence[int], seeds: int
) -> dict[tuple[tuple[str, str], str, float], Any]:
    """Errors of corrupted decode rows against the checker's honest rows (whole session)."""
    import torch

    from potluck.verify.fingerprint import relative_errors

    length = session.tokens
    found = {}
    for (ds, dc), mode, m in itertools.product(PAIRS, MODES, MAGNITUDES):
        errs = []
        generator = torch.Generator().manual_seed(1234)
        for i, _ in itertools.product(range(len(session.spans)), range(seeds)):
            out = runs.server[i, ds, threads[0]][session.prompt :]
            ref = runs.checker[i, dc, threads[0], length][session.prompt :]
            errs.append(relative_errors(corrupt(out, mode, m, generator), ref))
        found[(ds, dc), mode, m] = torch.cat(errs)
    return found


# -- the report ---------------------------------------------------------------------


def quantile(values: Any, q: float) -> float:
    return float(values.double().quantile(q)) if values.numel() else float("nan")


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def pair_label(pair: tuple[str, str]) -> str:
    short = {"float32": "fp32", "bfloat16": "bf16"}
    return f"{short[pair[0]]} server / {short[pair[1]]} checker"


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def honest_lines(model: str, pooled: Any) -> list[str]:
    import torch

    lines = []
    for pair, (pd, prefill, decode) in pooled.items():
        both = torch.cat([prefill, decode])
        lines.append(
            f"| {model} | {pair_label(pair)} | {sum(pd.rows)} "
            f"| {share(pd.exact[0], pd.rows[0])} / {share(pd.exact[1], pd.rows[1])} "
            f"| {fmt(quantile(both, 0.5))} | {fmt(quantile(both, 0.99))} "
            f"| **{fmt(float(both.max()))}** "
            f"| {fmt(float(prefill.max()))} / {fmt(float(decode.max()))} |"
        )
    return lines


def span_lines(model: str, session: Session, pooled: Any) -> list[str]:
    lines = []
    for i, (a, b) in enumerate(session.spans):
        cells = [fmt(pd.by_span[i]) for pd, _, _ in pooled.values()]
        lines.append(f"| {model} | {a}:{b} | " + " | ".join(cells) + " |")
    return lines


def thread_lines(model: str, pooled: Any) -> list[str]:
    lines = []
    for pair, (pd, _, _) in pooled.items():
        cells = [
            f"{fmt(worst)} ({100 * exact:.0f}% exact)"
            for (ts, tc), (worst, exact) in sorted(pd.by_threads.items())
        ]
        lines.append(f"| {model} | {pair_label(pair)} | " + " | ".join(cells) + " |")
    return lines


def corruption_lines(model: str, found: Any, thresholds: dict[str, float]) -> list[str]:
    from potluck.verify.fingerprint import threshold_for

    lines = []
    for pair in PAIRS:
        tol = threshold_for(*pair) if set(pair) <= set(thresholds) else float("nan")
        for mode in MODES:
            cells = []
            for m in MAGNITUDES:
                errs = found[pair, mode, m]
                caught = float((errs > tol).double().mean())
                cells.append(
                    f"{fmt(quantile(errs, 0.01))} / {fmt(quantile(errs, 0.5))}, {100 * caught:.0f}%"
                )
            lines.append(f"| {model} | {pair_label(pair)} | {mode} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--models", default="smollm2,tiny,tiny-wide", help="comma-separated (default: all three)"
    )
    parser.add_argument("--tokens", type=int, default=200, help="tokens per session (200)")
    parser.add_argument(
        "--prompt-tokens", type=int, default=24, help="the tiny models' prompt length (24)"
    )
    parser.add_argument("--threads", default="1,2", help="torch thread counts for each side (1,2)")
    parser.add_argument("--lengths", type=int, default=4, help="checker history lengths (4)")
    parser.add_argument("--seeds", type=int, default=5, help="corruption draws per row (5)")
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    threads = [int(t) for t in args.threads.split(",")]
    if not set(models) <= {"smollm2", "tiny", "tiny-wide"} or not models:
        parser.error("--models takes smollm2, tiny and tiny-wide")
    if min(threads) < 1 or args.tokens <= args.prompt_tokens or args.lengths < 1:
        parser.error("threads must be >= 1 and --tokens more than --prompt-tokens")

    import torch

    from potluck.testing.models import make_tiny_llama
    from potluck.verify.fingerprint import THRESHOLDS

    own_threads = torch.get_num_threads()
    load_before = load_average()
    started = time.perf_counter()
    honest: list[str] = []
    per_span: list[str] = []
    by_threads: list[str] = []
    corrupted: list[str] = []
    facts: list[str] = []
    sizes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="potluck-calibrate-") as tmp:
        for model in models:
            t0 = time.perf_counter()
            torch.set_num_threads(own_threads)
            if model == "smollm2":
                path, session = smollm2_session(args.tokens)
            else:
                wide = model == "tiny-wide"
                path = make_tiny_llama(
                    Path(tmp) / model,
                    seed=3 if wide else 0,
                    initializer_range=0.5 if wide else 0.02,
                )
                session = tiny_session(path, args.tokens, args.prompt_tokens)
            lengths = checker_lengths(session, args.lengths)
            runs = run_model(path, session, threads, lengths)
            pooled = pool(runs, session, threads, lengths)
            found = corruption_errors(runs, session, threads, args.seeds)
            honest += honest_lines(model, pooled)
            per_span += span_lines(model, session, pooled)
            by_threads += thread_lines(model, pooled)
            corrupted += corruption_lines(model, found, THRESHOLDS)
            facts += [
                f"- {model}: {what}: {'bit-exact' if same else 'not bit-exact'}"
                for what, same in side_facts(runs, session, threads, lengths).items()
            ]
            spans = ", ".join(f"{a}:{b}" for a, b in session.spans)
            sizes.append(
                f"{model}: spans {spans}, {session.tokens} tokens ({session.prompt}-token prompt "
                f"+ {session.tokens - session.prompt} decode steps), checker lengths "
                f"{', '.join(map(str, lengths))}"
            )
            print(f"{model}: {time.perf_counter() - t0:.0f} s", flush=True)
    torch.set_num_threads(own_threads)
    load_after = load_average()
    elapsed = time.perf_counter() - started

    thread_pairs = list(itertools.product(threads, threads))
    tables = [
        "Honest relative error per row, `||server - checker|| / ||checker||` (pooled over "
        "spans, thread combinations and checker lengths; exact: share of rows bit-identical, "
        "among the prefill's rows / the decode steps' rows):",
        "",
        "| model | dtype pair | rows | exact, prefill / decode | median | p99 | max "
        "| max, prefill / decode rows |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *honest,
        "",
        "Max error by span:",
        "",
        "| model | span | " + " | ".join(pair_label(p) for p in PAIRS) + " |",
        "|---|---|" + "---:|" * len(PAIRS),
        *per_span,
        "",
        "By torch threads (server, checker): max error (share of rows bit-exact):",
        "",
        "| model | dtype pair | "
        + " | ".join(f"threads {ts}, {tc}" for ts, tc in thread_pairs)
        + " |",
        "|---|---|" + "---:|" * len(thread_pairs),
        *by_threads,
        "",
        "Each side against itself:",
        "",
        *facts,
        "",
        "Corrupted decode rows against the honest checker: p1 / median relative error, "
        "and the share caught under the current `THRESHOLDS` "
        f"({', '.join(f'{k} {v:g}' for k, v in THRESHOLDS.items())}):",
        "",
        "| model | dtype pair | corruption | "
        + " | ".join(f"m = {m:g}" for m in MAGNITUDES)
        + " |",
        "|---|---|---|" + "---:|" * len(MAGNITUDES),
        *corrupted,
    ]
    print()
    print("\n".join(tables))
    if args.no_append:
        return
    section = [
        f"## Verification: honest float noise vs corruption ({datetime.date.today()})",
        "",
        "A server runs a span step by step with its KV cache (a prefill of the prompt, then "
        "one token per step); a checker recomputes the span in one stateless forward over "
        "the first L tokens of the same inputs; every row below L is compared "
        "(`potluck.verify.fingerprint.relative_errors`). Inputs are real hidden states "
        "(SmolLM2 answering a chat prompt greedily; random token ids for the tiny models), "
        "sent in float32 and cast by each side. " + "; ".join(sizes) + f". Threads "
        f"{', '.join(map(str, threads))} on either side. Corruptions as the node's `--cheat` "
        f"(additive) and multiplicative, {args.seeds} draws per row. Thresholds and their "
        "reasons: docs/verification.md.",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__}; Python {platform.python_version()}; 1-minute load average "
        f"{load_before} before and {load_after} after; {elapsed:.0f} s; potluck from "
        f"{potluck_source()}.",
        "",
        *tables,
        "",
        f"Command: `{command_line(COMMAND, __file__)}`",
        "",
    ]
    append_to_doc("\n".join(section))


if __name__ == "__main__":
    main()
