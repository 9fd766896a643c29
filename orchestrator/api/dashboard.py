"""``/dashboard``: a job list and a live page per job. Plain HTML and JavaScript from ``static/``.

The pages read the same API any client uses (``GET /v1/jobs``, ``GET /v1/jobs/{id}`` and its SSE
feed), with the API key the user types in when keys are configured; so the dashboard needs no
privileges of its own, and the pages themselves hold no data.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse, RedirectResponse

from orchestrator.api.schemas import JOB_ID_PATTERN

router = APIRouter(include_in_schema=False)
STATIC = resources.files("orchestrator.api") / "static"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    # Everything the pages need comes from this origin; nothing inline, nothing from a CDN.
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "referrer-policy": "no-referrer",
}


def _file(name: str) -> FileResponse:
    path = STATIC / name
    suffix = "." + name.rsplit(".", 1)[-1]
    if suffix not in _MEDIA_TYPES or not path.is_file():
        raise HTTPException(404, f"no dashboard file {name!r}")
    return FileResponse(str(path), media_type=_MEDIA_TYPES[suffix], headers=_HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard")
async def job_list() -> FileResponse:
    return _file("index.html")


@router.get("/dashboard/jobs/{job_id}")
async def job_page(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)]) -> FileResponse:
    return _file("job.html")


@router.get("/dashboard/static/{name}")
async def static_file(name: Annotated[str, Path(pattern=r"^[a-z]+\.(js|css|html)$")]) -> FileResponse:
    return _file(name)
