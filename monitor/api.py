"""The HTTP API of contract section 4: read-only views over Redis, JSON errors, bearer tokens."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.enums import HealthStatus, SyncStatus
from monitor.health import Health, evaluate
from monitor.schemas import (
    ErrorOut,
    HealthDetail,
    StatusCounts,
    Summary,
    SyncOut,
    SyncPage,
    sync_out,
)
from monitor.settings import Settings
from monitor.store.health import HealthViews
from monitor.store.indexes import Indexes
from monitor.store.syncs import SyncViews
from monitor.views import SyncView


@dataclass
class Runtime:
    """What the routes read: settings, Redis and the consumer's readiness."""

    settings: Settings
    redis: Redis
    ready_checks: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prefix = self.settings.redis_prefix
        self.syncs = SyncViews(prefix)
        self.healths = HealthViews(prefix)
        self.indexes = Indexes(prefix)


class ApiError(Exception):
    """Raised by routes; rendered as `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, has the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'query')}: {e['msg']}"
            for e in exc.errors()
        ]
        return _error(400, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        return _error(503, "store_unavailable", "the view store (Redis) is not answering")


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def require_token(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> None:
    """Constant-time comparison against every configured token; nothing is logged."""
    tokens = rt.settings.api_tokens
    if not tokens:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    ok = False
    for token in tokens:  # compare against all, so timing does not reveal which matched
        ok |= hmac.compare_digest(given.encode(), token.encode())
    if scheme.lower() != "bearer" or not ok:
        raise ApiError(
            401, "unauthorized", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
RT = Annotated[Runtime, Depends(runtime)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}, 401: {"model": ErrorOut}}


def _health_of(view: SyncView, stored: Health | None) -> Health:
    """Stored health; a sync written but not yet evaluated is evaluated on the spot."""
    return stored if stored is not None else evaluate(view, datetime.now(UTC))


def _load(rt: Runtime, sync_id: str) -> tuple[SyncView, Health]:
    if not sync_id or len(sync_id) > 256:
        raise ApiError(404, "not_found", "no such sync")
    pipe = rt.redis.pipeline(transaction=False)
    pipe.get(rt.syncs.key(sync_id))
    pipe.get(rt.healths.key(sync_id))
    raw_view, raw_health = pipe.execute()
    view = rt.syncs.parse(raw_view)
    if view is None or view.deleted or not view.known:
        raise ApiError(404, "not_found", f"no sync with id {sync_id!r}")
    health = None if raw_health is None else Health.model_validate_json(raw_health)
    return view, _health_of(view, health)


@router.get("/syncs/{sync_id}", response_model=SyncOut, responses=NOT_FOUND)
def get_sync(sync_id: str, rt: RT) -> SyncOut:
    """One sync, shaped as the seed's sync object."""
    return sync_out(*_load(rt, sync_id))


@router.get("/syncs/{sync_id}/health", response_model=HealthDetail, responses=NOT_FOUND)
def get_sync_health(sync_id: str, rt: RT) -> HealthDetail:
    """The sync's health with one entry per check."""
    return HealthDetail.of(_load(rt, sync_id)[1])


@router.get("/summary", response_model=Summary)
def summary(rt: RT) -> Summary:
    """Counts by health status, overall and per provider, from the indexes alone."""
    statuses = list(HealthStatus)
    providers = rt.indexes.values(rt.redis, "provider")
    pipe = rt.redis.pipeline(transaction=False)
    pipe.zcard(rt.indexes.all_key)
    for s in statuses:
        pipe.zcard(rt.indexes.key("health.status", s.value))
    for p in providers:
        pipe.zcard(rt.indexes.key("provider", p))
        for s in statuses:
            pipe.zintercard(
                2, [rt.indexes.key("provider", p), rt.indexes.key("health.status", s.value)]
            )
    counts = iter(pipe.execute())
    total = int(next(counts))
    by_health = {s: int(next(counts)) for s in statuses}
    by_provider = {}
    for p in providers:
        provider_total = int(next(counts))
        per = {s: int(next(counts)) for s in statuses}
        if provider_total:
            by_provider[p] = StatusCounts(total=provider_total, by_health=per)
    return Summary(total=total, by_health=by_health, by_provider=by_provider)


CURSOR_TAG = "c1:"


def encode_cursor(sync_id: str) -> str:
    """Opaque to clients: the last id of the page, tagged so a stray string is refused."""
    return base64.urlsafe_b64encode((CURSOR_TAG + sync_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(CURSOR_TAG):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    return text[len(CURSOR_TAG) :]


@router.get("/syncs", response_model=SyncPage, responses={400: {"model": ErrorOut}})
def list_syncs(
    rt: RT,
    provider: Annotated[str | None, Query(max_length=256)] = None,
    status: SyncStatus | None = None,
    health_status: Annotated[HealthStatus | None, Query(alias="health.status")] = None,
    org_id: Annotated[str | None, Query(max_length=256)] = None,
    stream_id: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> SyncPage:
    """Syncs ordered by id, filtered through indexes, paged by an opaque cursor."""
    if limit > rt.settings.api_max_page:
        raise ApiError(400, "invalid_request", f"limit: at most {rt.settings.api_max_page}")
    filters = {
        k: v
        for k, v in {
            "provider": provider,
            "status": status.value if status else None,
            "health.status": health_status.value if health_status else None,
            "org_id": org_id,
            "stream_id": stream_id,
        }.items()
        if v is not None
    }
    after = decode_cursor(cursor) if cursor else None
    ids, more = rt.indexes.page(rt.redis, filters, after, limit)
    views = rt.syncs.get_many(rt.redis, ids)
    healths = rt.healths.get_many(rt.redis, ids)
    data = [
        sync_out(v, _health_of(v, h))
        for v, h in zip(views, healths, strict=True)
        if v is not None and not v.deleted and v.known
    ]
    return SyncPage(data=data, next_cursor=encode_cursor(ids[-1]) if more and ids else None)
