"""Prometheus metrics in the text exposition format (version 0.0.4). Pure.

`render_metrics` turns the swarm view and the ledger's summaries into the
text `/metrics` serves; no client library is needed for a few gauges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from potluck.dashboard.data import Balances, LedgerStatus, SwarmHealth, Verification

__all__ = ["CONTENT_TYPE", "Metric", "render", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family: its samples are `(labels, value)` pairs."""

    name: str
    kind: str  # gauge or counter
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """The exposition text of `metrics`: HELP and TYPE lines, then each sample."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{metric.name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{metric.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def render_metrics(
    swarm: SwarmHealth,
    *,
    status: LedgerStatus | None = None,
    balances: Balances | None = None,
    verification: Verification | None = None,
) -> str:
    """Swarm health always; the ledger's metrics when the node keeps a ledger."""
    servers = [s for s in swarm.servers if not s.validator]
    validators = [s for s in swarm.servers if s.validator]
    metrics = [
        Metric(
            "potluck_servers",
            "gauge",
            "Servers announced in the swarm view, by role.",
            [({"role": "server"}, len(servers)), ({"role": "validator"}, len(validators))],
        ),
        Metric(
            "potluck_blocks",
            "gauge",
            "Blocks of the swarm's model.",
            [({}, swarm.num_blocks)],
        ),
        Metric(
            "potluck_swarm_covered",
            "gauge",
            "1 if route servers cover every block of the model, else 0.",
            [({}, 1 if swarm.covered else 0)],
        ),
        Metric(
            "potluck_block_coverage",
            "gauge",
            "Route servers serving each block.",
            [({"block": str(c.block)}, c.servers) for c in swarm.coverage],
        ),
        Metric(
            "potluck_block_throughput",
            "gauge",
            "Tokens per second that route servers announce for each block, summed.",
            [({"block": str(c.block)}, c.throughput) for c in swarm.coverage],
        ),
        Metric(
            "potluck_server_load",
            "gauge",
            "Inference sessions open on each server when it last announced.",
            [({"peer_id": s.peer_id}, s.load) for s in swarm.servers],
        ),
        Metric(
            "potluck_excluded_peers",
            "gauge",
            "Peers this node's ledger shows convicted of a wrong output.",
            [({}, len(swarm.excluded))],
        ),
    ]
    if status is not None:
        metrics += [
            Metric(
                "potluck_ledger_entries",
                "gauge",
                "Entries in this node's ledger replica.",
                [({}, status.entries)],
            ),
            Metric(
                "potluck_accounts",
                "gauge",
                "Accounts with a chain in the ledger.",
                [({}, status.accounts)],
            ),
            Metric(
                "potluck_forks_total",
                "counter",
                "Forks (equivocations) proven in the ledger.",
                [({}, status.forks)],
            ),
            Metric(
                "potluck_ledger_events_total",
                "counter",
                "The replica's ingest counters (accepted, duplicates, rejected.<code>...).",
                [({"event": name}, value) for name, value in sorted(status.counters.items())],
            ),
        ]
    if balances is not None:
        metrics += [
            Metric(
                "potluck_balance_total",
                "gauge",
                "Points held by all accounts' chains.",
                [({}, balances.total_balance)],
            ),
            Metric(
                "potluck_receivable_total",
                "gauge",
                "Points sent (granted, minted...) and not received yet.",
                [({}, balances.total_receivable)],
            ),
            Metric(
                "potluck_minted_total",
                "counter",
                "Points validators minted for serving.",
                [({}, balances.total_minted)],
            ),
            Metric(
                "potluck_granted_total",
                "counter",
                "Points validators granted.",
                [({}, balances.total_granted)],
            ),
        ]
    if verification is not None:
        metrics += [
            Metric(
                "potluck_slashes_total",
                "counter",
                "Slashes written by validators, by reason.",
                [
                    ({"reason": reason}, sum(1 for s in verification.slashes if s.reason == reason))
                    for reason in sorted(
                        {"wrong_output", "false_accusation"}
                        | {s.reason for s in verification.slashes}
                    )
                ],
            ),
            Metric(
                "potluck_slashed_points_total",
                "counter",
                "Points slashes took from their accounts.",
                [({}, verification.points_slashed)],
            ),
            Metric(
                "potluck_cheaters_caught_total",
                "counter",
                "Accounts slashed for a wrong output.",
                [({}, len(verification.cheaters))],
            ),
            Metric(
                "potluck_probes_total",
                "counter",
                "Validator probes recorded in capacity audits, by outcome.",
                [
                    ({"outcome": "answered"}, verification.answered),
                    ({"outcome": "unanswered"}, verification.probes - verification.answered),
                    ({"outcome": "mismatch"}, verification.mismatches),
                ],
            ),
        ]
    return render(metrics)
