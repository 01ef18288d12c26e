"""The HTTP API of contract section 4: read-only views over Redis, JSON errors, bearer tokens."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from redis import Redis

from monitor.apierrors import (
    ApiError,
    TokenGate,
    error_response,
    install_error_handlers,
    strict_query,
    token_matches,
)
from monitor.engine import incidents_of
from monitor.enums import HealthStatus, SyncStatus
from monitor.events import MAX_ID_LENGTH
from monitor.health import Health, credential_health, current_checks, evaluate, provider_health
from monitor.schemas import (
    ErrorOut,
    HealthDetail,
    Liveness,
    Readiness,
    StatusCounts,
    Summary,
    SyncOut,
    SyncPage,
    sync_out,
)
from monitor.settings import Settings
from monitor.store.health import HealthViews
from monitor.store.indexes import HEALTH, Indexes, entries
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


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RT = Annotated[Runtime, Depends(runtime)]
Responses = dict[int | str, dict[str, Any]]


def _errors(**described: str) -> Responses:
    """Declared error responses, all with the one JSON error body."""
    return {
        int(code[1:]): {"model": ErrorOut, "description": text} for code, text in described.items()
    }


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
    if not sync_id or len(sync_id) > MAX_ID_LENGTH:
        raise ApiError(404, "not_found", "no such sync")
    raw: list[Any] = rt.redis.mget([*rt.syncs.keys([sync_id]), rt.healths.key(sync_id)])
    raw_seed, raw_facts, raw_health = raw
    view = rt.syncs.parse(sync_id, raw_seed, raw_facts)
    if view is None or view.deleted or not view.known:
        raise ApiError(404, "not_found", f"no sync with id {sync_id!r}")
    providers = rt.providers.all(rt.redis)
    health = _health_of(rt, view, rt.healths.parse(sync_id, raw_health), providers)
    return view, health, providers


CURSOR_TAG = "c1:"
# The longest cursor issued: unpadded base64 of the tag and an id of MAX_ID_LENGTH characters
# of 4 UTF-8 bytes each.
MAX_CURSOR_LENGTH = -(-(len(CURSOR_TAG) + 4 * MAX_ID_LENGTH) * 4 // 3)


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


def summary(rt: Runtime) -> Summary:
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


def contradicts(view: SyncView, filters: Mapping[str, str]) -> bool:
    """Whether the view's own fields disagree with a filter the indexes matched it on.

    `provider` with `health.status` reads the health index, which the health engine moves
    at the sync's next evaluation (normally under a second): until then a sync a
    `sync.updated` moved to another provider is missing from its new provider's health
    filter, and would be listed under its old one with the new provider in its body.
    """
    own = dict(entries(view))  # the pairs the filter indexes hold for this view
    return any((own.get(name) or "") != value for name, value in filters.items() if name != HEALTH)


def list_syncs(rt: Runtime, filters: dict[str, str], limit: int, cursor: str | None) -> SyncPage:
    """Syncs ordered by id, filtered through indexes, paged by an opaque cursor; a page holds
    no view that contradicts a filter (see `contradicts`), so it may hold fewer than `limit`."""
    after = decode_cursor(cursor) if cursor else None
    ids, more = rt.indexes.page(rt.redis, filters, after, limit)
    views = rt.syncs.get_many(rt.redis, ids)
    healths = rt.healths.get_many(rt.redis, ids)
    providers = rt.providers.all(rt.redis) if ids else {}
    data = [
        sync_out(v, _health_of(rt, v, h, providers))
        for v, h in zip(views, healths, strict=True)
        if v is not None and not v.deleted and v.known and not contradicts(v, filters)
    ]
    return SyncPage(data=data, next_cursor=encode_cursor(ids[-1]) if more and ids else None)


def sync_detail(rt: Runtime, sync_id: str) -> SyncOut:
    """One sync, shaped as the seed's sync object."""
    view, health, _ = _load(rt, sync_id)
    return sync_out(view, health)


def health_detail(rt: Runtime, sync_id: str) -> HealthDetail:
    """The sync's stored status and history, with every check as of now."""
    view, health, providers = _load(rt, sync_id)
    incidents = incidents_of(providers, view.provider)
    thresholds = rt.thresholds.for_provider(view.provider)
    now = datetime.now(UTC)
    return HealthDetail.of(health).model_copy(
        update={"checks": list(current_checks(view, now, thresholds, incidents))}
    )


SYNCS_PATH = b"/v1/syncs/"


def addressed(request: Request) -> tuple[str, bool]:
    """The sync id a path names and whether it asks for the health, read from the raw path.

    A sync id may hold a slash, sent as `%2F`; the decoded path cannot tell it from a
    separator, so `/v1/syncs/a%2Fhealth` (sync `a/health`) would be read as the health of `a`.
    """
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.partition(SYNCS_PATH)[2].split(b"/")
    if len(segments) == 2 and segments[1] == b"health":
        wants_health = True
    elif len(segments) == 1:
        wants_health = False
    else:
        raise ApiError(404, "not_found", "no such sync")
    try:
        sync_id = unquote_to_bytes(segments[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(404, "not_found", "no such sync") from None
    return sync_id, wants_health


def _answer(request: Request, rt: Runtime, expect_health: bool | None) -> Any:
    """The model for the route FastAPI chose, or, when the raw path names the other one (an
    id with `%2F`), that one's body as it would have been rendered."""
    sync_id, wants_health = addressed(request)
    body: BaseModel = health_detail(rt, sync_id) if wants_health else sync_detail(rt, sync_id)
    if wants_health is expect_health:
        return body
    return JSONResponse(body.model_dump(mode="json"))


def build_router(settings: Settings) -> APIRouter:
    """The `/v1` routes; what the served OpenAPI says follows the settings: the bearer scheme
    and 401s only when tokens are configured, the real maximum of `limit`."""
    guarded = bool(settings.api_tokens)
    security: list[Any] = []
    if guarded:
        bearer = HTTPBearer(
            auto_error=False,
            scheme_name="bearer",
            description="`Authorization: Bearer <token>`, one of SYNCMON_API_TOKENS.",
        )
        security.append(Security(bearer))  # documents the scheme; TokenGate checks it
    # After the token check (TokenGate, before routing): an anonymous caller gets a 401
    # whatever the query says.
    router = APIRouter(prefix="/v1", dependencies=[*security, Depends(strict_query)])
    auth: Responses = _errors(e401="no valid bearer token") if guarded else {}
    down = _errors(e503="the view store (Redis) is not answering")
    missing = _errors(e404="no sync with this id")
    invalid = _errors(e400="a query parameter is unknown, repeated or not valid")

    @router.get(
        "/syncs/{sync_id}", response_model=SyncOut, responses={**invalid, **missing, **auth, **down}
    )
    def get_sync(sync_id: str, request: Request, rt: RT) -> Any:
        """One sync, shaped as the seed's sync object."""
        return _answer(request, rt, expect_health=False)

    @router.get(
        "/syncs/{sync_id}/health",
        response_model=HealthDetail,
        responses={**invalid, **missing, **auth, **down},
    )
    def get_sync_health(sync_id: str, request: Request, rt: RT) -> Any:
        """The sync's stored status and history, with every check as of now."""
        return _answer(request, rt, expect_health=True)

    @router.get("/syncs/{rest:path}", include_in_schema=False)
    def get_sync_by_raw_path(rest: str, request: Request, rt: RT) -> Any:
        """Ids holding an encoded slash, which the two routes above cannot match."""
        return _answer(request, rt, expect_health=None)

    @router.get("/summary", response_model=Summary, responses={**invalid, **auth, **down})
    def get_summary(rt: RT) -> Summary:
        """Counts by health status, overall and per provider, from the indexes alone."""
        return summary(rt)

    def get_syncs(
        rt: RT,
        provider: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
        status: SyncStatus | None = None,
        health_status: Annotated[HealthStatus | None, Query(alias="health.status")] = None,
        org_id: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
        stream_id: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
        limit: int = min(50, settings.api_max_page),
        cursor: Annotated[
            str | None,
            Query(
                max_length=MAX_CURSOR_LENGTH,
                pattern=r"^[A-Za-z0-9_-]*$",
                description="Opaque: the `next_cursor` of the previous page.",
            ),
        ] = None,
    ) -> SyncPage:
        """Syncs ordered by id, filtered through indexes, paged by an opaque cursor."""
        filters = {
            "provider": provider,
            "status": status.value if status else None,
            "health.status": health_status.value if health_status else None,
            "org_id": org_id,
            "stream_id": stream_id,
        }
        return list_syncs(rt, {k: v for k, v in filters.items() if v is not None}, limit, cursor)

    # The bound comes from the settings: set as an object, since this module's annotations
    # are strings resolved against module globals, where `settings` is not.
    get_syncs.__annotations__["limit"] = Annotated[int, Query(ge=1, le=settings.api_max_page)]
    router.get("/syncs", response_model=SyncPage, responses={**invalid, **auth, **down})(get_syncs)
    return router


def basic_auth_ok(request: Request, expected: str) -> bool:
    """`Authorization: Basic ...` against `user:password`, in constant time."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return token_matches(given, (expected,)) and scheme.lower() == "basic"


def metrics_unauthorized() -> JSONResponse:
    return error_response(
        401,
        "unauthorized",
        "basic auth (SYNCMON_METRICS_BASIC_AUTH) is required",
        {"WWW-Authenticate": 'Basic realm="syncmon"'},
    )


def metrics_responses(settings: Settings) -> Responses:
    """What the served OpenAPI says `/metrics` answers."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    responses: Responses = {200: {"description": "Prometheus text format", "content": text}}
    if settings.metrics_basic_auth:
        responses.update(_errors(e401="no valid basic auth credentials"))
    return responses  # with Redis down: 200, this process's metrics alone


HEALTHZ_RESPONSES: Responses = {200: {"model": Liveness, "description": "alive"}}
READYZ_RESPONSES: Responses = {
    200: {"model": Readiness, "description": "ready"},
    503: {"model": Readiness, "description": "Redis is not answering or not in the group"},
}


def install_api(app: FastAPI, settings: Settings) -> None:
    """The `/v1` routes and the JSON error handlers; the OpenAPI lists only the error
    responses the API really gives (FastAPI would add a 422 no route ever returns)."""
    install_error_handlers(app)
    app.include_router(build_router(settings))
    if settings.api_tokens:
        app.add_middleware(TokenGate, tokens=settings.api_tokens)
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            for item in spec.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
