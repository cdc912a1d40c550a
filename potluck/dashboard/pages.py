"""The dashboard's HTML pages, rendered on the server from `potluck.dashboard.data`. Pure.

Every value that comes from the ledger or from announcements (memos, peer
IDs, addresses...) is escaped. Pages link only to the dashboard itself and
load only its own stylesheet and script (`potluck.dashboard.assets`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import quote

from potluck import __version__
from potluck.dashboard.data import (
    AccountDetail,
    Balances,
    Checkpoints,
    EntryDetail,
    EntrySummary,
    ForkRow,
    Status,
    SwarmHealth,
    Verification,
)
from potluck.dashboard.svg import balance_chart, coverage_chart
from potluck.ledger.entry import KINDS

NAV = (
    ("swarm", "/", "Swarm health"),
    ("balances", "/balances", "Balances"),
    ("ledger", "/ledger", "Ledger"),
    ("verification", "/verification", "Verification"),
    ("api", "/api", "API"),
)
MAX_BODY_CHARS = 20_000
"""An entry body longer than this (evidence) is cut on its page; the API has all of it."""


# ---- formatting ----------------------------------------------------------------------


def short(text: str, head: int = 8, tail: int = 6) -> str:
    return text if len(text) <= head + tail + 1 else f"{text[:head]}…{text[-tail:]}"


def when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def rep(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def peer_link(peer_id: str, account: str) -> str:
    """A peer's short ID (its full ID in the title), linked to its account."""
    text = f'<span class="mono" title="{escape(peer_id)}">{escape(short(peer_id))}</span>'
    if account:
        return f'<a href="/accounts/{quote(account)}">{text}</a>'
    return text


def account_link(account: str, peer_id: str = "") -> str:
    title = escape(f"{account} ({peer_id})" if peer_id else account)
    return (
        f'<a class="mono" href="/accounts/{quote(account)}" title="{title}">'
        f"{escape(account[:16])}</a>"
    )


def entry_link(entry_hash: str) -> str:
    return (
        f'<a class="mono" href="/entries/{quote(entry_hash)}" title="{escape(entry_hash)}">'
        f"{escape(entry_hash[:12])}</a>"
    )


def card(label: str, value: object, cls: str = "") -> str:
    klass = f' class="value {cls}"' if cls else ' class="value"'
    return (
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f"<div{klass}>{escape(str(value))}</div></div>"
    )


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """A table; cells are HTML already (escape them), `numeric` columns align right."""
    nums = set(numeric)
    head = "".join(
        f'<th class="num">{escape(h)}</th>' if i in nums else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in nums else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ---- layout --------------------------------------------------------------------------


def layout(
    title: str,
    active: str,
    content: str,
    *,
    revision: str,
    swarm: str | None,
    partial: bool = False,
) -> str:
    """A whole page, or with `partial` only its `#content` (what the script swaps in)."""
    inner = f'<div id="content" data-revision="{escape(revision)}">{content}</div>'
    if partial:
        return inner
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{escape(label)}</a>'
        for key, href, label in NAV
    )
    name = escape(swarm) if swarm else "no ledger"
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)} · Potluck</title>"
        '<link rel="stylesheet" href="/assets/dashboard.css"></head><body>'
        '<header><span class="brand">Potluck</span>'
        f'<span class="swarm">swarm {name}</span><nav>{nav}</nav>'
        '<span id="live">static</span></header>'
        f"<main>{inner}</main>"
        "<footer>Read-only dashboard, Potluck "
        f"{escape(__version__)}. Everything shown here is in the JSON API "
        '(<a href="/api">/api</a>, <a href="/openapi.json">OpenAPI</a>); '
        'Prometheus metrics at <a href="/metrics">/metrics</a>.</footer>'
        '<script src="/assets/dashboard.js"></script></body></html>'
    )


NO_LEDGER = (
    '<p class="notice">This node keeps no ledger: it was started without --genesis. '
    "Start it (or <code>potluck dashboard</code>) with the swarm's genesis file to see "
    "balances, entries and verification.</p>"
)


def error_content(status_code: int, message: str) -> str:
    return (
        f"<h1>Error {status_code}</h1><p class=notice>{escape(message)}</p>"
        '<p><a href="/">Back to the swarm</a></p>'
    )


# ---- pages ---------------------------------------------------------------------------


def swarm_content(health: SwarmHealth, status: Status) -> str:
    servers = [s for s in health.servers if not s.validator]
    validators = [s for s in health.servers if s.validator]
    covered = sum(1 for c in health.coverage if c.servers)
    cards = [
        card("model", health.model or short(health.model_identity) or "unknown"),
        card("servers", len(servers)),
        card("validators", len(validators)),
        card(
            "blocks covered",
            f"{covered}/{health.num_blocks}",
            "good" if health.covered else "bad",
        ),
    ]
    if health.weakest_block is not None:
        cards.append(
            card(
                "weakest block",
                f"{health.weakest_block} ({health.weakest_throughput:.1f} tok/s)",
            )
        )
    if status.ledger is not None:
        cards += [
            card("ledger entries", status.ledger.entries),
            card("accounts", status.ledger.accounts),
        ]
    rows = []
    for s in health.servers:
        role = (
            '<span class="badge validator">validator</span>'
            if s.validator
            else '<span class="badge">server</span>'
        )
        if s.attested:
            role += ' <span class="badge">attested</span>'
        rows.append(
            [
                peer_link(s.peer_id, s.account),
                role,
                f"{s.start}:{s.end}",
                f"{s.throughput:.1f}",
                str(s.load),
                str(s.free_cache_tokens),
                f"{s.bandwidth / 2**20:.1f}" if s.bandwidth else "–",
                rep(s.reputation),
                escape(duration(s.uptime_seconds)),
                escape(s.dtype if s.quant == "none" else f"{s.dtype}, {s.quant}"),
            ]
        )
    excluded = (
        "<h2>Excluded peers</h2><p>Convicted of a wrong output by this node's ledger, "
        "left out of routes: "
        + ", ".join(f'<span class="mono">{escape(p)}</span>' for p in health.excluded)
        + "</p>"
        if health.excluded
        else ""
    )
    other = (
        f'<p class="muted">{health.other_models} announcements of other models are not shown.</p>'
        if health.other_models
        else ""
    )
    return (
        "<h1>Swarm health</h1>"
        f'<div class="cards">{"".join(cards)}</div>'
        f"{coverage_chart(health.coverage)}"
        f"<h2>Servers ({len(health.servers)})</h2>"
        + table(
            [
                "peer",
                "role",
                "blocks",
                "tokens/s",
                "load",
                "free cache",
                "MiB/s",
                "reputation",
                "uptime",
                "dtype, weights",
            ],
            rows,
            numeric=(3, 4, 5, 6, 7),
        )
        + '<p class="muted">Uptime: how long this node has seen the server without a gap. '
        "Reputation: the share of validator probes it answered right (0 once slashed).</p>"
        + excluded
        + other
    )


def balances_content(balances: Balances) -> str:
    cards = "".join(
        [
            card("accounts", len(balances.accounts)),
            card("points held", balances.total_balance),
            card("waiting to be received", balances.total_receivable),
            card("minted for serving", balances.total_minted),
            card("granted", balances.total_granted),
            card("slashed", balances.total_slashed, "bad" if balances.total_slashed else ""),
        ]
    )
    rows = []
    for row in balances.accounts:
        tags = []
        if row.validator:
            tags.append('<span class="badge validator">validator</span>')
        if row.frozen:
            tags.append('<span class="badge bad">frozen</span>')
        if row.slashed:
            tags.append('<span class="badge bad">slashed</span>')
        rows.append(
            [
                str(row.rank),
                account_link(row.account, row.peer_id) + " " + " ".join(tags),
                f'<span class="mono" title="{escape(row.peer_id)}">'
                f"{escape(short(row.peer_id))}</span>",
                f'<span class="balance">{row.balance}</span>',
                str(row.receivable),
                str(row.slashed),
                f'<span class="{"bad" if row.available < 0 else ""}">{row.available}</span>',
                str(row.minted),
                rep(row.reputation),
            ]
        )
    return (
        "<h1>Balances</h1>"
        f'<div class="cards">{cards}</div>'
        "<h2>Leaderboard</h2>"
        + table(
            [
                "#",
                "account",
                "peer",
                "balance",
                "receivable",
                "slashed",
                "available",
                "earned (minted)",
                "reputation",
            ],
            rows,
            numeric=(0, 3, 4, 5, 6, 7, 8),
        )
        + '<p class="muted">Available = balance − slashed (negative: a debt). Receivable: '
        "sent to the account and not yet taken into its chain.</p>"
    )


def entries_table(entries: Sequence[EntrySummary], *, author: bool = True) -> str:
    rows = []
    for e in entries:
        row = [entry_link(e.hash), escape(when(e.time))]
        if author:
            row.append(account_link(e.author))
        row += [str(e.seq), f"<code>{escape(e.kind)}</code>", str(e.balance), escape(e.summary)]
        rows.append(row)
    headers = ["entry", "time (UTC)", *(["author"] if author else []), "seq", "kind"]
    headers += ["balance after", "what"]
    return table(headers, rows, numeric=(3, 5) if author else (2, 4))


def account_content(detail: AccountDetail) -> str:
    state = []
    if detail.validator:
        state.append('<span class="badge validator">validator</span>')
    if detail.frozen:
        state.append('<span class="badge bad">frozen: its chain forked</span>')
    cards = "".join(
        [
            card("balance", detail.balance),
            card("available", detail.available, "bad" if detail.available < 0 else ""),
            card("slashed", detail.slashed, "bad" if detail.slashed else ""),
            card("receivable", sum(e.amount for e in detail.receivable)),
            card("earned (minted)", detail.minted),
            card("reputation", rep(detail.reputation)),
            card("chain length", detail.seq),
        ]
    )
    return (
        "<h1>Account</h1>"
        f'<dl class="fields"><dt>account</dt><dd class="mono">{escape(detail.account)}</dd>'
        f'<dt>peer ID</dt><dd class="mono">{escape(detail.peer_id)}</dd>'
        f"<dt>head</dt><dd>{entry_link(detail.head) if detail.seq else '–'} "
        f"{' '.join(state)}</dd></dl>"
        f'<div class="cards">{cards}</div>'
        f"{balance_chart(detail.chart)}"
        "<h2>Latest entries</h2>"
        + entries_table(detail.history, author=False)
        + "<h2>Waiting to be received</h2>"
        + entries_table(detail.receivable)
        + "<h2>Slashes against it</h2>"
        + entries_table(detail.slashes)
    )


def ledger_content(
    status: Status,
    entries: Sequence[EntrySummary],
    forks: Sequence[ForkRow],
    checkpoints: Checkpoints,
    *,
    kind: str | None,
) -> str:
    ledger = status.ledger
    cards = ""
    if ledger is not None:
        cards = "".join(
            [
                card("entries", ledger.entries),
                card("accounts", ledger.accounts),
                card("forks", ledger.forks, "bad" if ledger.forks else ""),
                card("final heads", f"{checkpoints.final_heads}/{checkpoints.heads}"),
                card("frontier digest", ledger.frontier_digest[:16]),
            ]
        )
    filters = ['<a href="/ledger">all</a>'] + [
        f'<a href="/ledger?kind={k}"{" class=active" if k == kind else ""}>{k}</a>' for k in KINDS
    ]
    fork_rows = [
        [
            account_link(f.account, f.peer_id),
            str(f.seq),
            entry_link(f.first.hash) + " " + escape(f.first.summary),
            entry_link(f.second.hash) + " " + escape(f.second.summary),
            '<span class="good">valid</span>'
            if f.proof_valid
            else f'<span class="bad">invalid: {escape(f.problem)}</span>',
            str(f.slashed),
        ]
        for f in forks
    ]
    checkpoint_rows = [
        [
            entry_link(c.hash),
            escape(when(c.time)),
            account_link(c.validator),
            str(c.accounts),
            f'<span class="mono">{escape(c.frontier_digest[:16])}</span>',
            "latest" if c.latest else "",
        ]
        for c in checkpoints.checkpoints
    ]
    title = f"Latest {escape(kind)} entries" if kind else "Latest entries"
    return (
        "<h1>Ledger explorer</h1>"
        f'<div class="cards">{cards}</div>'
        f"<h2>{title}</h2>"
        f'<p class="filters">{" ".join(filters)}</p>'
        + entries_table(entries)
        + "<h2>Forks and fraud proofs</h2>"
        "<p class=muted>Two entries signed by one account at one seq: the account is frozen "
        "and anyone can re-check the proof from the two entries alone.</p>"
        + table(["account", "seq", "first", "second", "proof", "slashed"], fork_rows, (1, 5))
        + "<h2>Checkpoints</h2>"
        f"<p class=muted>{checkpoints.validators} validators; an entry is final once "
        f"{checkpoints.majority} of their latest checkpoints include it.</p>"
        + table(
            ["entry", "time (UTC)", "validator", "accounts", "frontier digest", ""],
            checkpoint_rows,
            (3,),
        )
    )


def entry_content(detail: EntryDetail) -> str:
    body = json.dumps(detail.body, indent=2, sort_keys=True)
    cut = ""
    if len(body) > MAX_BODY_CHARS:
        body = body[:MAX_BODY_CHARS]
        cut = (
            f'<p class="muted">Cut at {MAX_BODY_CHARS} characters; the whole entry is at '
            f'<a href="/api/entries/{quote(detail.hash)}">/api/entries/{escape(detail.hash)}</a>.'
            "</p>"
        )
    signature = (
        '<span class="good">valid: signed by its author</span>'
        if detail.signature_valid
        else '<span class="bad">INVALID</span>'
    )
    fields = [
        ("hash", f'<span class="mono">{escape(detail.hash)}</span>'),
        ("kind", f"<code>{escape(detail.kind)}</code> {escape(detail.summary)}"),
        ("author", account_link(detail.author, detail.author_peer_id)),
        ("author peer ID", f'<span class="mono">{escape(detail.author_peer_id)}</span>'),
        ("seq", str(detail.seq)),
        ("prev", entry_link(detail.prev) if detail.seq > 1 else "–"),
        ("time", escape(when(detail.time)) + " UTC"),
        ("balance after", str(detail.balance)),
        ("signature", f'<span class="mono">{escape(short(detail.signature, 16, 16))}</span>'),
        ("signature check", signature),
        ("final", "yes" if detail.final else "not yet"),
        (
            "forked",
            '<span class="bad">yes: equivocation at this seq</span>' if detail.forked else "no",
        ),
        ("swarm", f'<span class="mono">{escape(detail.swarm)}</span>'),
    ]
    if detail.kind in ("grant", "mint", "send", "ticket"):
        taken = entry_link(detail.received_by) if detail.received_by else "not yet"
        fields.append(("received by", taken))
    items = "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in fields)
    return (
        f'<h1>Entry</h1><dl class="fields">{items}</dl><h2>Body</h2><pre>{escape(body)}</pre>{cut}'
    )


def verification_content(v: Verification) -> str:
    cards = "".join(
        [
            card("capacity audits", v.audits),
            card("probes run", v.probes),
            card("answered right", max(0, v.answered - v.mismatches)),
            card("wrong outputs seen", v.mismatches, "bad" if v.mismatches else ""),
            card("cheaters caught", len(v.cheaters), "bad" if v.cheaters else "good"),
            card("false accusations", len(v.false_accusers)),
            card("points slashed", v.points_slashed),
        ]
    )
    slash_rows = [
        [
            entry_link(s.hash),
            escape(when(s.time)),
            account_link(s.account, s.peer_id),
            f"<code>{escape(s.reason)}</code>",
            str(s.amount),
            escape(s.caught_by),
            account_link(s.validator),
        ]
        for s in v.slashes
    ]
    probe_rows = [
        [
            account_link(p.account, p.peer_id),
            str(p.audits),
            str(p.probes),
            str(p.answered),
            str(p.mismatches),
            rep(p.reputation),
            escape(when(p.last_time)),
        ]
        for p in v.servers
    ]
    cheaters = (
        "<p>Cheaters caught: " + ", ".join(account_link(a) for a in v.cheaters) + "</p>"
        if v.cheaters
        else '<p class="muted">No cheater caught so far.</p>'
    )
    return (
        "<h1>Verification</h1>"
        f'<div class="cards">{cards}</div>'
        f"{cheaters}"
        "<h2>Slashes</h2>"
        + table(
            ["entry", "time (UTC)", "account", "reason", "points", "caught by", "validator"],
            slash_rows,
            (4,),
        )
        + "<h2>Probes by server</h2>"
        "<p class=muted>Validators probe servers with requests that look like clients' and "
        "record what they measured in capacity audits.</p>"
        + table(
            ["server", "audits", "probes", "answered", "mismatches", "reputation", "last"],
            probe_rows,
            (1, 2, 3, 4, 5),
        )
        + f'<p class="muted">Evidence entries stored for referees: {v.evidence_entries}.</p>'
    )


def api_index_content(paths: Sequence[tuple[str, str]]) -> str:
    rows = [
        [
            f'<span class="mono">{escape(p)}</span>'
            if "{" in p
            else f'<a class="mono" href="{escape(p)}">{escape(p)}</a>',
            escape(s),
        ]
        for p, s in paths
    ]
    return (
        "<h1>JSON API</h1>"
        "<p>Every page of this dashboard reads these endpoints' data; the schema is at "
        '<a href="/openapi.json">/openapi.json</a> (OpenAPI 3). They only read: nothing '
        "here changes the ledger.</p>" + table(["GET", "what"], rows)
    )
