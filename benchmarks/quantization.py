"""Quantised blocks: memory, speed and quality of each --quant, and the spot-check error it causes.

    .venv/bin/python benchmarks/quantization.py [--models smollm2,1b]
        [--modes none,int8,nf4,dynamic-int8] [--tokens 200] [--runs 3]
        [--speed-tokens 32] [--threads 1] [--no-calibrate] [--no-append]

Part 1, quality and speed, per model and mode. Every block of the model runs
locally in one `BlockSpan` (``BlockSpan.load(path, 0, n, quant=mode)``) between
a float32 `ClientHead`: no swarm. Each (model, mode) runs in a fresh child
process (so that memory is measured on its own) with `--threads` torch threads:

- memory per block: the weight bytes the quantised blocks hold
  (`potluck.model.quant.weight_bytes`: parameters, buffers, scales, packed
  int8 weights), and the resident-set growth of the process (VmRSS after
  loading, quantising and one warm-up step, after ``malloc_trim``, minus VmRSS
  before loading), both divided by the number of blocks; and the peak RSS
  growth while loading (VmHWM, reset before loading), for the whole span.
- decode tokens/s: `--runs` runs of a prefill then `--speed-tokens` greedy
  decode steps; per run, steps / their summed time (embedding, blocks, LM head
  and argmax); the median run is reported.
- relative error of logits against float32, teacher-forced: the mode's model
  is fed float32's own 200 generated tokens, and the logits that choose each
  of the 200 tokens (the prompt's last row, then one per decode step) are
  compared with float32's, ``||logits - ref|| / ||ref||`` per step: mean and
  max over the 200 steps. Teacher-forced top-1 agreement: the share of those
  steps whose argmax is float32's token.
- free-running greedy agreement over 200 generated tokens: the length of the
  prefix identical to float32's tokens, and the share of the 200 positions
  whose token equals float32's. Generation does not stop at an end-of-text
  token.

Models: SmolLM2-135M-Instruct (30 blocks, hidden 576) answering a chat
prompt; the random 0.85B Llama of ``benchmarks/inference.py --model 1b``
(16 blocks, hidden 2048, seed 0, made once in the model cache) after a fixed
32-token random prompt.

Part 2, calibration of spot-check thresholds (SmolLM2, unless
`--no-calibrate`), as ``benchmarks/calibrate.py`` does for dtypes: a session
of `--tokens` tokens through float32 spans 0:10, 10:20, 20:30 records each
span's real input hidden states (and the whole model's, for 0:30). For every
span, a server in each mode computes its rows step by step (prefill, then one
token per step, with a KV cache, threads 1 and 2), and checkers recompute them:

- ``replay``: the same mode, step by step like the server (the other thread
  count, and a second load of the span at the same thread count);
- ``stateless``: the same mode, one forward over the first L tokens (what
  `potluck.client.spotcheck` does today), L at 4 points of the session;
- ``fp32``: a float32 checker, one stateless forward (what a validator holding
  the unquantised model does).

Honest errors ``||server - checker|| / ||checker||`` per row are pooled over
spans, threads and lengths; corruptions as in calibrate.py (additive and
multiplicative, relative size m) are applied to the server's decode rows and
counted as caught when over the proposed threshold (`PROPOSED`).

Printed: the tables; a dated section is appended to docs/benchmarks.md unless
`--no-append` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import append_to_doc, command_line, load_average, potluck_source

COMMAND = ".venv/bin/python benchmarks/quantization.py"
QUANTS = ("none", "int8", "nf4", "dynamic-int8")
MODELS = ("smollm2", "1b")
SMOLLM2_PROMPT = (
    "Write a long, detailed essay on the history of the printing press, from "
    "woodblocks to Gutenberg and beyond."
)
CALIBRATION_SPANS = ((0, 10), (10, 20), (20, 30), (0, 30))
CHECKERS = ("replay", "stateless", "fp32")
MAGNITUDES = (1e-3, 1e-2, 0.1, 0.3, 0.5, 1.0, 2.0)
#: Proposed per-row thresholds, by server mode and checker, set by hand from this script's
#: SmolLM2 calibration (2026-12-05): 0 (exact rows) where every honest row was bit-identical,
#: otherwise about twice the largest honest error measured.
PROPOSED: dict[tuple[str, str], float] = {
    ("int8", "replay"): 0.0,  # honest: bit-identical (2400 rows)
    ("int8", "stateless"): 0.35,  # honest max 0.17
    ("int8", "fp32"): 0.8,  # honest max 0.38
    ("nf4", "replay"): 0.0,  # bit-identical
    ("nf4", "stateless"): 0.05,  # honest max 0.023
    ("nf4", "fp32"): 2.0,  # honest max 1.0
    ("dynamic-int8", "replay"): 0.0,  # bit-identical
    ("dynamic-int8", "stateless"): 3.0,  # honest max 1.5: per-call activation scales
    ("dynamic-int8", "fp32"): 2.5,  # honest max 1.2
}


# -- part 1: one (model, mode) in a child process -------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def settle_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def model_inputs(model: str) -> tuple[Path, Any]:
    """The checkpoint folder and prompt ids (1, prompt) of a benchmark model."""
    import torch

    from potluck.model import default_cache_dir, resolve_model

    if model == "1b":
        from inference import LLAMA_1B, LLAMA_1B_PROMPT_TOKENS, LLAMA_1B_SEED, prepare_llama_1b

        folder = default_cache_dir() / f"bench-llama-0.85b-seed{LLAMA_1B_SEED}"
        path = prepare_llama_1b(folder)
        generator = torch.Generator().manual_seed(LLAMA_1B_SEED)
        ids = torch.randint(
            3, LLAMA_1B["vocab_size"], (1, LLAMA_1B_PROMPT_TOKENS), generator=generator
        )
        return path, ids
    from transformers import AutoTokenizer

    path = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": SMOLLM2_PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    return path, ids


def generate(
    head: Any, span: Any, prompt_ids: Any, tokens: int, forced: Any = None
) -> tuple[Any, list[int], list[float]]:
    """Greedy decoding through `span`: the logits choosing each of `tokens` tokens
    (tokens, vocab), the tokens chosen, and the seconds of each decode step.

    With `forced` (1, tokens) ids, each step is fed the forced token instead of
    the one it chose (teacher forcing)."""
    import torch

    cache = span.new_cache()
    current = prompt_ids  # (1, seq)
    rows: list[Any] = []
    chosen: list[int] = []
    seconds: list[float] = []
    for step in range(tokens):
        t0 = time.perf_counter()
        hidden = span.forward(head.embed(current), cache)  # (1, seq, hidden)
        row = head.logits(hidden[:, -1:])[:, -1]  # (1, vocab)
        token = row.argmax(-1, keepdim=True)  # (1, 1)
        if step:  # step 0 is the prefill
            seconds.append(time.perf_counter() - t0)
        rows.append(row[0])
        chosen.append(int(token))
        current = token if forced is None else forced[:, step : step + 1]
    return torch.stack(rows), chosen, seconds


def child(model: str, quant: str, threads: int, tokens: int, runs: int, speed_tokens: int,
          workdir: Path) -> dict[str, Any]:  # fmt: skip
    """Measure one (model, mode); the float32 run writes the reference the others read."""
    import torch

    from potluck.model import BlockSpan, ClientHead, load_config, num_blocks
    from potluck.model.quant import weight_bytes

    torch.set_num_threads(threads)
    path, prompt_ids = model_inputs(model)
    head = ClientHead.load(path)
    blocks = num_blocks(load_config(path))
    # page in the code and thread pools a forward in this mode touches, on one block,
    # so that the growth measured below is the blocks' own
    generate(head, BlockSpan.load(path, 0, 1, quant=quant), prompt_ids, 2)
    settle_memory()
    before = proc_status()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    span = BlockSpan.load(path, 0, blocks, quant=quant)
    load_s = time.perf_counter() - t0
    peak = proc_status()["VmHWM"]
    generate(head, span, prompt_ids, 2)  # warm-up
    settle_memory()
    after = proc_status()
    result: dict[str, Any] = {
        "model": model,
        "quant": quant,
        "blocks": blocks,
        "weight_bytes": weight_bytes(span.layers),
        "rss_delta": after["VmRSS"] - before["VmRSS"],
        "rss_anon_delta": after["RssAnon"] - before["RssAnon"],
        "rss_file_delta": after["RssFile"] - before["RssFile"],
        "peak_delta": peak - before["VmRSS"],
        "load_s": load_s,
    }
    reference = workdir / f"{model}-reference.pt"
    logits, free_tokens, _ = generate(head, span, prompt_ids, tokens)
    if quant == "none":
        torch.save({"logits": logits, "tokens": free_tokens}, reference)
        forced_logits, forced_tokens = logits, free_tokens
        want_logits, want_tokens = logits, free_tokens
    else:
        ref = torch.load(reference)
        want_logits, want_tokens = ref["logits"], ref["tokens"]
        forced = torch.tensor([want_tokens])
        forced_logits, forced_tokens, _ = generate(head, span, prompt_ids, tokens, forced)
    errors = (forced_logits - want_logits).norm(dim=-1) / want_logits.norm(dim=-1)
    same = [a == b for a, b in zip(free_tokens, want_tokens, strict=True)]
    result |= {
        "logit_err_mean": float(errors.mean()),
        "logit_err_max": float(errors.max()),
        "forced_agree": sum(a == b for a, b in zip(forced_tokens, want_tokens, strict=True))
        / tokens,
        "free_prefix": same.index(False) if False in same else tokens,
        "free_equal": sum(same) / tokens,
    }
    speeds = []
    for _ in range(runs):
        _, _, seconds = generate(head, span, prompt_ids, speed_tokens + 1)
        speeds.append(len(seconds) / sum(seconds))
    result["tokens_per_s"] = statistics.median(speeds)
    result["tokens_per_s_runs"] = speeds
    return result


def run_child(model: str, quant: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{model}-{quant}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        f"{model}:{quant}",
        "--workdir",
        str(workdir),
        "--threads",
        str(args.threads),
        "--tokens",
        str(args.tokens),
        "--runs",
        str(args.runs),
        "--speed-tokens",
        str(args.speed_tokens),
    ]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    print(f"{model} {quant}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def quality_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | --quant | weight bytes / block | RSS growth / block | peak RSS growth "
        "while loading (all blocks) | load + quantise | decode tokens/s (vs none) "
        "| logits rel. error vs fp32, mean / max | teacher-forced top-1 agreement "
        "| free-running: identical prefix, share equal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["model"]: r for r in results if r["quant"] == "none"}
    for r in results:
        mib = 2**20
        none = base.get(r["model"])
        ratio = f" ({r['tokens_per_s'] / none['tokens_per_s']:.2f}x)" if none else ""
        lines.append(
            f"| {r['model']} | {r['quant']} | {r['weight_bytes'] / r['blocks'] / mib:.2f} MiB "
            f"| {r['rss_delta'] / r['blocks'] / mib:.2f} MiB "
            f"| {r['peak_delta'] / mib:.0f} MiB | {r['load_s']:.1f} s "
            f"| {r['tokens_per_s']:.2f}{ratio} "
            f"| {fmt(r['logit_err_mean'])} / {fmt(r['logit_err_max'])} "
            f"| {100 * r['forced_agree']:.1f}% "
            f"| {r['free_prefix']}, {100 * r['free_equal']:.1f}% |"
        )
    return lines


# -- part 2: calibration -----------------------------------------------------------------


@dataclass
class Calibration:
    """Rows of every server and checker, by (span index, mode, threads[, length])."""

    server: dict[tuple[int, str, int], Any] = field(default_factory=dict)
    again: dict[tuple[int, str], Any] = field(default_factory=dict)  # a second load, threads 1
    checker: dict[tuple[int, str, int, int], Any] = field(default_factory=dict)


def calibrate(
    tokens: int, threads: Sequence[int], lengths_count: int
) -> tuple[Any, Calibration, list[int]]:
    import torch
    from calibrate import checker_lengths, checker_rows, server_rows, smollm2_session

    from potluck.model import BlockSpan

    path, session = smollm2_session(tokens)  # spans 0:10, 10:20, 20:30 and 0:30
    assert tuple(session.spans) == CALIBRATION_SPANS
    lengths = checker_lengths(session, lengths_count)
    cal = Calibration()
    for i, (a, b) in enumerate(session.spans):
        history = session.inputs[i]
        for quant in QUANTS:
            t0 = time.perf_counter()
            span = BlockSpan.load(path, a, b, quant=quant)
            for t in threads:
                cal.server[i, quant, t] = server_rows(span, history, session.prompt, t)
                for length in lengths:
                    cal.checker[i, quant, t, length] = checker_rows(span, history, length, t)
            if quant != "none":
                again = BlockSpan.load(path, a, b, quant=quant)
                cal.again[i, quant] = server_rows(again, history, session.prompt, threads[0])
                del again
            del span
            gc.collect()
            print(f"calibration {a}:{b} {quant}: {time.perf_counter() - t0:.0f} s", flush=True)
    torch.set_num_threads(threads[0])
    return session, cal, lengths


def pairs(checker: str, threads: Sequence[int]) -> list[tuple[int, int]]:
    """(server, checker) thread counts compared; a replay at the server's own thread
    count is the second load of the span, at the first thread count only."""
    both = list(itertools.product(threads, threads))
    if checker == "replay":
        return [(ts, tc) for ts, tc in both if ts != tc or ts == threads[0]]
    return both


def reference_rows(
    cal: Calibration, session: Any, quant: str, checker: str, i: int, ts: int, tc: int,
    length: int,
) -> Any:  # fmt: skip
    """The checker's rows that the server's first `length` rows are compared with."""
    if checker == "replay":
        other = cal.again[i, quant] if ts == tc else cal.server[i, quant, tc]
        return other[:length]
    if checker == "stateless":
        return cal.checker[i, quant, tc, length]
    return cal.checker[i, "none", tc, length]


@dataclass
class Honest:
    errors: list[Any] = field(default_factory=list)
    exact: int = 0
    rows: int = 0
    by_span: dict[int, float] = field(default_factory=dict)


def honest_errors(
    cal: Calibration, session: Any, threads: Sequence[int], lengths: Sequence[int]
) -> dict[tuple[str, str], Honest]:
    import torch

    from potluck.verify.fingerprint import relative_errors

    found: dict[tuple[str, str], Honest] = {}
    for quant, checker in itertools.product(QUANTS[1:], CHECKERS):
        h = found[quant, checker] = Honest()
        for i in range(len(session.spans)):
            for ts, tc in pairs(checker, threads):
                for length in lengths if checker != "replay" else [session.tokens]:
                    out = cal.server[i, quant, ts][:length]
                    ref = reference_rows(cal, session, quant, checker, i, ts, tc, length)
                    err = relative_errors(out, ref)
                    h.errors.append(err)
                    h.exact += int((out == ref).all(dim=-1).sum())
                    h.rows += len(err)
                    h.by_span[i] = max(h.by_span.get(i, 0.0), float(err.max()))
        h.errors = [torch.cat(h.errors)]
    return found


def cross_errors(
    cal: Calibration, session: Any, lengths: Sequence[int]
) -> dict[tuple[str, str], float]:
    """Max honest error of a server in one mode against a stateless checker in another."""
    from potluck.verify.fingerprint import relative_errors

    t = 1
    found = {}
    for server, checker in itertools.product(QUANTS, QUANTS):
        worst = 0.0
        for i, length in itertools.product(range(len(session.spans)), lengths):
            out = cal.server[i, server, t][:length]
            ref = cal.checker[i, checker, t, length]
            worst = max(worst, float(relative_errors(out, ref).max()))
        found[server, checker] = worst
    return found


def corruption_rates(
    cal: Calibration, session: Any, threads: Sequence[int], seeds: int
) -> dict[tuple[str, str, str, float], Any]:
    import torch
    from calibrate import MODES, corrupt

    from potluck.verify.fingerprint import relative_errors

    length = session.tokens
    t = threads[0]
    found = {}
    for quant, checker, mode, m in itertools.product(QUANTS[1:], CHECKERS, MODES, MAGNITUDES):
        generator = torch.Generator().manual_seed(1234)
        errs = []
        for i, _ in itertools.product(range(len(session.spans)), range(seeds)):
            out = cal.server[i, quant, t][session.prompt :]
            ref = reference_rows(cal, session, quant, checker, i, t, t, length)[session.prompt :]
            errs.append(relative_errors(corrupt(out, mode, m, generator), ref))
        found[quant, checker, mode, m] = torch.cat(errs)
    return found


def threshold_label(x: float) -> str:
    return "0 (exact)" if x == 0 else f"{x:g}"


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def quantile(values: Any, q: float) -> float:
    return float(values.double().quantile(q)) if values.numel() else float("nan")


CHECKER_LABELS = {
    "replay": "same mode, replayed step by step",
    "stateless": "same mode, one stateless forward",
    "fp32": "float32, one stateless forward",
}


def calibration_lines(
    session: Any,
    honest: dict[tuple[str, str], Honest],
    cross: dict[tuple[str, str], float],
    corrupted: dict[tuple[str, str, str, float], Any],
    cal: Calibration,
) -> list[str]:
    from calibrate import MODES

    lines = [
        "Honest relative error per row, `||server - checker|| / ||checker||` (pooled over "
        "spans, thread combinations and checker lengths; exact: share of rows bit-identical):",
        "",
        "| server --quant | checker | rows | exact | median | p99 | max "
        + "".join(f"| max, span {a}:{b} " for a, b in session.spans)
        + "| proposed threshold |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(session.spans) + "---:|",
    ]
    for (quant, checker), h in honest.items():
        errs = h.errors[0]
        spans = "".join(f"| {fmt(h.by_span[i])} " for i in range(len(session.spans)))
        lines.append(
            f"| {quant} | {CHECKER_LABELS[checker]} | {h.rows} "
            f"| {100 * h.exact / h.rows:.0f}% | {fmt(quantile(errs, 0.5))} "
            f"| {fmt(quantile(errs, 0.99))} | **{fmt(float(errs.max()))}** {spans}"
            f"| {threshold_label(PROPOSED[quant, checker])} |"
        )
    same = [
        f"{quant}: {'bit-identical' if all(bool((cal.again[i, quant] == cal.server[i, quant, 1]).all()) for i in range(len(session.spans))) else 'NOT bit-identical'}"  # noqa: E501
        for quant in QUANTS[1:]
    ]
    lines += [
        "",
        "Run to run (a second load of each span, the same thread count, step by step): "
        + "; ".join(same)
        + ".",
        "",
        "A server in one mode against a stateless checker in another (max over spans and "
        "lengths, 1 thread each):",
        "",
        "| server \\ checker | " + " | ".join(QUANTS) + " |",
        "|---|" + "---:|" * len(QUANTS),
    ]
    for server in QUANTS:
        lines.append(f"| {server} | " + " | ".join(fmt(cross[server, c]) for c in QUANTS) + " |")
    lines += [
        "",
        "Corrupted decode rows against the honest checker: p1 relative error, and the share "
        "caught under the proposed threshold:",
        "",
        "| server --quant | checker | corruption | "
        + " | ".join(f"m = {m:g}" for m in MAGNITUDES)
        + " |",
        "|---|---|---|" + "---:|" * len(MAGNITUDES),
    ]
    for quant, checker in itertools.product(QUANTS[1:], CHECKERS):
        tol = PROPOSED[quant, checker]
        for mode in MODES:
            cells = []
            for m in MAGNITUDES:
                errs = corrupted[quant, checker, mode, m]
                caught = float((errs > tol).double().mean())
                cells.append(f"{fmt(quantile(errs, 0.01))}, {100 * caught:.0f}%")
            lines.append(
                f"| {quant} | {CHECKER_LABELS[checker]} | {mode} | " + " | ".join(cells) + " |"
            )
    return lines


# -- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="smollm2,1b (both)")
    parser.add_argument("--modes", default=",".join(QUANTS), help="--quant values (all four)")
    parser.add_argument("--tokens", type=int, default=200, help="generated tokens (200)")
    parser.add_argument("--runs", type=int, default=3, help="timed decode runs (3)")
    parser.add_argument("--speed-tokens", type=int, default=32, help="decode steps per run (32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--seeds", type=int, default=5, help="corruption draws per row (5)")
    parser.add_argument("--no-calibrate", action="store_true", help="skip part 2")
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if not models or not set(models) <= set(MODELS):
        parser.error(f"--models takes {', '.join(MODELS)}")
    if not modes or not set(modes) <= set(QUANTS) or modes[0] != "none":
        parser.error(f"--modes takes {', '.join(QUANTS)}, starting with none (the reference)")
    if args.threads < 1 or args.runs < 1 or args.tokens < 2 or args.speed_tokens < 1:
        parser.error("--threads, --runs, --speed-tokens must be >= 1 and --tokens >= 2")

    if args.child:
        model, quant = args.child.split(":")
        result = child(
            model, quant, args.threads, args.tokens, args.runs, args.speed_tokens, args.workdir
        )
        (args.workdir / f"{model}-{quant}.json").write_text(json.dumps(result))
        return

    import torch

    load_before = load_average()
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="potluck-quant-") as tmp:
        for model, quant in itertools.product(models, modes):
            results.append(run_child(model, quant, args, Path(tmp)))
    quality = quality_lines(results)
    print("\n".join(quality), flush=True)

    calibration: list[str] = []
    cal_summary = ""
    if not args.no_calibrate:
        threads = [1, 2]
        session, cal, lengths = calibrate(args.tokens, threads, 4)
        honest = honest_errors(cal, session, threads, lengths)
        cross = cross_errors(cal, session, lengths)
        corrupted = corruption_rates(cal, session, threads, args.seeds)
        calibration = calibration_lines(session, honest, cross, corrupted, cal)
        print("\n".join(calibration), flush=True)
        cal_summary = (
            f"SmolLM2 spans {', '.join(f'{a}:{b}' for a, b in session.spans)}, "
            f"{session.tokens} tokens ({session.prompt}-token prompt + "
            f"{session.tokens - session.prompt} decode steps), checker lengths "
            f"{', '.join(map(str, lengths))}, threads 1 and 2 on either side, "
            f"{args.seeds} corruption draws per row"
        )
    load_after = load_average()
    elapsed = time.perf_counter() - started
    if args.no_append:
        return
    section = [
        f"## Quantisation: --quant none, int8, nf4, dynamic-int8 ({datetime.date.today()})",
        "",
        "Every block of the model in one `BlockSpan` with `quant=...`, between a float32 "
        f"`ClientHead`, locally (no swarm); each model and mode in a fresh process with "
        f"{args.threads} torch thread{'s' if args.threads > 1 else ''}. {args.tokens} greedy "
        "tokens; SmolLM2 answers a chat prompt, the random 0.85B Llama (as in "
        "`benchmarks/inference.py --model 1b`) follows a 32-token random prompt. Weight "
        "bytes: `potluck.model.quant.weight_bytes` (parameters, buffers, scales, int8 "
        "weights packed by torch). RSS growth: VmRSS after loading, quantising and a "
        "warm-up step (after `malloc_trim`) minus VmRSS before loading. Peak: VmHWM "
        "(reset before loading) minus VmRSS before. Tokens/s: median of "
        f"{args.runs} runs of {args.speed_tokens} decode steps (embedding, blocks, LM head). "
        "Logits error and teacher-forced agreement: fed float32's tokens, per generated "
        "token. Free-running: each mode generates on its own.",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {platform.machine()}, torch "
        f"{torch.__version__}, bitsandbytes {bnb_version()}; Python "
        f"{platform.python_version()}; 1-minute load average {load_before} before and "
        f"{load_after} after; {elapsed:.0f} s; potluck from {potluck_source()}. "
        f"CPU: {cpu_features()}.",
        "",
        *quality,
        "",
        "The modes (`potluck/model/quant.py`): int8 is bitsandbytes `Linear8bitLt` "
        "without outlier columns (int8 weights with a scale per output row; each token's "
        "activations quantised to int8 with its own scale); nf4 is bitsandbytes "
        "`Linear4bit` (NormalFloat4, a scale per 64 weights), which on a CPU with "
        "AVX512-BF16 runs a fused kernel in bfloat16; dynamic-int8 is torch's "
        "`quantize_dynamic` (fbgemm, per-channel int8 weights, activations quantised per "
        "call with one scale for all the call's tokens, in 7 bits). The 0.85B Llama has "
        "random weights: its logits are nearly flat, so its greedy tokens turn on tiny "
        "margins and its agreement figures say little about a trained model's.",
    ]
    if calibration:
        section += [
            "",
            "### Spot-check calibration",
            "",
            f"As `benchmarks/calibrate.py`, for quantised servers: {cal_summary}. Checkers: "
            "*replayed* recomputes the session with the server's own calls (the prefill, "
            "then one token per call) in the same mode, at the other thread count or after "
            "loading the span again; *stateless* is one forward over the first L tokens in "
            "the same mode, as spot-checks do today; *float32* is that forward on "
            "unquantised blocks. Proposed thresholds (`PROPOSED` in the script): 0, that "
            "is bit-identical rows, where every honest row was bit-identical; otherwise "
            "about twice the largest honest error measured.",
            "",
            *calibration,
        ]
    section += ["", f"Command: `{command_line(COMMAND, __file__)}`", ""]
    append_to_doc("\n".join(section))


def cpu_features() -> str:
    """The CPU capability torch uses, and whether bitsandbytes' nf4 kernel can be fused."""
    import torch

    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    bf16 = "avx512_bf16" in flags
    return (
        f"{torch.backends.cpu.get_cpu_capability()}, "
        f"avx512_bf16 {'yes' if bf16 else 'no'}, avx512_vnni "
        f"{'yes' if 'avx512_vnni' in flags else 'no'}"
    )


def bnb_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
