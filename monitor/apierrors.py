"""Every API error, ours or the framework's, as one JSON shape; and the /v1 query check."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.schemas import query_problems


class ApiError(Exception):
    """Raised by routes; rendered as `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
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
        return error_response(exc.status_code, "http_error", str(exc.detail))

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
