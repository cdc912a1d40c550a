"""Ledger speed: verified ingest, replication to five nodes, and a late joiner's sync.

    .venv/bin/python benchmarks/ledger.py [--runs 3] [--sync-entries 100000] [--no-append]

1. **Ingest.** Valid entries from `potluck.testing.ledger.LedgerWorkload`
   (8 accounts: grants, sends, receives) go into a fresh SQLite ledger in
   batches of 2,000, signatures verified on 2 threads: entries/s, median of
   `--runs`. Baseline in the same run: Ed25519 verification alone, one
   thread, on the same entries (the floor any verified ingest pays).
2. **Replicate.** Five ledger-only node processes on 127.0.0.1
   (`potluck node start --genesis ...`); 10,000 new entries are submitted
   to one node (LedgerPush, batches of 1,000, as wallets do) and the clock
   stops when every node's database holds all of them. Median of `--runs`,
   each with new entries. Baseline: the time the first node took to
   acknowledge them all.
3. **Sync.** One node holds `--sync-entries` entries; a new node starts with
   it as its initial peer; the clock runs from its launch until its database
   holds them all (process start included). Baseline: the in-process
   verified ingest of the same entries at the rate measured in 1.

Targets from issue 4: ingest >= 5,000 entries/s, replicate 10,000 in <= 10 s,
sync 100,000 in <= 60 s.
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio
from common import append_to_doc, command_line, load_average, potluck_source

from potluck.ledger.core import Ledger
from potluck.ledger.entry import Entry, signature_ok
from potluck.ledger.genesis import Genesis
from potluck.ledger.replica import PROTOCOL_LEDGER
from potluck.ledger.store import SqliteBackend
from potluck.p2p.host import open_host
from potluck.p2p.identity import Identity
from potluck.testing.ledger import LedgerWorkload
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.wire import LedgerAck, LedgerPush

COMMAND = ".venv/bin/python benchmarks/ledger.py"
BATCH = 2000


def workload(n: int, seed: int = 1) -> tuple[LedgerWorkload, list[Entry]]:
    work = LedgerWorkload(validators=1, accounts=8, seed=seed)
    work.grant_all(10**9)
    work.random_activity(max(0, n - len(work.entries)), random.Random(seed))
    return work, list(work.entries)


def measure_ingest(genesis: Genesis, entries: list[Entry], folder: Path) -> float:
    """Seconds to ingest `entries` into a fresh SQLite ledger, verified on 2 threads."""
    path = folder / f"ingest-{time.monotonic_ns()}.db"
    with ThreadPoolExecutor(2) as executor, SqliteBackend(path) as backend:
        backend.claim_swarm(genesis.swarm_id)
        ledger = Ledger(genesis, backend, executor=executor)
        started = time.perf_counter()
        for i in range(0, len(entries), BATCH):
            report = ledger.ingest(entries[i : i + BATCH])
            assert not report.rejected, report.rejected[:1]
        elapsed = time.perf_counter() - started
        assert backend.entry_count() == len(entries)
    path.unlink()
    return elapsed


def measure_verify(entries: list[Entry]) -> float:
    started = time.perf_counter()
    assert all(signature_ok(e) for e in entries)
    return time.perf_counter() - started


def count_entries(node: NodeProcess) -> int:
    path = node.data_dir / "ledger.db"
    if not path.exists():
        return 0
    with SqliteBackend(path, readonly=True) as backend:
        return backend.entry_count()


async def submit(node: NodeProcess, entries: list[Entry], batch: int = 1000) -> None:
    async with open_host(Identity.generate(), timeout=120) as host:
        for i in range(0, len(entries), batch):
            chunk = entries[i : i + batch]
            reply = await host.request(
                node.peer_id,
                PROTOCOL_LEDGER,
                LedgerPush(tuple((e.raw.decode(), e.signature.hex()) for e in chunk)),
                addrs=[node.addr],
            )
            assert isinstance(reply, LedgerAck) and not reply.rejected, reply


def wait_for(nodes: list[NodeProcess], total: int, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(count_entries(node) >= total for node in nodes):
            return time.monotonic()
        time.sleep(0.05)
    counts = [count_entries(node) for node in nodes]
    raise SystemExit(f"replication did not finish in {timeout:.0f} s: {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ingest-entries", type=int, default=20_000)
    parser.add_argument("--replicate-entries", type=int, default=10_000)
    parser.add_argument("--sync-entries", type=int, default=100_000)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    load_before = load_average()
    runs = args.runs

    print("generating entries ...", flush=True)
    started = time.perf_counter()
    rep_total = args.replicate_entries * runs
    work, entries = workload(max(args.ingest_entries, rep_total, args.sync_entries))
    print(f"  {len(entries)} entries in {time.perf_counter() - started:.1f} s")
    genesis = work.genesis

    with tempfile.TemporaryDirectory(prefix="potluck-ledger-bench-") as tmp:
        folder = Path(tmp)
        sample = entries[: args.ingest_entries]
        ingest_times = [measure_ingest(genesis, sample, folder) for _ in range(runs)]
        verify_times = [measure_verify(sample) for _ in range(runs)]
        ingest_rate = len(sample) / statistics.median(ingest_times)
        verify_rate = len(sample) / statistics.median(verify_times)
        print(f"ingest {ingest_rate:,.0f} entries/s; verify only {verify_rate:,.0f}/s (1 thread)")

        genesis_path = folder / "genesis.json"
        genesis.save(genesis_path)
        extra = ["--genesis", str(genesis_path), "--ledger-sync-interval", "2"]

        with LocalSwarm(folder / "replicate") as swarm:
            nodes = [swarm.start_node(f"n{i}", extra=extra) for i in range(5)]
            time.sleep(2)  # let the five meet each other
            replicate_times, ack_times = [], []
            for run in range(runs):
                chunk = entries[run * args.replicate_entries : (run + 1) * args.replicate_entries]
                total = (run + 1) * args.replicate_entries
                started = time.monotonic()
                trio.run(submit, nodes[0], chunk)
                acked = time.monotonic()
                done = wait_for(nodes, total)
                replicate_times.append(done - started)
                ack_times.append(acked - started)
                print(
                    f"  run {run + 1}: {len(chunk)} entries on 5 nodes in {done - started:.2f} s"
                    f" (first node acknowledged all in {acked - started:.2f} s)"
                )
        replicate = statistics.median(replicate_times)
        ack = statistics.median(ack_times)

        sync_entries = entries[: args.sync_entries]
        with LocalSwarm(folder / "sync") as swarm:
            seed = swarm.start_node("seed", extra=extra)
            print(f"loading {len(sync_entries)} entries into the seed node ...", flush=True)
            trio.run(submit, seed, sync_entries, BATCH)
            started = time.monotonic()
            joiner = swarm.start_node("joiner", extra=extra, wait=False)
            done = wait_for([joiner], len(sync_entries), timeout=600)
            sync_time = done - started
        sync_baseline = len(sync_entries) / ingest_rate
        print(f"sync of {len(sync_entries)} entries by a new node: {sync_time:.1f} s")

    loads = (load_before, load_average())
    rows = [
        (
            f"verified ingest, {len(sample):,} entries, batches of {BATCH}",
            f"{ingest_rate:,.0f} entries/s",
            f"Ed25519 verify only, 1 thread: {verify_rate:,.0f}/s",
            f"{ingest_rate / verify_rate:.2f}",
            ">= 5,000/s: " + ("met" if ingest_rate >= 5000 else "NOT met"),
        ),
        (
            f"replicate {args.replicate_entries:,} new entries to 5 nodes",
            f"{replicate:.2f} s",
            f"first node acknowledges them: {ack:.2f} s",
            f"{replicate / ack:.2f}",
            "<= 10 s: " + ("met" if replicate <= 10 else "NOT met"),
        ),
        (
            f"new node syncs {len(sync_entries):,} entries",
            f"{sync_time:.1f} s",
            f"in-process verified ingest: {sync_baseline:.1f} s",
            f"{sync_time / sync_baseline:.2f}",
            "<= 60 s: " + ("met" if sync_time <= 60 else "NOT met"),
        ),
    ]
    print()
    for row in rows:
        print(" | ".join(row))
    print(f"load average {loads[0]} -> {loads[1]}; potluck from {potluck_source()}")
    if args.no_append:
        return
    section = [
        f"## Ledger: ingest, replication and sync ({datetime.date.today().isoformat()})",
        "",
        f"| what | measured (median of {runs}) | baseline in the same run | ratio | target |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        f"Five ledger-only node processes on 127.0.0.1, {sys.platform}, 2 cores; sync measured "
        "once, from the new node's launch (process start included) until its database held "
        f"every entry. Load average {loads[0]} before and {loads[1]} after; potluck from "
        f"{potluck_source()}.",
        "",
        f"Command: `{command_line(COMMAND, __file__)}`",
        "",
    ]
    append_to_doc("\n".join(section))


if __name__ == "__main__":
    main()
