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

from monitor.engine import incidents_of
from monitor.enums import HealthStatus, SyncStatus
from monitor.health import Health, checks, credential_health, evaluate, provider_health
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
from monitor.store.providers import ProviderViews
from monitor.store.syncs import SyncViews
from monitor.views import ProviderView, SyncView


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
        self.providers = ProviderViews(prefix)
        self.thresholds = self.settings.thresholds()


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


def _health_of(
    rt: Runtime, view: SyncView, stored: Health | None, providers: dict[str, ProviderView]
) -> Health:
    """Stored status and history, with what derives from the view and incidents filled in.

    A sync written but not yet evaluated is evaluated on the spot.
    """
    incidents = incidents_of(providers, view.provider)
    if stored is None:
        thresholds = rt.thresholds.for_provider(view.provider)
        return evaluate(view, datetime.now(UTC), thresholds, incidents)
    return stored.model_copy(
        update={"credential": credential_health(view), "provider": provider_health(incidents)}
    )


def _load(rt: Runtime, sync_id: str) -> tuple[SyncView, Health, dict[str, ProviderView]]:
    if not sync_id or len(sync_id) > 256:
        raise ApiError(404, "not_found", "no such sync")
    raw: list[Any] = rt.redis.mget([*rt.syncs.keys([sync_id]), rt.healths.key(sync_id)])
    raw_seed, raw_facts, raw_health = raw
    view = rt.syncs.parse(sync_id, raw_seed, raw_facts)
    if view is None or view.deleted or not view.known:
        raise ApiError(404, "not_found", f"no sync with id {sync_id!r}")
    providers = rt.providers.all(rt.redis)
    health = _health_of(rt, view, rt.healths.parse(sync_id, raw_health), providers)
    return view, health, providers


@router.get("/syncs/{sync_id}", response_model=SyncOut, responses=NOT_FOUND)
def get_sync(sync_id: str, rt: RT) -> SyncOut:
    """One sync, shaped as the seed's sync object."""
    view, health, _ = _load(rt, sync_id)
    return sync_out(view, health)


@router.get("/syncs/{sync_id}/health", response_model=HealthDetail, responses=NOT_FOUND)
def get_sync_health(sync_id: str, rt: RT) -> HealthDetail:
    """The sync's stored status and history, with every check as of now."""
    view, health, providers = _load(rt, sync_id)
    incidents = incidents_of(providers, view.provider)
    thresholds = rt.thresholds.for_provider(view.provider)
    now = datetime.now(UTC)
    return HealthDetail.of(health).model_copy(
        update={"checks": list(checks(view, now, thresholds, incidents))}
    )


@router.get("/summary", response_model=Summary)
def summary(rt: RT) -> Summary:
    """Counts by health status, overall and per provider, from the indexes alone."""
    statuses = list(HealthStatus)
    providers = rt.indexes.values(rt.redis, "provider")
    pipe = rt.redis.pipeline(transaction=False)
    for key in rt.indexes.all_keys:
        pipe.zcard(key)
    for s in statuses:
        for p in providers:
            pipe.scard(rt.indexes.health_key(p, s.value))
    for p in providers:
        pipe.scard(rt.indexes.key("provider", p))
        for s in statuses:
            pipe.scard(rt.indexes.health_key(p, s.value))
    counts = iter(pipe.execute())
    total = sum(int(next(counts)) for _ in rt.indexes.all_keys)
    by_health = {s: sum(int(next(counts)) for _ in providers) for s in statuses}
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
    providers = rt.providers.all(rt.redis) if ids else {}
    data = [
        sync_out(v, _health_of(rt, v, h, providers))
        for v, h in zip(views, healths, strict=True)
        if v is not None and not v.deleted and v.known
    ]
    return SyncPage(data=data, next_cursor=encode_cursor(ids[-1]) if more and ids else None)
