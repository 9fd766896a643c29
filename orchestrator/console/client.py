"""A small async client of the jobs API, used by ``mars ask`` and ``mars demo`` (and usable by anyone).

It speaks only HTTP to the service, so the CLI exercises the same path as every other client:
``submit`` (POST /v1/jobs), ``get`` (GET /v1/jobs/{id}) and ``events`` (the SSE feed, parsed here).
Errors the API returns are raised as the matching exception of the project's tree with its message;
a service that cannot be reached is :class:`~orchestrator.errors.UpstreamConnectionError` (or
``UpstreamTimeout``) naming the URL, never an httpx exception.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from orchestrator import errors

_BY_STATUS: dict[int, type[errors.CallerError]] = {
    401: errors.Unauthorized,
    404: errors.JobNotFound,
    409: errors.JobConflict,
    429: errors.LimitExceeded,
}


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: Any
    id: str | None = None


@dataclass(slots=True)
class _Pending:
    event: str = "message"
    id: str | None = None
    data: list[str] = field(default_factory=list)


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    """Server-Sent Events from text lines; comments and pings are skipped, JSON data is decoded."""
    pending = _Pending()
    async for line in lines:
        if line == "":
            if pending.data:
                raw = "\n".join(pending.data)
                try:
                    data: Any = json.loads(raw)
                except json.JSONDecodeError:
                    data = raw
                yield SseEvent(pending.event, data, pending.id)
            pending = _Pending()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            pending.data.append(value)
        elif name == "event":
            pending.event = value
        elif name == "id":
            pending.id = value


@contextmanager
def _reaching(base_url: str) -> Iterator[None]:
    """httpx's transport errors as the project's: the service at ``base_url`` is away or too slow."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise errors.UpstreamTimeout(f"the MARS service at {base_url} did not answer in time") from exc
    except httpx.TransportError as exc:
        raise errors.UpstreamConnectionError(
            f"cannot reach the MARS service at {base_url} ({type(exc).__name__}); check --url and that "
            "`mars serve` runs there"
        ) from exc


class JobsClient(AbstractAsyncContextManager["JobsClient"]):
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 600.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._base_url = base_url
        try:
            httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise errors.InvalidRequest(f"--url: {base_url!r} is not a URL ({exc})", field="--url") from None
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0)
        )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def submit(self, body: Mapping[str, Any]) -> str:
        with _reaching(self._base_url):
            resp = await self._http.post("/v1/jobs", json=dict(body))
        return str(self._check(resp)["id"])

    async def get(self, job_id: str) -> dict[str, Any]:
        with _reaching(self._base_url):
            return self._check(await self._http.get(f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        with _reaching(self._base_url):
            return self._check(await self._http.delete(f"/v1/jobs/{job_id}"))

    async def events(self, job_id: str, after: str | None = None) -> AsyncIterator[SseEvent]:
        """The job's events until its feed closes (after the terminal status)."""
        headers = {"last-event-id": after} if after else {}
        with _reaching(self._base_url):
            async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    self._check(resp)
                async for event in parse_sse(resp.aiter_lines()):
                    yield event

    @staticmethod
    def _check(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.is_success:
            return dict(body)
        message = (body.get("error") or {}).get("message") or f"HTTP {resp.status_code}"
        if resp.status_code in _BY_STATUS:
            raise _BY_STATUS[resp.status_code](message)
        if resp.status_code in (413, 422, 400):
            raise errors.InvalidRequest(message, field=(body.get("error") or {}).get("param"))
        raise errors.UpstreamServerError(message, status=resp.status_code)
