"""Every API error, ours or the framework's, as one JSON shape; and the /v1 token and query
checks."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor.schemas import query_problems


class ApiError(Exception):
    """Raised by routes; rendered as `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, has the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'query')}: {e['msg']}"
            for e in exc.errors()
        ]
        return error_response(400, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail), exc.headers)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        return error_response(503, "store_unavailable", "the view store (Redis) is not answering")


def accepted_query(route: APIRoute) -> tuple[str, ...]:
    """Once per route, kept on it, not per request: what it takes does not change."""
    accepted: tuple[str, ...] | None = getattr(route, _ACCEPTED, None)
    if accepted is None:
        accepted = tuple(query_names(route.dependant))
        setattr(route, _ACCEPTED, accepted)
    return accepted


_ACCEPTED = "_syncmon_accepted_query"


def query_names(dependant: Any) -> list[str]:
    """The query parameters a route takes, its dependencies' included, in declared order."""
    names: list[str] = [field.alias for field in dependant.query_params]
    return names + [n for sub in dependant.dependencies for n in query_names(sub) if n not in names]


def strict_query(request: Request) -> None:
    """Every /v1 route refuses parameters it does not take, or takes once and gets twice:
    ignoring them answered a misspelt filter with everything (see `query_problems`)."""
    route = request.scope.get("route")
    accepted = accepted_query(route) if isinstance(route, APIRoute) else ()
    problems = query_problems(request.query_params.multi_items(), accepted)
    if problems:
        raise ApiError(400, "invalid_request", "; ".join(problems))


def token_matches(given: bytes, tokens: tuple[str, ...]) -> bool:
    """Constant time: every token is compared (so timing does not tell which one matched),
    each through a digest (so it does not tell a token's length either)."""
    digest = hashlib.sha256(given).digest()
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest())
    return ok


def bearer_ok(headers: Headers, tokens: tuple[str, ...]) -> bool:
    """`Authorization: Bearer <token>` against SYNCMON_API_TOKENS; the token is never logged,
    echoed or stored, and only the header is read (a token in a URL would end up in logs)."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    ok = token_matches(given.encode("latin-1"), tokens)  # the header's bytes as sent
    return scheme.lower() == "bearer" and ok


def route_path(scope: Scope) -> str:
    """The path the router matches, as Starlette's `get_route_path` reads it: `root_path` is
    cut only where the path holds it whole, up to a `/` (servers differ in including it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def under_v1(scope: Scope) -> bool:
    """Whether the router matches this request's path against the `/v1` routes."""
    path = route_path(scope)
    return path == "/v1" or path.startswith("/v1/")


class TokenGate:
    """Every `/v1` request, before routing: a check in the routes let a path or method no
    route takes answer 404, 405 or a redirect to an anonymous caller, telling it what exists."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and under_v1(scope)
        if guarded and not bearer_ok(Headers(scope=scope), self.tokens):
            message = "a valid bearer token is required"
            challenge = {"WWW-Authenticate": "Bearer"}
            await error_response(401, "unauthorized", message, challenge)(scope, receive, send)
            return
        await self.app(scope, receive, send)
