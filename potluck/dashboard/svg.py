"""Charts as server-rendered SVG. Pure: data in, markup out, no scripts, no fonts fetched.

- `coverage_chart`: a bar per block of the model, its height the tokens/s
  that route servers give it, the number of servers on it written inside;
  an uncovered block is a red stub.
- `balance_chart`: an account's balance over time as a step line, and its
  available points (balance less slashes) dashed when they differ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from potluck.dashboard.data import BalancePoint, BlockCoverage

__all__ = ["balance_chart", "coverage_chart"]

_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def coverage_chart(
    coverage: Sequence[BlockCoverage], *, width: int = 880, height: int = 200
) -> str:
    """A bar chart of tokens/s per block (see the module docstring)."""
    top, bottom, left, right = 24, 28, 44, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    title = "Coverage across the model's blocks (tokens/s of route servers per block)"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" {_FONT} fill="#444">{escape(title)}</text>',
    ]
    if not coverage:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {_FONT} fill="#888">'
            "no servers announced yet</text></svg>"
        )
        return "".join(parts)
    peak = max((c.throughput for c in coverage), default=0.0) or 1.0
    n = len(coverage)
    slot = plot_w / n
    bar = max(1.0, slot * 0.8)
    base = top + plot_h
    for tick in (0.0, 0.5, 1.0):
        y = base - tick * plot_h
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ddd" stroke-width="1"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT} fill="#666">'
            f"{_fmt(peak * tick)}</text>"
        )
    label_every = max(1, round(n / 15))
    for c in coverage:
        x = left + c.block * slot + (slot - bar) / 2
        if c.servers == 0:
            h, color = 4.0, "#d33"
        else:
            h, color = max(2.0, c.throughput / peak * plot_h), "#3a7"
        tip = f"block {c.block}: {c.servers} servers, {_fmt(c.throughput)} tokens/s"
        parts.append(
            f'<rect class="block{" uncovered" if c.servers == 0 else ""}" x="{x:.1f}" '
            f'y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if bar >= 12 and c.servers:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{base - 4:.1f}" text-anchor="middle" '
                f'{_FONT} fill="#fff">{c.servers}</text>'
            )
        if c.block % label_every == 0 or c.block == n - 1:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{base + 14:.1f}" text-anchor="middle" '
                f'{_FONT} fill="#666">{c.block}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle" {_FONT} '
        'fill="#666">block</text></svg>'
    )
    return "".join(parts)


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def balance_chart(points: Sequence[BalancePoint], *, width: int = 880, height: int = 220) -> str:
    """A step line of balance (and available points) over time; see the module docstring."""
    top, bottom, left, right = 24, 30, 64, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    title = "Balance over time (solid) and available points after slashes (dashed)"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" {_FONT} fill="#444">{escape(title)}</text>',
    ]
    if not points:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {_FONT} fill="#888">'
            "no entries yet</text></svg>"
        )
        return "".join(parts)
    t0, t1 = points[0].time, points[-1].time
    span = max(1, t1 - t0)
    values = [p.balance for p in points] + [p.available for p in points] + [0]
    low, high = min(values), max(values)
    if high == low:
        high = low + 1

    def x_of(t: int) -> float:
        return left + (t - t0) / span * plot_w if t1 > t0 else left + plot_w / 2

    def y_of(v: int) -> float:
        return top + (high - v) / (high - low) * plot_h

    for v in sorted({low, 0, high}):
        y = y_of(v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{"#999" if v == 0 else "#ddd"}" stroke-width="1"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT} fill="#666">'
            f"{v}</text>"
        )

    def steps(values: Sequence[int]) -> str:
        coords: list[str] = []
        previous: int | None = None
        for point, value in zip(points, values, strict=True):
            x = x_of(point.time)
            if previous is not None:
                coords.append(f"{x:.1f},{y_of(previous):.1f}")
            coords.append(f"{x:.1f},{y_of(value):.1f}")
            previous = value
        if previous is not None:
            coords.append(f"{left + plot_w:.1f},{y_of(previous):.1f}")
        return " ".join(coords)

    balances = [p.balance for p in points]
    available = [p.available for p in points]
    if available != balances:
        parts.append(
            f'<polyline class="available" points="{steps(available)}" fill="none" '
            'stroke="#d33" stroke-width="2" stroke-dasharray="5,4"/>'
        )
    parts.append(
        f'<polyline class="balance" points="{steps(balances)}" fill="none" '
        'stroke="#36c" stroke-width="2"/>'
    )
    for point in points[-60:]:
        parts.append(
            f'<circle cx="{x_of(point.time):.1f}" cy="{y_of(point.balance):.1f}" r="2.5" '
            f'fill="#36c"><title>{escape(_clock(point.time))} UTC: balance {point.balance}, '
            f"available {point.available}</title></circle>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" {_FONT} fill="#666">{escape(_clock(t0))} UTC</text>'
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end" {_FONT} fill="#666">'
        f"{escape(_clock(t1))} UTC</text></svg>"
    )
    return "".join(parts)
