"""The replay server's control plane, mounted at ``/_replay``: ``GET /log``, ``POST /faults``,
``POST /reset`` and ``GET /health``.

The control plane and the ``x-replay-fault`` header change what every client gets, so they answer only
loopback clients, or, with a ``control_token``, requests bearing it (``Authorization: Bearer``); others
get 403 (:meth:`ControlPlane.allows`). ``/health`` is open to all.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.errors import InvalidRequest
from orchestrator.replay.faults import FaultPlan
from orchestrator.replay.journal import Journal
from orchestrator.replay.recordings import Recordings
from orchestrator.replay.wire import openai_error


class ControlPlane:
    """The routes that read the log, script faults and reset a running replay server."""

    def __init__(
        self, journal: Journal, faults: FaultPlan, recordings: Recordings, *, token: str | None
    ) -> None:
        self._journal = journal
        self._faults = faults
        self._recordings = recordings
        self._token = token

    def routes(self) -> list[Route]:
        return [
            Route("/log", self._log, methods=["GET"]),
            Route("/faults", self._set_faults, methods=["POST"]),
            Route("/reset", self._reset, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
        ]

    def allows(self, request: Request) -> bool:
        """May this request use the control plane (or the fault header)? See the module docstring."""
        if self._token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            return hmac.compare_digest(given.encode(), self._token.encode())
        host = request.client.host if request.client else ""
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @staticmethod
    def forbidden() -> Response:
        why = "the replay control plane needs its token (Authorization: Bearer ...) or a loopback client"
        return JSONResponse(openai_error(403, why), status_code=403)

    async def _log(self, request: Request) -> Response:
        if not self.allows(request):
            return self.forbidden()
        return JSONResponse(self._journal.entries(request.query_params.get("kind")))

    async def _set_faults(self, request: Request) -> Response:
        if not self.allows(request):
            return self.forbidden()
        try:
            body = json.loads(await request.body())
            script = (body.get("script") or []) if isinstance(body, dict) else None
            if not isinstance(script, list) or not all(isinstance(f, str | None) for f in script):
                raise ValueError('send {"script": ["429:0.2", "ok", ...]}')
            self._faults.script(script)
        except (ValueError, InvalidRequest) as exc:
            return JSONResponse(openai_error(400, f"bad fault script: {exc}"), status_code=400)
        return JSONResponse({"ok": True})

    async def _reset(self, request: Request) -> Response:
        if not self.allows(request):
            return self.forbidden()
        self._journal.clear()
        self._faults.clear()
        return JSONResponse({"ok": True})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "recordings": len(self._recordings)})
