"""Error responses: every error the API returns has one shape, the OpenAI one, so SDKs parse it too.

The body and the mapping from the exception tree to HTTP statuses are rendered by ``openai_wire.py``
(pure); here they become responses, and the app's exception handlers are installed. ``message`` names
the field and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from orchestrator import errors
from orchestrator.api.openai_wire import error_body, error_payload, status_for
from orchestrator.logs import get_logger

log = get_logger(__name__)


def mars_error_response(exc: errors.MarsError) -> JSONResponse:
    status, _type = status_for(exc)
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    if status >= 500:
        log.warning("request failed", error=type(exc).__name__, message=str(exc))
    return JSONResponse(error_payload(exc), status_code=status, headers=headers)


def describe_validation(problems: Sequence[Any]) -> tuple[str, str | None]:
    """One readable line for pydantic's error list: each problem as ``field: what is wrong``."""
    parts: list[str] = []
    first_field: str | None = None
    for problem in problems[:5]:
        loc = [str(x) for x in problem.get("loc", ()) if x not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "body"
        msg = str(problem.get("msg", "invalid"))
        if problem.get("type") == "json_invalid":  # its loc holds the byte offset, not a field
            where = f" at byte {loc[0]}" if loc else ""
            field, msg = "body", f"not valid JSON{where}; send a JSON object"
        first_field = first_field or field
        if problem.get("type") == "missing":
            msg = "required; add it to the request"
        elif problem.get("type") == "extra_forbidden":
            msg = "not a known field; remove it or check its spelling"
        parts.append(f"{field}: {msg}")
    if len(problems) > 5:
        parts.append(f"... and {len(problems) - 5} more")
    return "; ".join(parts) or "invalid request", first_field


def install(app: FastAPI) -> None:
    async def on_mars_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.MarsError)
        return mars_error_response(exc)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, field = describe_validation(exc.errors())
        body = error_body(message, "invalid_request_error", field, "validation_error")
        body["detail"] = _jsonable(exc.errors())
        return JSONResponse(body, status_code=422)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        type_ = {404: "not_found_error", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        where = f"{request.method} {request.url.path}"
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"}
        param = None
        if exc.status_code == 405:  # every route of this path counts, not only the first one matched
            allowed = allowed_methods(request)
            headers["allow"] = ", ".join(allowed)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        if message == "Not Found":  # the router's bare 404: say which path and where the routes are
            message = f"no route for {where}; the routes are listed at /openapi.json"
        elif message == "Method Not Allowed":
            message = f"{where} is not allowed on this path; it allows {headers['allow']}"
        elif message == "There was an error parsing the body":  # FastAPI's words for bad UTF-8
            type_, param = "invalid_request_error", "body"
            message = "body: cannot be read (not UTF-8 text?); send a JSON object encoded in UTF-8"
        return JSONResponse(error_body(message, type_, param), status_code=exc.status_code, headers=headers)

    app.add_exception_handler(errors.MarsError, on_mars_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def allowed_methods(request: Request) -> list[str]:
    """The methods some route serves at this request's path, and OPTIONS (answered here)."""
    methods: set[str] = set()
    pending = list(request.app.router.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router's routes
        if included is not None:
            pending += included.routes
            continue
        served = getattr(route, "methods", None)
        if served and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(served)
    return sorted(methods | {"OPTIONS"})


def _jsonable(problems: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for p in problems:
        out.append(
            {
                "loc": [x if isinstance(x, int | str) else str(x) for x in p.get("loc", ())],
                "msg": str(p.get("msg", "")),
                "type": str(p.get("type", "")),
            }
        )
    return out
