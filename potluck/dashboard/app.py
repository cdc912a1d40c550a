"""The dashboard's FastAPI app: HTML pages, a JSON API and Prometheus metrics.

`create_app(source)` serves what `potluck.dashboard.data` computes from a
`DashboardSource`; it holds no state of its own beyond a cache of the
heavier ledger summaries, keyed by the ledger's entry count (entries only
ever get added, so an equal count means an equal ledger).

Routes (all GET: anonymous users only read; other routers passed in
`routers`, such as the OpenAI-compatible endpoint, may add more):

- pages: ``/`` (swarm health), ``/balances``, ``/accounts/{account}``,
  ``/ledger``, ``/entries/{hash}``, ``/verification``; with ``?partial=1``
  only their content, which the page script swaps in to stay live;
- JSON: ``/api/status``, ``/api/swarm``, ``/api/balances``,
  ``/api/accounts/{account}``, ``/api/entries``, ``/api/entries/{hash}``,
  ``/api/forks``, ``/api/checkpoints``, ``/api/verification``; the schema at
  ``/openapi.json`` and an index at ``/api``;
- ``/metrics`` (Prometheus text), ``/assets/...`` (stylesheet and script).

Errors are JSON ``{"error": code, "detail": message}`` under ``/api`` and
an HTML page elsewhere: 404 for an unknown account or entry (or a node
without a ledger: ``no_ledger``), 422 for bad input, 503 when the ledger
cannot be read. Every response forbids loading anything from elsewhere
(``Content-Security-Policy``), so no page can pull a script from a CDN.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from potluck import __version__
from potluck.dashboard import assets, data, metrics, pages
from potluck.dashboard.source import DashboardSource, NoLedger, SwarmSnapshot
from potluck.errors import LedgerError
from potluck.ledger.core import Ledger
from potluck.ledger.entry import KINDS

__all__ = ["ApiError", "create_app"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_PEER_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,128}")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


@dataclass(frozen=True)
class ApiError:
    """An error: a stable `error` code and a sentence for people."""

    error: str
    detail: str


class DashboardError(Exception):
    """An error answered with `status` and an `ApiError`."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ApiError, "description": "Unknown account or entry, or no ledger"},
    422: {"model": ApiError, "description": "Bad input"},
    503: {"model": ApiError, "description": "The ledger cannot be read"},
}


class _SecurityHeaders:
    """Pure ASGI middleware: CSP and friends on every response; no caching of data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                cache = "public, max-age=300" if path.startswith("/assets/") else "no-store"
                headers.setdefault("Cache-Control", cache)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Summaries:
    """The heavier ledger summaries, recomputed only when the ledger grew."""

    MAX_ENTRIES = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple[int, Any]] = {}

    def get(self, ledger: Ledger, name: str, fn: Callable[[Ledger], _T]) -> _T:
        count = data.entry_count(ledger)
        with self._lock:
            hit = self._values.get(name)
        if hit is not None and hit[0] == count:
            value: _T = hit[1]
            return value
        value = fn(ledger)
        with self._lock:
            if len(self._values) >= self.MAX_ENTRIES:
                self._values.clear()
            self._values[name] = (count, value)
        return value


def _account(text: str) -> str:
    """A ledger account from a hex key or a peer ID, or a 422."""
    if _HEX64.fullmatch(text):
        return text.lower()
    if _PEER_ID.fullmatch(text):
        account = data.account_of_peer_id(text)
        if account:
            return account
    raise DashboardError(
        422,
        "invalid_account",
        f"{text[:80]!r} is neither an account (64 hex digits) nor an Ed25519 peer ID",
    )


def _entry_hash(text: str) -> str:
    if not _HEX64.fullmatch(text):
        raise DashboardError(422, "invalid_hash", f"{text[:80]!r} is not an entry hash (64 hex)")
    return text.lower()


def _kind(text: str | None) -> str | None:
    if text is not None and text not in KINDS:
        raise DashboardError(
            422, "invalid_kind", f"kind {text[:40]!r} is not one of {', '.join(KINDS)}"
        )
    return text


Limit = Annotated[int, Query(ge=1, le=data.MAX_LIMIT, description="How many, at most.")]
AccountPath = Annotated[
    str, Path(description="An account (hex Ed25519 public key) or its libp2p peer ID.")
]
HashPath = Annotated[str, Path(description="An entry's hash (64 hex digits).")]
KindQuery = Annotated[str | None, Query(description=f"Only this kind: {', '.join(KINDS)}.")]
AuthorQuery = Annotated[
    str | None, Query(description="Only this author's entries (account or peer ID).")
]
Partial = Annotated[bool, Query(description="Only the page's content (for live refresh).")]


class _Dashboard:
    """Reads for the routes: the source, plus the summaries cache."""

    def __init__(self, source: DashboardSource) -> None:
        self.source = source
        self.summaries = _Summaries()

    async def ledger(self, fn: Callable[[Ledger], _T]) -> _T:
        try:
            return await self.source.ledger_read(fn)
        except NoLedger as exc:
            raise DashboardError(404, "no_ledger", str(exc)) from None
        except LedgerError as exc:
            raise DashboardError(503, "ledger_unavailable", str(exc)) from None

    async def summary(self, name: str, fn: Callable[[Ledger], _T]) -> _T:
        return await self.ledger(lambda ledger: self.summaries.get(ledger, name, fn))

    @property
    def has_ledger(self) -> bool:
        return self.source.genesis is not None

    def snapshot(self) -> SwarmSnapshot:
        return self.source.swarm()

    async def swarm(self, snap: SwarmSnapshot | None = None) -> data.SwarmHealth:
        snap = snap or self.snapshot()
        reputations: dict[str, float | None] = {}
        if self.has_ledger:
            accounts = [data.account_of_peer_id(s.peer_id) for s in snap.servers]
            key = "reputations:" + ",".join(sorted(accounts))
            reputations = await self.summary(key, lambda ledger: data.reputations(ledger, accounts))
        return data.swarm_health(
            snap.servers,
            now=snap.now,
            since=snap.since,
            num_blocks=self.source.num_blocks,
            model=self.source.model,
            model_identity=self.source.model_identity,
            excluded=snap.excluded,
            reputations=reputations,
        )

    async def status(self) -> data.Status:
        source = self.source
        snap = self.snapshot()
        ledger = None
        if self.has_ledger:
            summary, counters = await self.ledger(
                lambda ledger: (
                    self.summaries.get(ledger, "status", data.ledger_status),
                    ledger.counters(),  # these move without new entries (duplicates...)
                )
            )
            ledger = dataclasses.replace(summary, counters=counters)
        health = data.swarm_health(
            snap.servers,
            now=snap.now,
            since=snap.since,
            num_blocks=source.num_blocks,
            model_identity=source.model_identity,
        )
        genesis = source.genesis
        swarm_rev = data.swarm_revision(snap.servers, snap.excluded)
        return data.Status(
            swarm=genesis.name if genesis else None,
            swarm_id=genesis.swarm_id if genesis else None,
            model=source.model,
            model_identity=source.model_identity,
            num_blocks=health.num_blocks,
            node=source.node_id,
            version=__version__,
            servers=sum(1 for s in health.servers if not s.validator),
            validators=sum(1 for s in health.servers if s.validator),
            covered=health.covered,
            ledger=ledger,
            revision=data.revision(snap.now, swarm_rev, ledger.entries if ledger else None),
            time=snap.now,
        )


def create_app(
    source: DashboardSource,
    *,
    routers: Sequence[APIRouter] = (),
    title: str = "Potluck dashboard",
) -> FastAPI:
    """The dashboard for `source`, with `routers` included as they are."""
    board = _Dashboard(source)
    app = FastAPI(
        title=title,
        version=__version__,
        description=(
            "Read-only view of a Potluck swarm: block coverage and servers, balances, "
            "ledger entries with their signatures, forks, checkpoints, and verification."
        ),
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN: /api lists the endpoints
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(_SecurityHeaders)

    own_routes: set[int] = set()  # ids of this app's routes, before other routers join

    def wants_html(request: Request) -> bool:
        """An HTML error page for a browser on a page; JSON for everything else."""
        path = request.url.path
        if path.startswith("/api/") or path in ("/openapi.json", "/metrics"):
            return False
        route = request.scope.get("route")
        if route is not None:
            return id(route) in own_routes
        return "text/html" in request.headers.get("accept", "")

    async def error_response(request: Request, status: int, error: str, detail: str) -> Response:
        if wants_html(request):
            content = pages.error_content(status, detail)
            html = pages.layout(
                f"Error {status}",
                "",
                content,
                revision="error",
                swarm=source.genesis.name if source.genesis else None,
                partial=request.query_params.get("partial") == "1",
            )
            return HTMLResponse(html, status_code=status)
        return JSONResponse({"error": error, "detail": detail}, status_code=status)

    def foreign(request: Request) -> bool:
        """Whether the request went to a route of another router (it keeps its own errors)."""
        route = request.scope.get("route")
        return route is not None and id(route) not in own_routes

    @app.exception_handler(DashboardError)
    async def on_dashboard_error(request: Request, exc: DashboardError) -> Response:
        return await error_response(request, exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        if foreign(request):
            return await request_validation_exception_handler(request, exc)
        problems = []
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return await error_response(request, 422, "invalid_request", "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if foreign(request):
            return await http_exception_handler(request, exc)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return await error_response(
            request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )

    def api(path: str, **kwargs: Any) -> Callable[[_F], _F]:
        """A GET route of the JSON API (declared on the app itself, so that its errors
        are recognised as this app's)."""
        kwargs.setdefault("tags", ["dashboard"])
        kwargs.setdefault("responses", _ERRORS)
        return app.get(f"/api{path}", **kwargs)

    @api("/status")
    async def api_status() -> data.Status:
        """Swarm name and id, model, this replica's entries, accounts, forks and frontier
        digest, and the `revision` that pages poll to refresh."""
        return await board.status()

    @api("/swarm")
    async def api_swarm() -> data.SwarmHealth:
        """Block coverage (route servers and tokens/s per block) and every announced
        server with its span, throughput, load, reputation and uptime."""
        return await board.swarm()

    @api("/balances")
    async def api_balances() -> data.Balances:
        """The leaderboard: every account's balance, receivable, slashed and available
        points, what it earned by serving, and its reputation; the swarm's totals."""
        return await board.summary("balances", data.leaderboard)

    @api("/accounts/{account}")
    async def api_account(account: AccountPath, limit: Limit = 50) -> data.AccountDetail:
        """One account: its state, latest entries, transfers waiting for it, slashes
        against it, and the points of its balance chart."""
        key = _account(account)
        found = await board.ledger(lambda ledger: data.account_detail(ledger, key, limit=limit))
        if found is None:
            raise DashboardError(404, "unknown_account", f"the ledger holds nothing of {key}")
        return found

    @api("/entries")
    async def api_entries(
        limit: Limit = 50, kind: KindQuery = None, author: AuthorQuery = None
    ) -> list[data.EntrySummary]:
        """The latest entries, newest first; only of `kind` and by `author` if given."""
        wanted = _kind(kind)
        who = _account(author) if author is not None else None
        return await board.ledger(
            lambda ledger: data.latest_entries(ledger, limit=limit, kind=wanted, author=who)
        )

    @api("/entries/{entry_hash}")
    async def api_entry(entry_hash: HashPath) -> data.EntryDetail:
        """One entry in full, with its signature checked against its author's key
        (`signature_valid`), whether it is final, and who received it."""
        key = _entry_hash(entry_hash)
        found = await board.ledger(lambda ledger: data.entry_detail(ledger, key))
        if found is None:
            raise DashboardError(404, "unknown_entry", f"this replica holds no entry {key}")
        return found

    @api("/forks")
    async def api_forks() -> list[data.ForkRow]:
        """Every fork (two entries of one account at one seq) with its fraud proof
        re-checked."""
        return await board.summary("forks", data.fork_rows)

    @api("/checkpoints")
    async def api_checkpoints(limit: Limit = 50) -> data.Checkpoints:
        """The latest validator checkpoints, and how many account heads are final."""
        return await board.summary(
            f"checkpoints:{limit}", lambda ledger: data.checkpoints(ledger, limit=limit)
        )

    @api("/verification")
    async def api_verification() -> data.Verification:
        """Validator probes run and failed, slashes with reason and amount, and the
        cheaters caught."""
        return await board.summary("verification", data.verification)

    @api("", response_class=HTMLResponse, include_in_schema=False)
    async def api_index() -> HTMLResponse:
        schema = app.openapi()
        paths = []
        for path, item in sorted(schema.get("paths", {}).items()):
            for method, operation in item.items():
                if method == "get":
                    text = str(operation.get("description") or "").split("\n\n")[0]
                    paths.append((path, " ".join(text.split())))
        content = pages.api_index_content(paths)
        return HTMLResponse(await page("API", "api", content, partial=False))

    @app.get("/metrics", response_class=PlainTextResponse, tags=["dashboard"])
    async def metrics_text() -> PlainTextResponse:
        """Prometheus metrics: servers, block coverage and throughput, ledger entries,
        accounts, balances, slashes, forks and probes."""
        swarm = await board.swarm()
        status = balances = verification = None
        if board.has_ledger:
            status = (await board.status()).ledger
            balances = await board.summary("balances", data.leaderboard)
            verification = await board.summary("verification", data.verification)
        text = metrics.render_metrics(
            swarm, status=status, balances=balances, verification=verification
        )
        return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)

    @app.get("/assets/dashboard.css", include_in_schema=False)
    async def css() -> Response:
        return Response(assets.CSS, media_type="text/css; charset=utf-8")

    @app.get("/assets/dashboard.js", include_in_schema=False)
    async def js() -> Response:
        return Response(assets.JS, media_type="text/javascript; charset=utf-8")

    # ---- pages ----------------------------------------------------------------------

    async def page(title: str, active: str, content: str, *, partial: bool) -> str:
        status = await board.status()
        return pages.layout(
            title, active, content, revision=status.revision, swarm=status.swarm, partial=partial
        )

    async def ledger_page(
        title: str, active: str, build: Callable[[], Awaitable[str]], partial: bool
    ) -> HTMLResponse:
        content = await build() if board.has_ledger else pages.NO_LEDGER
        return HTMLResponse(await page(title, active, content, partial=partial))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def swarm_page(partial: Partial = False) -> HTMLResponse:
        status = await board.status()
        content = pages.swarm_content(await board.swarm(), status)
        return HTMLResponse(await page("Swarm health", "swarm", content, partial=partial))

    @app.get("/balances", response_class=HTMLResponse, include_in_schema=False)
    async def balances_page(partial: Partial = False) -> HTMLResponse:
        async def build() -> str:
            return pages.balances_content(await board.summary("balances", data.leaderboard))

        return await ledger_page("Balances", "balances", build, partial)

    @app.get("/accounts/{account}", response_class=HTMLResponse, include_in_schema=False)
    async def account_page(account: AccountPath, partial: Partial = False) -> HTMLResponse:
        async def build() -> str:
            return pages.account_content(await api_account(account))

        return await ledger_page("Account", "balances", build, partial)

    @app.get("/ledger", response_class=HTMLResponse, include_in_schema=False)
    async def ledger_explorer(kind: KindQuery = None, partial: Partial = False) -> HTMLResponse:
        async def build() -> str:
            return pages.ledger_content(
                await board.status(),
                await api_entries(limit=50, kind=kind, author=None),
                await api_forks(),
                await api_checkpoints(limit=20),
                kind=kind,
            )

        return await ledger_page("Ledger", "ledger", build, partial)

    @app.get("/entries/{entry_hash}", response_class=HTMLResponse, include_in_schema=False)
    async def entry_page(entry_hash: HashPath, partial: Partial = False) -> HTMLResponse:
        async def build() -> str:
            return pages.entry_content(await api_entry(entry_hash))

        return await ledger_page("Entry", "ledger", build, partial)

    @app.get("/verification", response_class=HTMLResponse, include_in_schema=False)
    async def verification_page(partial: Partial = False) -> HTMLResponse:
        async def build() -> str:
            return pages.verification_content(await api_verification())

        return await ledger_page("Verification", "verification", build, partial)

    own_routes.update(id(route) for route in app.routes)
    for router in routers:
        app.include_router(router)
    return app
