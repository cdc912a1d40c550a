"""The dashboard's JSON API, pages and metrics, in-process (httpx `ASGITransport`) against
a real SQLite ledger: grants, transfers, a mint, a capacity audit, a slash, a fork and
checkpoints written by `LedgerWorkload` (tests/dashboard/conftest.py)."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.routing import APIRoute
from starlette.routing import Route

from potluck.dashboard import LedgerFileSource, create_app
from potluck.dashboard.app import CSP
from potluck.ledger.core import Ledger
from potluck.ledger.store import SqliteBackend
from potluck.ledger.tools import audit_balances, frontier_digest, status
from potluck.p2p.announce import peer_id_of_account
from potluck.testing.aio import run_bounded
from tests.dashboard.conftest import NOW, Built

JSON_ENDPOINTS = [
    "/api/status",
    "/api/swarm",
    "/api/balances",
    "/api/accounts/{account}",
    "/api/entries",
    "/api/entries/{entry_hash}",
    "/api/forks",
    "/api/checkpoints",
    "/api/verification",
]


def fetch(
    app: FastAPI, *paths: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> list[httpx.Response]:
    """Each path's response, in order, from the app in-process."""
    out: list[httpx.Response] = []

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            for path in paths:
                out.append(await client.request(method, path, headers=headers))

    run_bounded(main, 60)
    return out


def get(app: FastAPI, path: str, **kwargs: Any) -> httpx.Response:
    return fetch(app, path, **kwargs)[0]


def get_json(app: FastAPI, path: str) -> Any:
    response = get(app, path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def read_ledger(built: Built) -> tuple[SqliteBackend, Ledger]:
    backend = SqliteBackend(built.path, readonly=True)
    return backend, Ledger(built.work.genesis, backend)


@pytest.fixture
def app(source: LedgerFileSource) -> FastAPI:
    return create_app(source)


def every_get_path(built: Built) -> list[str]:
    """A concrete URL for every GET route of the app (and the pages' partial views)."""
    account = built.work.key(2)
    return [
        "/",
        "/?partial=1",
        "/balances",
        f"/accounts/{account}",
        f"/accounts/{peer_id_of_account(account)}?partial=1",
        "/ledger",
        "/ledger?kind=slash",
        f"/entries/{built.fork[1].hash}",
        "/verification",
        "/api",
        "/api/status",
        "/api/swarm",
        "/api/balances",
        f"/api/accounts/{account}",
        "/api/entries?limit=500",
        "/api/entries?kind=checkpoint",
        f"/api/entries?author={account}",
        f"/api/entries/{built.slash.hash}",
        "/api/forks",
        "/api/checkpoints",
        "/api/verification",
        "/metrics",
        "/openapi.json",
        "/assets/dashboard.css",
        "/assets/dashboard.js",
    ]


# ---- status and swarm ----------------------------------------------------------------


def test_status_names_the_swarm_and_agrees_with_ledger_status(app: FastAPI, built: Built) -> None:
    body = get_json(app, "/api/status")
    genesis = built.work.genesis
    expected = status(built.path.parent, genesis)
    assert body["swarm"] == "dash" and body["swarm_id"] == genesis.swarm_id
    assert body["model"] == "tiny" and body["model_identity"] == genesis.model_identity
    assert body["num_blocks"] == 8
    assert body["node"] == built.servers[0].peer_id
    assert (body["servers"], body["validators"], body["covered"]) == (2, 1, False)
    ledger = body["ledger"]
    assert ledger["entries"] == len(built.work.entries) == expected["entries"]
    assert ledger["accounts"] == expected["accounts"]
    assert ledger["forks"] == 1
    assert ledger["frontier_digest"] == expected["frontier_digest"]
    assert ledger["counters"]["accepted"] == len(built.work.entries)
    assert re.fullmatch(r"[0-9a-f]{16}", body["revision"])
    assert body["time"] == NOW


def test_swarm_shows_block_coverage_and_the_servers(app: FastAPI, built: Built) -> None:
    body = get_json(app, "/api/swarm")
    a = built.work.accounts
    assert body["num_blocks"] == 8
    # a[1] serves 0:3, a[2] 3:6; the validator (0:8) checks but is no hop
    assert [c["servers"] for c in body["coverage"]] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert [c["throughput"] for c in body["coverage"]][:6] == [10.0] * 3 + [13.0] * 3
    assert body["covered"] is False and body["weakest_block"] == 6
    assert body["other_models"] == 1  # the announcement of another model is left out
    rows = {row["account"]: row for row in body["servers"]}
    assert set(rows) == {a[1].account, a[2].account, built.work.validators[0].account}
    assert rows[a[1].account]["peer_id"] == peer_id_of_account(a[1].account)
    assert (rows[a[1].account]["start"], rows[a[1].account]["end"]) == (0, 3)
    assert rows[a[1].account]["reputation"] == pytest.approx(0.75)  # 4 probes, 1 mismatch
    assert rows[a[2].account]["reputation"] == 0.0  # slashed for a wrong output
    assert rows[built.work.validators[0].account]["validator"] is True
    assert all(row["expires_in"] == 15.0 and row["uptime_seconds"] == 0 for row in rows.values())


# ---- balances and accounts -----------------------------------------------------------


def test_balances_are_the_ledgers(app: FastAPI, built: Built) -> None:
    body = get_json(app, "/api/balances")
    backend, ledger = read_ledger(built)
    with backend:
        audit = {row.account: row for row in audit_balances(ledger).rows}
        receivable = {
            a: sum(e.amount for e in ledger.receivable(a)) for a in {*audit, built.work.key(0)}
        }
    rows = body["accounts"]
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert [row["available"] for row in rows] == sorted(
        (row["available"] for row in rows), reverse=True
    )
    by_account = {row["account"]: row for row in rows}
    for account, expected in audit.items():
        row = by_account[account]
        assert row["balance"] == expected.balance
        assert row["slashed"] == expected.slashed
        assert row["available"] == expected.available
        assert row["receivable"] == receivable.get(account, 0)
        assert row["peer_id"] == peer_id_of_account(account)
    a = built.work.accounts
    assert by_account[a[1].account]["minted"] == 77
    assert by_account[a[2].account]["slashed"] == 100
    assert by_account[a[3].account]["frozen"] is True  # it double-spent
    assert by_account[built.work.validators[0].account]["validator"] is True
    assert body["total_balance"] == sum(r.balance for r in audit.values())
    assert body["total_minted"] == 77 and body["total_granted"] == 4000
    assert body["total_slashed"] == 100


def test_an_account_by_key_or_peer_id(app: FastAPI, built: Built) -> None:
    account = built.work.key(2)
    by_key = get_json(app, f"/api/accounts/{account}")
    assert get_json(app, f"/api/accounts/{peer_id_of_account(account)}") == by_key
    assert get_json(app, f"/api/accounts/{account.upper()}") == by_key
    backend, ledger = read_ledger(built)
    with backend:
        state = ledger.account(account)
        newest = backend.history(account, 50)
    assert (by_key["balance"], by_key["slashed"]) == (state.balance, 100)
    assert by_key["available"] == state.balance - 100
    assert (by_key["seq"], by_key["head"]) == (state.seq, state.head)
    assert [e["hash"] for e in by_key["history"]] == [e.hash for e in newest]
    assert [e["hash"] for e in by_key["slashes"]] == [built.slash.hash]
    chart = by_key["chart"]
    assert [p["time"] for p in chart] == sorted(p["time"] for p in chart)
    assert (chart[-1]["balance"], chart[-1]["available"]) == (state.balance, state.balance - 100)
    assert chart[-1]["entry"] == built.slash.hash  # the slash came last
    short = get_json(app, f"/api/accounts/{account}?limit=2")
    assert len(short["history"]) == 2


def test_unknown_and_malformed_accounts_are_typed_errors(app: FastAPI) -> None:
    unknown, bad, peer, long = fetch(
        app,
        f"/api/accounts/{'ab' * 32}",
        "/api/accounts/zz",
        "/api/accounts/12D3KooWnotapeeridatall0000000000000",
        "/api/accounts/x?limit=501",
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_account"
    assert "ab" * 32 in unknown.json()["detail"]
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_account"
    assert peer.status_code == 422 and peer.json()["error"] == "invalid_account"
    assert long.status_code == 422 and long.json()["error"] == "invalid_request"
    assert "limit" in long.json()["detail"]


# ---- entries -------------------------------------------------------------------------


def test_latest_entries_with_filters(app: FastAPI, built: Built) -> None:
    backend, _ = read_ledger(built)
    with backend:
        newest = [e.hash for e in backend.recent(5)]
    assert [e["hash"] for e in get_json(app, "/api/entries?limit=5")] == newest
    everything = get_json(app, "/api/entries?limit=500")
    assert {e["hash"] for e in everything} == {e.hash for e in built.work.entries}
    slashes = get_json(app, "/api/entries?kind=slash")
    assert [e["hash"] for e in slashes] == [built.slash.hash]
    assert slashes[0]["summary"].startswith("wrong_output:")
    checkpoints = get_json(app, "/api/entries?kind=checkpoint&limit=1")
    assert len(checkpoints) == 1 and checkpoints[0]["kind"] == "checkpoint"
    author = built.work.key(1)
    mine = get_json(app, f"/api/entries?author={author}&kind=receive")
    assert mine and all(e["author"] == author and e["kind"] == "receive" for e in mine)
    assert [e["seq"] for e in mine] == sorted((e["seq"] for e in mine), reverse=True)


@pytest.mark.parametrize(
    ("query", "error", "word"),
    [
        ("limit=0", "invalid_request", "limit"),
        ("limit=501", "invalid_request", "limit"),
        ("limit=ten", "invalid_request", "limit"),
        ("kind=bribe", "invalid_kind", "bribe"),
        ("author=nobody", "invalid_account", "nobody"),
    ],
)
def test_bad_entry_queries_are_422_with_a_message(
    app: FastAPI, query: str, error: str, word: str
) -> None:
    response = get(app, f"/api/entries?{query}")
    assert response.status_code == 422
    assert response.json()["error"] == error
    assert word in response.json()["detail"]


def test_an_entry_with_its_signature_verified(app: FastAPI, built: Built) -> None:
    mint = get_json(app, f"/api/entries/{built.mint.hash}")
    assert mint["signature_valid"] is True
    assert mint["kind"] == "mint" and mint["body"] == dict(built.mint.body)
    assert mint["signature"] == built.mint.signature.hex()
    assert mint["author_peer_id"] == peer_id_of_account(built.mint.author)
    receive = next(
        e for e in built.work.entries if e.kind == "receive" and e.source == built.mint.hash
    )
    assert mint["received_by"] == receive.hash
    assert mint["final"] is True  # both validators' checkpoints include it
    assert mint["forked"] is False
    first, second = built.fork
    for entry in (first, second):
        fork = get_json(app, f"/api/entries/{entry.hash}")
        assert fork["forked"] is True and fork["signature_valid"] is True
    assert get_json(app, f"/api/entries/{built.mint.hash.upper()}")["hash"] == built.mint.hash


def test_a_forged_signature_is_shown_invalid(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "ledger.db"
    shutil.copy(built.path, copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE entries SET signature = ? WHERE hash = ?", ("00" * 64, built.mint.hash))
    with LedgerFileSource(copy, built.work.genesis) as source:
        body = get_json(create_app(source), f"/api/entries/{built.mint.hash}")
    assert body["signature_valid"] is False
    assert body["signature"] == "00" * 64


def test_unknown_and_malformed_entry_hashes(app: FastAPI) -> None:
    unknown, bad = fetch(app, f"/api/entries/{'0' * 64}", "/api/entries/xyz")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_entry"
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_hash"


# ---- forks, checkpoints, verification ------------------------------------------------


def test_forks_carry_a_rechecked_fraud_proof(app: FastAPI, built: Built) -> None:
    (fork,) = get_json(app, "/api/forks")
    first, second = sorted(built.fork, key=lambda e: e.hash)
    assert fork["account"] == built.work.key(3)
    assert fork["peer_id"] == peer_id_of_account(built.work.key(3))
    assert fork["seq"] == first.seq
    assert (fork["first"]["hash"], fork["second"]["hash"]) == (first.hash, second.hash)
    assert fork["proof_valid"] is True and fork["problem"] == ""


def test_checkpoints_and_finality(app: FastAPI, built: Built) -> None:
    body = get_json(app, "/api/checkpoints")
    assert (body["validators"], body["majority"]) == (2, 2)
    rows = body["checkpoints"]
    assert len(rows) == 2 and all(row["latest"] for row in rows)
    ours = next(row for row in rows if row["hash"] == built.checkpoint.hash)
    heads = {a: (h[0], h[1]) for a, h in built.checkpoint.body["frontier"].items()}
    assert ours["accounts"] == len(heads)
    assert ours["frontier_digest"] == frontier_digest(heads)
    assert ours["validator"] == built.work.validators[0].account
    assert 0 < body["final_heads"] <= body["heads"]
    assert len(get_json(app, "/api/checkpoints?limit=1")["checkpoints"]) == 1


def test_verification_counts_probes_and_names_the_cheater(app: FastAPI, built: Built) -> None:
    body = get_json(app, "/api/verification")
    assert (body["audits"], body["probes"], body["answered"], body["mismatches"]) == (1, 4, 4, 1)
    assert body["cheaters"] == [built.work.key(2)]
    assert body["false_accusers"] == []
    assert body["points_slashed"] == 100
    (slash,) = body["slashes"]
    assert slash["hash"] == built.slash.hash
    assert (slash["reason"], slash["amount"], slash["case"]) == ("wrong_output", 100, "case-1")
    assert slash["caught_by"] == "probe"  # the accuser was a validator
    (server,) = body["servers"]
    assert server["account"] == built.work.key(1)
    assert (server["probes"], server["mismatches"]) == (4, 1)
    assert server["reputation"] == pytest.approx(0.75)


# ---- metrics -------------------------------------------------------------------------

_SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-z_]+="[^"\\]*"(,[a-z_]+="[^"\\]*")*)\})?'
    r" (?P<value>-?[0-9.e+]+|NaN|[+-]Inf)"
)


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value; asserts the exposition format line by line."""
    samples: dict[str, float] = {}
    described: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE"), line
            described.setdefault(name, set()).add(kind)
            if kind == "TYPE":
                assert rest in ("gauge", "counter"), line
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        assert described.get(match["name"]) == {"HELP", "TYPE"}, line
        key = match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")
        samples[key] = float(match["value"])
    return samples


def test_metrics_are_prometheus_text(app: FastAPI, built: Built) -> None:
    response = get(app, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.text.endswith("\n")
    samples = parse_metrics(response.text)
    assert samples['potluck_servers{role="server"}'] == 2
    assert samples['potluck_servers{role="validator"}'] == 1
    assert samples["potluck_blocks"] == 8
    assert samples['potluck_block_coverage{block="0"}'] == 1
    assert samples['potluck_block_coverage{block="7"}'] == 0
    assert samples['potluck_block_throughput{block="3"}'] == 13.0
    assert samples["potluck_swarm_covered"] == 0
    assert samples["potluck_ledger_entries"] == len(built.work.entries)
    assert samples["potluck_forks_total"] == 1
    assert samples['potluck_slashes_total{reason="wrong_output"}'] == 1
    assert samples['potluck_slashes_total{reason="false_accusation"}'] == 0
    assert samples["potluck_slashed_points_total"] == 100
    assert samples["potluck_cheaters_caught_total"] == 1
    assert samples["potluck_minted_total"] == 77
    assert samples['potluck_probes_total{outcome="mismatch"}'] == 1
    balances = get_json(app, "/api/balances")
    assert samples["potluck_balance_total"] == balances["total_balance"]
    assert samples["potluck_accounts"] == get_json(app, "/api/status")["ledger"]["accounts"]


# ---- read-only -----------------------------------------------------------------------


def ledger_fingerprint(built: Built) -> tuple[str, Any]:
    backend, ledger = read_ledger(built)
    with backend:
        state = ledger.state()
        counters = ledger.counters()
    digest = hashlib.sha256(built.path.read_bytes()).hexdigest()
    return digest, (state, counters)


def test_no_get_changes_the_ledger(app: FastAPI, built: Built) -> None:
    before = ledger_fingerprint(built)
    responses = fetch(app, *every_get_path(built))
    assert [r.status_code for r in responses] == [200] * len(responses), [
        (r.url, r.status_code) for r in responses if r.status_code != 200
    ]
    assert ledger_fingerprint(built) == before


def test_every_route_only_reads(app: FastAPI, built: Built) -> None:
    routes = [r for r in app.routes if isinstance(r, (APIRoute, Route))]
    pages = {"/", "/balances", "/accounts/{account}", "/ledger", "/entries/{entry_hash}"}
    assert {r.path for r in routes} >= {*JSON_ENDPOINTS, *pages, "/verification", "/metrics"}
    for route in routes:
        assert route.methods is not None and route.methods <= {"GET", "HEAD"}, route.path
    before = ledger_fingerprint(built)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for response in fetch(
            app, "/api/balances", f"/api/entries/{built.mint.hash}", "/", method=method
        ):
            assert response.status_code == 405, (method, response.url)
    assert ledger_fingerprint(built) == before


def test_openapi_documents_every_endpoint_and_no_page_loads_from_elsewhere(
    app: FastAPI, built: Built
) -> None:
    schema = get_json(app, "/openapi.json")
    paths = schema["paths"]
    assert set(JSON_ENDPOINTS) | {"/metrics"} <= set(paths)
    for path in JSON_ENDPOINTS:
        operation = paths[path]["get"]
        assert operation["description"].strip(), path
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok, path
        assert "404" in operation["responses"] and "422" in operation["responses"]
    components = schema["components"]["schemas"]
    for name in ("Status", "SwarmHealth", "Balances", "AccountDetail", "EntryDetail", "ApiError"):
        assert name in components, sorted(components)
    assert get(app, "/docs").status_code == 404  # FastAPI's Swagger UI would load a CDN
    assert get(app, "/redoc").status_code == 404
    for response in fetch(app, *every_get_path(built)):
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        if response.headers["content-type"].startswith(("text/html", "text/css", "text/java")):
            text = response.text
            assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert "https://" not in text and "//cdn" not in text
            scripts = re.findall(r"<script[^>]*>", text)
            assert scripts in ([], ['<script src="/assets/dashboard.js">']), scripts


# ---- pages ---------------------------------------------------------------------------


def test_pages_show_what_the_api_returns(app: FastAPI, built: Built) -> None:
    swarm, balances, ledger, verification = fetch(app, "/", "/balances", "/ledger", "/verification")
    for server in built.servers[:3]:
        assert server.peer_id in swarm.text  # the full ID is in the link's title
    assert "6/8" in swarm.text  # blocks covered
    for row in get_json(app, "/api/balances")["accounts"]:
        assert row["account"][:16] in balances.text
        assert f'<span class="balance">{row["balance"]}</span>' in balances.text
    assert built.fork[0].hash[:12] in ledger.text and built.fork[1].hash[:12] in ledger.text
    assert built.checkpoint.hash[:12] in ledger.text
    assert "wrong_output" in verification.text and built.work.key(2)[:16] in verification.text
    entry = get(app, f"/entries/{built.mint.hash}")
    assert "valid: signed by its author" in entry.text
    account = get(app, f"/accounts/{built.work.key(2)}")
    assert '<polyline class="balance"' in account.text
    assert '<polyline class="available"' in account.text  # slashed: available differs


def test_a_partial_page_is_its_content_with_the_current_revision(app: FastAPI) -> None:
    revision = get_json(app, "/api/status")["revision"]
    partial = get(app, "/balances?partial=1").text
    assert partial.startswith(f'<div id="content" data-revision="{revision}">')
    assert "<html" not in partial
    assert f'data-revision="{revision}"' in get(app, "/balances").text


def test_page_errors_are_pages_and_api_errors_are_json(app: FastAPI) -> None:
    page, api, missing_page, missing_api = fetch(
        app,
        "/accounts/zz",
        "/api/accounts/zz",
        "/no/such/page",
        "/api/no/such",
        headers={"accept": "text/html"},
    )
    assert page.status_code == 422 and page.headers["content-type"].startswith("text/html")
    assert "neither an account" in page.text
    assert api.status_code == 422 and api.json()["error"] == "invalid_account"
    assert missing_page.status_code == 404
    assert missing_page.headers["content-type"].startswith("text/html")
    assert missing_api.status_code == 404 and missing_api.json()["error"] == "not_found"


def test_a_node_without_a_ledger_shows_the_swarm_only(built: Built) -> None:
    with LedgerFileSource(None, None, servers=built.servers[:2]) as source:
        app = create_app(source)
        status_body = get_json(app, "/api/status")
        assert status_body["ledger"] is None and status_body["swarm"] is None
        assert status_body["num_blocks"] == 6  # inferred from the spans announced
        for path in ("/api/balances", "/api/entries", "/api/verification", "/api/forks"):
            response = get(app, path)
            assert response.status_code == 404 and response.json()["error"] == "no_ledger"
        assert "keeps no ledger" in get(app, "/balances").text
        assert get(app, "/").status_code == 200
        samples = parse_metrics(get(app, "/metrics").text)
        assert samples['potluck_servers{role="server"}'] == 2
        assert "potluck_ledger_entries" not in samples


def test_other_routers_are_included_and_keep_their_own_errors(
    source: LedgerFileSource,
) -> None:
    router = APIRouter()

    @router.get("/v1/ping")
    async def ping(n: int) -> dict[str, int]:
        if n < 0:
            raise HTTPException(418, "negative")
        return {"pong": n}

    app = create_app(source, routers=[router])
    ok, teapot, invalid = fetch(app, "/v1/ping?n=3", "/v1/ping?n=-1", "/v1/ping")
    assert ok.json() == {"pong": 3}
    assert teapot.status_code == 418 and teapot.json() == {"detail": "negative"}
    assert invalid.status_code == 422 and isinstance(invalid.json()["detail"], list)
