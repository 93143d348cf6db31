"""The FastAPI application: authentication, idempotency, the single writer, read models, errors.

``create_app(settings)`` builds the app; ``perpmargin serve`` runs it under uvicorn. The
request path of a write::

    body limit (413) → signature, window, nonce (401) → role / own account (403)
    → schema (422) → request id seen? (original result, or 409 for another body)
    → commands → sequencer queue (503 when full) → group commit → 2xx/4xx

Every error is ``{"error": {"code", "message", "details"}}`` with a stable code; a
:class:`~perpmargin.errors.PerpmarginError` keeps its own ``code``. Statuses: 400 invalid
input, 401 authentication, 403 role or account, 404 unknown id or route, 409 refused by the
risk rules or request-id reuse with another body, 413 body too large, 422 schema (422
``invalid_number`` for a JSON number where a decimal string is required), 429 nonce cache
full, 503 overloaded, fail-stopped or not ready. A 500 means a bug; it is logged with its
traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from perpmargin import commands as C  # noqa: N812 - the command namespace
from perpmargin.commands import Command, Event
from perpmargin.engine import Engine
from perpmargin.errors import (
    InvalidInputError,
    JournalError,
    PerpmarginError,
    RejectedError,
    UnknownAccountError,
    UnknownAssetError,
    UnknownPresetError,
    UnknownSymbolError,
)
from perpmargin.presets import list_presets
from perpmargin.service import schemas as S  # noqa: N812 - the schema namespace
from perpmargin.service.auth import Authenticator, AuthError, Principal, new_key, require_account, require_role
from perpmargin.service.metrics import ServiceMetrics
from perpmargin.service.readmodel import CATEGORIES, ReadModel, event_json
from perpmargin.service.readmodel import jsonable as _jsonable
from perpmargin.service.sequencer import Outcome, Overloaded, Result, Sequencer, Submission
from perpmargin.service.sequencer import Query as EngineQuery
from perpmargin.service.settings import ServiceSettings
from perpmargin.service.sidestore import KeyRow, SideStore, open_side_store
from perpmargin.service.ws import Hub

__all__ = ["Service", "create_app", "error_status"]

log = logging.getLogger("perpmargin.service")

_ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429, 500, 503)
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": S.ErrorBody, "description": "error"} for s in _ERROR_STATUSES}


def error_status(e: PerpmarginError) -> int:
    """HTTP status of a library error (see the module docstring)."""
    if isinstance(e, UnknownAccountError | UnknownSymbolError | UnknownAssetError | UnknownPresetError):
        return 404
    if isinstance(e, InvalidInputError):
        return 400
    if isinstance(e, RejectedError):
        return 409
    if isinstance(e, JournalError):
        return 503
    return 500


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON error body."""
    return {"error": {"code": code, "message": message, "details": _jsonable(details or {})}}


def _perr_body(e: PerpmarginError) -> dict[str, Any]:
    return error_body(e.code, e.message, e.details)


class ApiError(Exception):
    """An error response raised from a handler."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


# -- body limit (pure ASGI, before anything parses the body) -------------------------------------


class BodyLimit:
    """Buffer the request body up to ``limit`` bytes (413 beyond) and keep it in ``scope["pm.body"]``
    so the signature check hashes exactly the bytes the handlers parse."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        metrics: ServiceMetrics,
        max_reads: int = 256,
        writer_busy: Callable[[], bool] | None = None,
        read_yield_ms: int = 50,
    ) -> None:
        self.app, self.limit, self.metrics, self.max_reads = app, limit, metrics, max_reads
        self.writer_busy = writer_busy
        self.read_yield_ms = read_yield_ms
        self.reads = 0

    async def _reject(self, send: Send, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        self.metrics.http_errors.labels(str(status), code).inc()
        body = json.dumps(error_body(code, message, details)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 413:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and str(scope["path"]).startswith("/v1/"):
            # reads are shed first (C26): past max_reads in flight a read gets 503 at once, and
            # the writer's work (fills, prices, liquidations) keeps the event loop and the GIL
            if self.reads >= self.max_reads:
                await self._reject(send, 503, "read_shed", "too many reads in flight; retry", {"limit": self.max_reads})
                return
            self.reads += 1
            try:
                # reads give way to the writer: while it applies a batch, a read waits (1 ms steps,
                # at most read_yield_ms) instead of competing with it for the interpreter lock
                busy, waited = self.writer_busy, 0
                while busy is not None and busy() and waited < self.read_yield_ms:
                    await asyncio.sleep(0.001)
                    waited += 1
                await self._call(scope, receive, send)
            finally:
                self.reads -= 1
            return
        await self._call(scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = False
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = True
        chunks: list[bytes] = []
        size = 0
        if not too_big:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    too_big = True
                    break
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
        if too_big:
            await self._reject(
                send, 413, "payload_too_large", f"the request body exceeds {self.limit} bytes", {"limit": self.limit}
            )
            return
        data = b"".join(chunks)
        scope["pm.body"] = data
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# -- the service ---------------------------------------------------------------------------------


class Service:
    """Everything the handlers share."""

    def __init__(self, settings: ServiceSettings, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.readmodel = ReadModel()
        self.readmodel.presets = list_presets()
        self.hub = Hub(settings.ws_queue_max)
        self.side: SideStore = open_side_store(settings.db)
        self.auth = Authenticator(
            self.side, window_ms=settings.auth_window_ms, nonce_cache_max=settings.nonce_cache_max
        )
        if settings.bootstrap_operator_key:
            self._install_bootstrap(settings.bootstrap_operator_key)
        self.sequencer = Sequencer(
            db=settings.db,
            preset=settings.preset,
            side=self.side,
            readmodel=self.readmodel,
            metrics=self.metrics,
            max_batch=settings.max_batch,
            queue_max=settings.queue_max,
            configure_liquidation=settings.configure_liquidation,
            on_events=self.hub.publish_threadsafe,
            clock_ms=clock_ms,
        )
        self.inflight: dict[tuple[str, str], tuple[str, asyncio.Future[Result]]] = {}

    def _install_bootstrap(self, spec: str) -> None:
        from perpmargin.service.auth import signing_key

        key_id, _, token = spec.partition(":")
        salt = token.partition(".")[0]
        try:
            derived = signing_key(token).hex()
        except ValueError as e:
            from perpmargin.errors import ConfigError

            raise ConfigError(f"bootstrap_operator_key: {e}", setting="bootstrap_operator_key") from None
        existing = {k.key_id: k for k in self.side.list_keys()}.get(key_id)
        if existing is None or existing.derived_key != derived or existing.role != "operator":
            self.auth.add_key(KeyRow(key_id, "operator", None, salt, derived, int(time.time() * 1000), False))

    # -- writes ------------------------------------------------------------------------------------

    async def mutate(
        self,
        request: Request,
        principal: Principal,
        request_id: str,
        cmds: list[Command],
        build: Callable[[list[Outcome]], Result],
    ) -> JSONResponse:
        """Idempotent, journaled execution of ``cmds`` (see the module docstring)."""
        seq = self.sequencer
        body = request.scope.get("pm.body", b"")
        digest = hashlib.sha256(request.method.encode() + b" " + request.url.path.encode() + b"\n" + body).hexdigest()
        key = (principal.key_id, request_id)
        row = seq.results.get(key)
        if row is not None:
            if row.body_hash != digest:
                raise ApiError(
                    409, "idempotency_conflict", "this request id was used with another request", request_id=request_id
                )
            return JSONResponse(json.loads(row.body), status_code=row.status, headers={"X-PM-Replayed": "true"})
        if seq.failed is not None:
            raise ApiError(503, "journal_failed", "the journal failed: the service acknowledges nothing more")
        running = self.inflight.get(key)
        if running is not None:
            if running[0] != digest:
                raise ApiError(
                    409, "idempotency_conflict", "this request id was used with another request", request_id=request_id
                )
            status, out = await asyncio.shield(running[1])
            return JSONResponse(out, status_code=status, headers={"X-PM-Replayed": "true"})
        sub = Submission(principal.key_id, request_id, digest, cmds, build)
        try:
            seq.submit(sub)
        except Overloaded:
            raise ApiError(503, "overloaded", "the write queue is full; retry with the same request id") from None
        fut = asyncio.wrap_future(sub.future)
        self.inflight[key] = (digest, fut)
        try:
            status, out = await asyncio.shield(fut)
        finally:
            self.inflight.pop(key, None)
        if status >= 400:
            self.metrics.http_errors.labels(str(status), str(out.get("error", {}).get("code", ""))).inc()
        return JSONResponse(out, status_code=status)

    async def query(self, fn: Callable[[Engine], Any]) -> Any:
        """Run ``fn(engine)`` on the sequencer thread (between batches)."""
        if not self.sequencer.is_ready:
            raise ApiError(503, "not_ready", "the service is not ready")
        q = EngineQuery(fn)
        try:
            self.sequencer.submit(q)
        except Overloaded:
            raise ApiError(503, "overloaded", "the write queue is full; retry later") from None
        return await asyncio.wrap_future(q.future)


def _events(evs: list[Event]) -> list[dict[str, Any]]:
    return [_jsonable(event_json(e)) for e in evs]


def single(request_id: str) -> Callable[[list[Outcome]], Result]:
    """Builder for a one-command request: 200 with its events, or the error."""

    def build(outs: list[Outcome]) -> Result:
        o = outs[0]
        if isinstance(o, PerpmarginError):
            return error_status(o), _perr_body(o)
        return 200, {"request_id": request_id, "seq": o[-1].seq if o else None, "events": _events(o)}

    return build


def many(request_id: str) -> Callable[[list[Outcome]], Result]:
    """Builder for a batch (fills, oracle updates): 200 with a result per item."""

    def build(outs: list[Outcome]) -> Result:
        results = []
        for i, o in enumerate(outs):
            if isinstance(o, PerpmarginError):
                results.append(
                    {"index": i, "accepted": False, "seq": None, "events": [], "error": _perr_body(o)["error"]}
                )
            else:
                results.append(
                    {"index": i, "accepted": True, "seq": o[-1].seq if o else None, "events": _events(o), "error": None}
                )
        acc = sum(1 for r in results if r["accepted"])
        return 200, {"request_id": request_id, "accepted": acc, "rejected": len(results) - acc, "results": results}

    return build


# -- the app ---------------------------------------------------------------------------------------

RequestId = Annotated[
    str,
    Header(
        alias="X-PM-Request-Id",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="client request id: a retry with the same id returns the original result",
    ),
]
AccountPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
SymbolPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
_KEY_HEADERS = (
    APIKeyHeader(name="X-PM-Key", auto_error=False, scheme_name="PMKey"),
    APIKeyHeader(name="X-PM-Timestamp", auto_error=False, scheme_name="PMTimestamp"),
    APIKeyHeader(name="X-PM-Nonce", auto_error=False, scheme_name="PMNonce"),
    APIKeyHeader(name="X-PM-Signature", auto_error=False, scheme_name="PMSignature"),
)


async def principal(
    request: Request,
    _k: Annotated[str | None, Security(_KEY_HEADERS[0])] = None,
    _t: Annotated[str | None, Security(_KEY_HEADERS[1])] = None,
    _n: Annotated[str | None, Security(_KEY_HEADERS[2])] = None,
    _s: Annotated[str | None, Security(_KEY_HEADERS[3])] = None,
) -> Principal:
    """The signing principal of a request (401 otherwise); the four headers are declared for OpenAPI."""
    svc: Service = request.app.state.service
    return svc.auth.verify(
        request.method, signed_path(request.scope), request.headers, request.scope.get("pm.body", b"")
    )


def signed_path(scope: Scope) -> str:
    """The path as sent (still percent-encoded) plus ``?query`` when there is one: what the client signed."""
    raw: bytes = scope.get("raw_path") or str(scope["path"]).encode()
    qs: bytes = scope.get("query_string", b"")
    return raw.decode("latin-1") + ("?" + qs.decode("latin-1") if qs else "")


Auth = Annotated[Principal, Depends(principal)]


def create_app(settings: ServiceSettings, *, clock_ms: Callable[[], int] | None = None) -> FastAPI:
    """The HTTP/WebSocket application over the journal at ``settings.db``."""
    svc = Service(settings, clock_ms=clock_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        svc.hub.bind(asyncio.get_running_loop())
        svc.sequencer.start()
        await asyncio.to_thread(svc.sequencer.ready.wait)
        if svc.sequencer.startup_error is not None:
            raise svc.sequencer.startup_error
        log.info(
            "perpmargin service ready",
            extra={"seq": svc.readmodel.seq, "venue": svc.readmodel.venue, "db": _safe_db(settings.db)},
        )
        try:
            yield
        finally:
            await asyncio.to_thread(svc.sequencer.stop)
            svc.side.close()

    app = FastAPI(
        title="perpmargin",
        version="1",
        summary="Exact margin, liquidation and risk engine for perpetual futures",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.service = svc
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        metrics=svc.metrics,
        max_reads=settings.max_inflight_reads,
        writer_busy=lambda: svc.sequencer.busy,
    )

    # -- errors ----------------------------------------------------------------------------------

    def respond(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
        svc.metrics.http_errors.labels(str(status), code).inc()
        return JSONResponse(error_body(code, message, details), status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return respond(e.status, e.code, e.message, e.details)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, e: AuthError) -> JSONResponse:
        return respond(e.status, e.code, e.message)

    @app.exception_handler(PerpmarginError)
    async def _perr(request: Request, e: PerpmarginError) -> JSONResponse:
        status = error_status(e)
        if status == 500:
            log.error("internal invariant broken", exc_info=e)
        return respond(status, e.code, e.message, e.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = []
        code = "validation_error"
        for err in e.errors():
            inp = err.get("input")
            if err.get("type") == "string_type" and isinstance(inp, float | int) and not isinstance(inp, bool):
                code = "invalid_number"
            if err.get("type") == "json_invalid":
                code = "malformed_json"
            errs.append(
                {
                    "loc": [str(x) for x in err.get("loc", ())],
                    "msg": str(err.get("msg", "")),
                    "type": str(err.get("type", "")),
                }
            )
        msg = {
            "invalid_number": 'numbers must be decimal strings (e.g. "0.1"), never JSON numbers',
            "malformed_json": "the body is not valid JSON",
        }.get(code, "the request does not match the schema")
        return respond(422, code, msg, {"errors": errs})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return respond(e.status_code, code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.error("unhandled exception", exc_info=e, extra={"path": request.url.path})
        return respond(500, "internal_error", "internal error (logged)")

    # -- auth ------------------------------------------------------------------------------------

    def ready() -> None:
        if not svc.sequencer.is_ready:
            raise ApiError(503, "not_ready", "the service is starting or fail-stopped")

    def account_or_404(account_id: str) -> dict[str, Any]:
        view = svc.readmodel.accounts.get(account_id)
        if view is None:
            raise ApiError(404, "unknown_account", "no such account", account_id=account_id)
        return view

    async def fresh_account(account_id: str) -> dict[str, Any]:
        """The published view; if its liquidation prices await recomputation, have the sequencer do
        that one account now (once per change of the account, between batches)."""
        view = account_or_404(account_id)
        if account_id in svc.readmodel.dirty:
            refreshed = await svc.query(lambda e: svc.readmodel.refresh(e, account_id))
            if refreshed is not None:
                view = refreshed
        return view

    # -- health, metrics -------------------------------------------------------------------------

    @app.get("/healthz", response_model=S.HealthOut, tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "seq": svc.readmodel.seq, "detail": ""}

    @app.get("/readyz", response_model=S.HealthOut, tags=["ops"], responses={503: {"model": S.HealthOut}})
    async def readyz() -> JSONResponse:
        """Readiness: journal open, replay done, not fail-stopped."""
        sq = svc.sequencer
        if sq.is_ready:
            return JSONResponse({"status": "ready", "seq": svc.readmodel.seq, "detail": ""})
        detail = "starting"
        if sq.failed is not None:
            detail = f"fail-stopped: {sq.failed}"
        elif sq.startup_error is not None:
            detail = f"start-up failed: {sq.startup_error}"
        return JSONResponse({"status": "not_ready", "seq": svc.readmodel.seq, "detail": detail}, status_code=503)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["ops"],
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics."""
        svc.metrics.queue_depth.set(svc.sequencer.queue.qsize())
        return PlainTextResponse(generate_latest(svc.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    # -- markets (read) ----------------------------------------------------------------------------

    @app.get("/v1/presets", response_model=S.PresetList, tags=["markets"])
    async def presets(p: Auth) -> JSONResponse:
        """Shipped venue presets and the active venue."""
        return JSONResponse({"presets": svc.readmodel.presets, "active": svc.readmodel.venue})

    @app.get("/v1/markets", response_model=S.MarketInfo, tags=["markets"])
    async def markets(p: Auth) -> JSONResponse:
        """Every market's state: index, mark, funding rate, status."""
        ready()
        views = svc.readmodel.markets
        return JSONResponse({"venue": svc.readmodel.venue, "markets": [views[s] for s in sorted(views)]})

    @app.get("/v1/markets/{symbol}", response_model=S.MarketView, tags=["markets"])
    async def market(symbol: SymbolPath, p: Auth) -> JSONResponse:
        """One market's state."""
        ready()
        view = svc.readmodel.markets.get(symbol)
        if view is None:
            raise ApiError(404, "unknown_symbol", "no such market", symbol=symbol)
        return JSONResponse(view)

    @app.get("/v1/insurance", response_model=S.InsuranceView, tags=["markets"])
    async def insurance(p: Auth) -> JSONResponse:
        """Insurance fund balances (exact decimal strings)."""
        ready()
        return JSONResponse(svc.readmodel.insurance)

    # -- accounts ----------------------------------------------------------------------------------

    @app.post("/v1/accounts", response_model=S.CommandResult, tags=["accounts"])
    async def create_account(body: S.AccountCreate, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Open an account (operator)."""
        require_role(p, "operator")
        cmd = C.CreateAccount(account_id=body.account_id, position_mode=body.position_mode)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.get("/v1/accounts/{account_id}", response_model=S.AccountView, tags=["accounts"])
    async def get_account(account_id: AccountPath, p: Auth) -> JSONResponse:
        """Balances, equity, IM, MM, margin ratio, positions with liquidation prices and ADL quintile."""
        require_account(p, account_id, "operator")
        ready()
        return JSONResponse(await fresh_account(account_id))

    @app.get("/v1/accounts/{account_id}/positions", response_model=list[S.PositionView], tags=["accounts"])
    async def positions(account_id: AccountPath, p: Auth) -> JSONResponse:
        """Open positions."""
        require_account(p, account_id, "operator")
        ready()
        return JSONResponse((await fresh_account(account_id))["positions"])

    @app.get("/v1/accounts/{account_id}/history/{category}", response_model=S.HistoryPage, tags=["accounts"])
    async def history(
        account_id: AccountPath,
        category: Literal["fills", "funding", "liquidations", "adl", "transfers"],
        p: Auth,
        cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,12}$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> JSONResponse:
        """Events of one category, oldest first; pass ``next_cursor`` back as ``cursor``."""
        require_account(p, account_id, "operator")
        ready()
        account_or_404(account_id)
        assert category in CATEGORIES
        items, nxt = svc.readmodel.page(account_id, category, int(cursor or 0), limit)
        page = {"account_id": account_id, "category": category, "items": list(items)}
        return JSONResponse({**page, "next_cursor": None if nxt is None else str(nxt)})

    def own(p: Principal, account_id: str) -> None:
        require_account(p, account_id, "operator")

    @app.post("/v1/accounts/{account_id}/deposits", response_model=S.CommandResult, tags=["accounts"])
    async def deposit(
        account_id: AccountPath, body: S.AmountBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Credit the cross wallet (operator or the account itself)."""
        own(p, account_id)
        cmd = C.Deposit(account_id=account_id, asset=body.asset, amount=body.amount)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/accounts/{account_id}/withdrawals", response_model=S.CommandResult, tags=["accounts"])
    async def withdraw(
        account_id: AccountPath, body: S.AmountBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Debit the cross wallet if the account stays initial-collateralised."""
        own(p, account_id)
        cmd = C.Withdraw(account_id=account_id, asset=body.asset, amount=body.amount)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/accounts/{account_id}/transfers", response_model=S.CommandResult, tags=["accounts"])
    async def transfer(
        account_id: AccountPath, body: S.TransferBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Move margin into (> 0) or out of (< 0) an isolated position."""
        own(p, account_id)
        cmd = C.TransferMargin(account_id=account_id, symbol=body.symbol, amount=body.amount, leg=body.leg)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/accounts/{account_id}/leverage", response_model=S.CommandResult, tags=["accounts"])
    async def leverage(
        account_id: AccountPath, body: S.LeverageBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Set the leverage on a symbol."""
        own(p, account_id)
        cmd = C.SetLeverage(account_id=account_id, symbol=body.symbol, leverage=body.leverage)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/accounts/{account_id}/margin-mode", response_model=S.CommandResult, tags=["accounts"])
    async def margin_mode(
        account_id: AccountPath, body: S.MarginModeBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Cross or isolated on a symbol (only while flat on it)."""
        own(p, account_id)
        cmd = C.SetMarginMode(account_id=account_id, symbol=body.symbol, mode=body.mode)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/accounts/{account_id}/position-mode", response_model=S.CommandResult, tags=["accounts"])
    async def position_mode(
        account_id: AccountPath, body: S.PositionModeBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """One-way or hedge (only without positions)."""
        own(p, account_id)
        cmd = C.SetPositionMode(account_id=account_id, mode=body.mode)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/accounts/{account_id}/order-check", response_model=S.OrderCheckOut, tags=["accounts"])
    async def order_check(account_id: AccountPath, body: S.OrderCheckBody, p: Auth) -> dict[str, Any]:
        """Pre-trade check (``engine.check_order``): would a taker order at worst price ``price`` be accepted?
        Changes nothing."""
        require_account(p, account_id, "operator", "ingest")
        account_or_404(account_id)

        def run(engine: Engine) -> dict[str, Any]:
            r = engine.check_order(
                account_id=account_id,
                symbol=body.symbol,
                side=body.side,
                size=body.size,
                price=body.price,
                reduce_only=body.reduce_only,
                leg=body.leg,
            )
            return {
                "accepted": r.accepted,
                "code": r.code,
                "reason": r.reason,
                "equity_after": None if r.equity_after is None else format(r.equity_after, "f"),
                "initial_margin_after": None if r.im_after is None else format(r.im_after, "f"),
            }

        result: dict[str, Any] = await svc.query(run)
        return result

    # -- ingest ------------------------------------------------------------------------------------

    @app.post("/v1/fills", response_model=S.FillsResult, tags=["ingest"])
    async def fills(body: S.FillsBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Fills from the matching engine, applied in order and journaled in one group commit
        (ingest role). Each fill is accepted or refused on its own; the response lists both."""
        require_role(p, "ingest", "operator")
        if len(body.fills) > settings.max_fills_per_request:
            raise ApiError(
                413,
                "too_many_fills",
                f"at most {settings.max_fills_per_request} fills per request",
                count=len(body.fills),
            )
        cmds: list[Command] = [C.Fill(**f.model_dump()) for f in body.fills]
        return await svc.mutate(request, p, rid, cmds, many(rid))

    @app.post("/v1/prices/oracle", response_model=S.FillsResult, tags=["ingest"])
    async def oracle(body: S.OracleBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Oracle quotes (``OracleUpdate``) for market indexes or collateral assets (ingest role)."""
        require_role(p, "ingest", "operator")
        cmds: list[Command] = []
        for u in body.updates:
            if (u.symbol is None) == (u.asset is None):
                raise ApiError(400, "invalid_input", "an oracle update names exactly one of symbol or asset")
            cmds.append(C.OracleUpdate(symbol=u.symbol, asset=u.asset, quotes=tuple(tuple(q) for q in u.quotes)))
        return await svc.mutate(request, p, rid, cmds, many(rid))

    @app.post("/v1/prices/mark", response_model=S.CommandResult, tags=["ingest"])
    async def mark(body: S.PriceBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Trusted operator/ingest mark price (``SetMarkPrice``)."""
        require_role(p, "ingest", "operator")
        return await svc.mutate(request, p, rid, [C.SetMarkPrice(symbol=body.symbol, price=body.price)], single(rid))

    @app.post("/v1/prices/index", response_model=S.CommandResult, tags=["ingest"])
    async def index(body: S.IndexPriceBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Trusted collateral index price (``SetIndexPrice``)."""
        require_role(p, "ingest", "operator")
        return await svc.mutate(request, p, rid, [C.SetIndexPrice(asset=body.asset, price=body.price)], single(rid))

    # -- operator ----------------------------------------------------------------------------------

    def op(p: Principal) -> None:
        require_role(p, "operator")

    @app.post("/v1/markets/{symbol}/halt", response_model=S.CommandResult, tags=["operator"])
    async def halt(symbol: SymbolPath, body: S.HaltBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Halt a market or make it reduce-only (journaled with actor = key id and reason)."""
        op(p)
        cmd = C.HaltMarket(symbol=symbol, actor=p.key_id, reason=body.reason, mode=body.mode, until_ms=body.until_ms)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/markets/{symbol}/resume", response_model=S.CommandResult, tags=["operator"])
    async def resume(
        symbol: SymbolPath, body: S.OperatorBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Reopen a market."""
        op(p)
        cmd = C.ResumeMarket(symbol=symbol, actor=p.key_id, reason=body.reason)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/markets/{symbol}/settlement-price", response_model=S.CommandResult, tags=["operator"])
    async def settlement(
        symbol: SymbolPath, body: S.SettlementBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Pin the mark to a settlement price."""
        op(p)
        cmd = C.SetSettlementPrice(symbol=symbol, price=body.price, actor=p.key_id, reason=body.reason)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/markets/{symbol}/delist", response_model=S.CommandResult, tags=["operator"])
    async def delist(symbol: SymbolPath, body: S.DelistBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Close every position at the settlement price and refuse later fills."""
        op(p)
        cmd = C.DelistMarket(symbol=symbol, actor=p.key_id, reason=body.reason, price=body.price)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/markets/{symbol}/price-bands", response_model=S.CommandResult, tags=["operator"])
    async def bands(
        symbol: SymbolPath, body: S.PriceBandsBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Set and enable the market's price band."""
        op(p)
        cmd = C.SetPriceBands(
            symbol=symbol,
            actor=p.key_id,
            reason=body.reason,
            max_move=body.max_move,
            window_ms=body.window_ms,
            action=body.action,
            cooloff_ms=body.cooloff_ms,
        )
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/markets/{symbol}/price-bands/disable", response_model=S.CommandResult, tags=["operator"])
    async def bands_off(
        symbol: SymbolPath, body: S.OperatorBody, request: Request, p: Auth, rid: RequestId
    ) -> JSONResponse:
        """Disable the market's price band (raises an alarm)."""
        op(p)
        cmd = C.DisablePriceBands(symbol=symbol, actor=p.key_id, reason=body.reason)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/admin/liquidation-config", response_model=S.CommandResult, tags=["operator"])
    async def liq_config(body: S.LiquidationConfigBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Re-configure the liquidation engine from the preset plus ``params`` overrides."""
        op(p)
        from perpmargin.liquidation import configure_command

        journal = svc.sequencer.journal
        if journal is None:
            raise ApiError(503, "not_ready", "the service is not ready")
        if "ts_ms" in body.params:
            raise ApiError(400, "invalid_input", "ts_ms is not a liquidation parameter")
        overrides: dict[str, Any] = dict(body.params)
        cmd = dataclasses.replace(configure_command(journal.venue, **overrides), actor=p.key_id, reason=body.reason)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.post("/v1/admin/insurance", response_model=S.CommandResult, tags=["operator"])
    async def fund(body: S.InsuranceBody, request: Request, p: Auth, rid: RequestId) -> JSONResponse:
        """Deposit into the insurance fund."""
        op(p)
        cmd = C.FundInsurance(asset=body.asset, amount=body.amount, symbol=body.symbol)
        return await svc.mutate(request, p, rid, [cmd], single(rid))

    @app.get("/v1/admin/state", response_model=S.StateOut, tags=["operator"])
    async def state(p: Auth) -> dict[str, Any]:
        """Journal seq, head hash and the live engine's state hash (computed between batches)."""
        op(p)

        def run(engine: Engine) -> dict[str, Any]:
            j = svc.sequencer.journal
            assert j is not None
            return {"seq": j.seq, "head_hash": j.head_hash, "state_hash": engine.state_hash()}

        result: dict[str, Any] = await svc.query(run)
        return result

    @app.get("/v1/admin/risk-snapshot", response_model=S.RiskSnapshotOut, tags=["operator"])
    async def risk_snapshot_view(
        p: Auth, top: Annotated[int, Query(ge=0, le=1000, description="riskiest accounts to list")] = 20
    ) -> dict[str, Any]:
        """Whole-book risk from the batch kernel (:func:`perpmargin.batch.risk_snapshot`), between batches.

        Liquidatable flags are exact (near-threshold and multi-asset accounts are re-decided by
        the exact path); amounts are in valuation units, screened floats unless ``exact``.
        """
        op(p)
        from perpmargin.batch import risk_snapshot

        def finite(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        def run(engine: Engine) -> dict[str, Any]:
            j = svc.sequencer.journal
            assert j is not None
            snap = risk_snapshot(engine)
            scale = 10.0**-snap.valuation_decimals
            counts, edges = snap.ratio_histogram()
            order = np.argsort(-np.nan_to_num(snap.margin_ratio, posinf=np.finfo(np.float64).max), kind="stable")
            riskiest = [
                {
                    "account_id": snap.account_ids[i],
                    "margin_ratio": finite(snap.margin_ratio[i]),
                    "equity": float(snap.equity[i]) * scale,
                    "maintenance_margin": float(snap.mm[i]) * scale,
                    "liquidatable": bool(snap.liquidatable[i]),
                    "exact": bool(snap.exact[i]),
                }
                for i in order[:top].tolist()
                if snap.mm[i] > 0
            ]
            return {
                "seq": j.seq,
                "valuation_asset": snap.valuation_asset,
                "accounts": len(snap.account_ids),
                "positions": len(snap.pos_symbol),
                "liquidatable": snap.liquidatable_ids(),
                "margin_ratio_quantiles": {str(q): finite(v) for q, v in snap.ratio_quantiles().items()},
                "histogram_edges": [finite(e) for e in edges.tolist()],
                "histogram_counts": [int(c) for c in counts.tolist()],
                "riskiest": riskiest,
            }

        result: dict[str, Any] = await svc.query(run)
        return result

    @app.post("/v1/admin/keys", response_model=S.KeyCreated, tags=["operator"])
    async def create_key(body: S.KeyCreate, p: Auth) -> dict[str, Any]:
        """Issue an API key (the token is shown once)."""
        op(p)
        try:
            row, token = new_key(body.role, body.account_id)
        except ValueError as e:
            raise ApiError(400, "invalid_input", str(e)) from None
        await asyncio.to_thread(svc.auth.add_key, row)
        return {"key_id": row.key_id, "role": row.role, "account_id": row.account_id, "token": token}

    @app.post("/v1/admin/keys/{key_id}/revoke", response_model=S.KeyRevoked, tags=["operator"])
    async def revoke_key(
        p: Auth, key_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{4,64}$", description="the key to revoke")]
    ) -> dict[str, Any]:
        """Revoke an API key: the running server refuses it from the next request on."""
        op(p)
        if key_id == p.key_id:
            raise ApiError(400, "invalid_input", "an operator cannot revoke the key it is signing with")
        if not await asyncio.to_thread(svc.auth.revoke, key_id):
            raise ApiError(404, "unknown_key", "no such key", key_id=key_id)
        return {"key_id": key_id, "revoked": True}

    # -- WebSocket -----------------------------------------------------------------------------------

    async def ws_auth(ws: WebSocket) -> Principal | None:
        try:
            return svc.auth.verify("GET", signed_path(ws.scope), ws.headers, b"")
        except AuthError as e:
            await ws.close(code=4401 if e.status == 401 else 4403, reason=e.code)
            return None

    async def stream(ws: WebSocket, topic: str, seq: int) -> None:
        sub = svc.hub.subscribe(topic)
        try:
            await ws.accept()
            await ws.send_text(json.dumps({"type": "subscribed", "topic": topic, "seq": seq}))
            closed = asyncio.ensure_future(ws.receive())
            while True:
                get = asyncio.ensure_future(sub.queue.get())
                over = asyncio.ensure_future(sub.overflowed.wait())
                done, _ = await asyncio.wait({get, over, closed}, return_when=asyncio.FIRST_COMPLETED)
                over.cancel()
                if get in done:
                    await ws.send_text(get.result())
                else:
                    get.cancel()
                if closed in done:
                    return
                if sub.overflowed.is_set() and sub.queue.empty():
                    await ws.close(code=4008, reason="too slow")
                    return
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            svc.hub.unsubscribe(sub)

    @app.websocket("/v1/ws/account/{account_id}")
    async def ws_account(ws: WebSocket, account_id: str) -> None:
        """Events of one account (fills, margin calls, liquidations, funding…); signed handshake."""
        p = await ws_auth(ws)
        if p is None:
            return
        if not (p.role == "operator" or (p.role == "account" and p.account_id == account_id)):
            await ws.close(code=4403, reason="forbidden")
            return
        await stream(ws, f"account:{account_id}", svc.readmodel.seq)

    @app.websocket("/v1/ws/market/{symbol}")
    async def ws_market(ws: WebSocket, symbol: str) -> None:
        """Index, mark, funding, halts of one market; signed handshake (any role)."""
        p = await ws_auth(ws)
        if p is None:
            return
        if symbol not in svc.readmodel.markets:
            await ws.close(code=4404, reason="unknown_symbol")
            return
        await stream(ws, f"market:{symbol}", svc.readmodel.seq)

    return app


def _safe_db(db: str) -> str:
    """The db location without a password."""
    if "@" in db and "://" in db:
        scheme, rest = db.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return db
