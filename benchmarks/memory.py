"""Resident memory of a server holding 10 of SmolLM2's 30 blocks vs the whole model.

Each figure comes from a fresh subprocess that imports Potluck, loads its part,
runs one 16-token forward pass (so every weight page is resident: fp32 weights
stay mapped from model.safetensors, as in transformers), calls ``gc.collect()``
and reads VmRSS, RssAnon and RssFile from ``/proc/self/status``.

    .venv/bin/python benchmarks/memory.py [--cache-dir DIR] [--no-append]

SmolLM2 is prepared on first use (about 20 s). The numbers are printed and a
short section is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import append_to_doc

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SPAN = (0, 10)
PROMPT_TOKENS = 16
MiB = 1024 * 1024


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(kind: str, model: str) -> None:
    """Load and run one part of the model in this (fresh) process; print its memory as JSON."""
    import gc

    import torch

    from potluck.model import BlockSpan, ClientHead, load_config, num_blocks

    started = time.perf_counter()
    weights = 0
    ids = torch.arange(PROMPT_TOKENS).unsqueeze(0) + 100  # (1, seq)
    if kind == "span":
        span = BlockSpan.load(model, *SPAN)
        weights = span.nbytes
        span.forward(torch.randn(1, PROMPT_TOKENS, span.config.hidden_size))
    elif kind == "whole":
        span = BlockSpan.load(model, 0, num_blocks(load_config(model)))
        head = ClientHead.load(model)
        weights = span.nbytes + head.nbytes
        head.logits(span.forward(head.embed(ids)))
    seconds = time.perf_counter() - started
    gc.collect()
    fields = {"rss": "VmRSS", "anon": "RssAnon", "file": "RssFile"}
    report = {key: _status_bytes(field) for key, field in fields.items()}
    print(
        json.dumps({**report, "weights": weights, "seconds": seconds, "torch": torch.__version__})
    )


def measure(kind: str, model: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--model", str(model)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--no-append", action="store_true", help="do not edit docs/benchmarks.md")
    parser.add_argument("--child", choices=["baseline", "span", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model)
        return

    from potluck.model import resolve_model

    model = resolve_model("smollm2", args.cache_dir)
    base, span, whole = (measure(k, model) for k in ("baseline", "span", "whole"))
    ratio = span["rss"] / whole["rss"]
    net = (span["rss"] - base["rss"]) / (whole["rss"] - base["rss"])
    rows = [
        ("imports only (torch, transformers, potluck)", base),
        (f"BlockSpan {SPAN[0]}:{SPAN[1]}", span),
        ("BlockSpan 0:30 + ClientHead (whole model)", whole),
    ]
    lines = [
        "| process holds | VmRSS | above imports | of which file-mapped | weights | load + run |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {label} | {r['rss'] / MiB:.0f} MiB | {(r['rss'] - base['rss']) / MiB:.0f} MiB "
            f"| {(r['file'] - base['file']) / MiB:.0f} MiB | {r['weights'] / MiB:.0f} MiB "
            f"| {r['seconds']:.1f} s |"
            for label, r in rows
        ),
    ]
    summary = f"RSS ratio span/whole: {ratio:.2f} (above the imports baseline: {net:.2f})"
    print("\n".join(lines))
    print(summary)
    if args.no_append:
        return
    today = datetime.date.today().isoformat()
    command = " ".join([".venv/bin/python", "benchmarks/memory.py", *sys.argv[1:]])
    section = "\n".join(
        [
            f"## Memory: 10 of 30 SmolLM2 blocks vs the whole model ({today})",
            "",
            f"SmolLM2-135M-Instruct, fp32, torch {base['torch']}, Python "
            f"{platform.python_version()}, {platform.machine()}. Each row is a fresh process "
            f"that loaded its part, ran one {PROMPT_TOKENS}-token forward pass and called "
            "`gc.collect()`; VmRSS from /proc/self/status. fp32 weights stay mapped from "
            "model.safetensors (as transformers does), so most of a span's memory is "
            "file-backed pages that processes serving the same file share.",
            "",
            *lines,
            "",
            summary + ".",
            "",
            f"Command: `{command}`",
            "",
        ]
    )
    append_to_doc(section)


if __name__ == "__main__":
    main()
