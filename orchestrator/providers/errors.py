"""Translation of vendor exceptions (openai, anthropic, httpx2) into ``orchestrator.errors``.

This is the edge. Adapters wrap every vendor call in :func:`translated` (httpx's
``map_httpcore_exceptions`` is the model): a vendor or transport exception it knows leaves as the
project's error (``raise ... from exc``); anything else (our own bugs: ``ValueError``, ``KeyError``, an
unknown exception) is re-raised unchanged, never dressed up as a retryable upstream error. Status
mapping: 429 → ``RateLimited``, 529 or an ``overloaded_error`` → ``Overloaded``, other 5xx →
``UpstreamServerError``, a 404 that names the model → ``UnknownModel`` (any other 404, like a wrong
base URL, and 401/403 and other 4xx → ``UpstreamRejected``). The server's ``retry-after-ms`` hint wins
over ``retry-after`` (seconds or an HTTP date).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2

from orchestrator import errors


def retry_after_s(headers: Mapping[str, str] | None, *, now_s: float | None = None) -> float | None:
    """The server's retry hint in seconds: ``retry-after-ms`` first, then ``retry-after``."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


def _message_of(body: object, fallback: str) -> str:
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str | bytes) and body:
        return body.decode(errors="replace") if isinstance(body, bytes) else body
    return fallback


def _error_object(body: object) -> Mapping[str, Any]:
    """The ``error`` object of an error body (OpenAI, Anthropic, vLLM shapes), or ``{}``."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            return err
    return {}


def _is_overloaded(body: object) -> bool:
    return _error_object(body).get("type") == "overloaded_error"


_MODEL_WORD = re.compile(r"\bmodel\b", re.IGNORECASE)


def _names_model(body: object) -> bool:
    """Whether a 404 body says the *model* is unknown (OpenAI ``code: model_not_found``, a ``model``
    param, or a message about the model: vLLM's "The model `x` does not exist.", Anthropic's
    "model: x"), rather than the path (a wrong base URL)."""
    err = _error_object(body)
    if err.get("code") == "model_not_found" or err.get("param") == "model":
        return True
    message = err.get("message")
    return isinstance(message, str) and _MODEL_WORD.search(message) is not None


def status_error(
    status: int, headers: Mapping[str, str] | None, body: object, *, where: str = "upstream"
) -> errors.MarsError:
    """The project error for an HTTP error status (``body`` is the decoded JSON, text or bytes)."""
    if isinstance(body, bytes | str):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = json.loads(body)
    message = f"{where}: HTTP {status}: {_message_of(body, 'no message')}"
    hint = retry_after_s(headers)
    if status == 429:
        return errors.RateLimited(message, status=status, retry_after_s=hint)
    if status == 529 or _is_overloaded(body):
        return errors.Overloaded(message, status=status, retry_after_s=hint)
    if status >= 500:
        return errors.UpstreamServerError(message, status=status, retry_after_s=hint)
    if status == 404 and _names_model(body):
        return errors.UnknownModel(message)
    return errors.UpstreamRejected(message, status=status)


def stream_error_event(body: object, *, where: str = "upstream") -> errors.MarsError:
    """An ``error`` event inside an otherwise successful stream (e.g. Anthropic ``overloaded_error``)."""
    if _is_overloaded(body):
        return errors.Overloaded(f"{where}: {_message_of(body, 'overloaded')}", status=529)
    return errors.UpstreamServerError(f"{where}: {_message_of(body, 'error event')}", status=500)


def _sdk_types(attr: str) -> tuple[type[BaseException], ...]:
    """The SDKs' exception classes named ``attr``, from the SDKs already imported: an exception of an
    SDK can only exist once that SDK is loaded, and importing one just to test costs seconds."""
    found: list[type[BaseException]] = []
    for module_name in ("openai", "anthropic"):
        module = sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, attr))
    return tuple(found)


def translate(exc: BaseException, *, where: str = "upstream") -> errors.MarsError | None:
    """The project's error for a vendor or transport exception; ``None`` when it is not one (the
    caller re-raises it as it is). A ``MarsError`` is returned unchanged."""
    if isinstance(exc, errors.MarsError):
        return exc
    if isinstance(exc, _sdk_types("APIStatusError")):
        sdk_exc: Any = exc
        headers = dict(sdk_exc.response.headers.items())
        return status_error(sdk_exc.status_code, headers, sdk_exc.body, where=where)
    if isinstance(exc, (*_sdk_types("APITimeoutError"), httpx2.TimeoutException)):
        return errors.UpstreamTimeout(f"{where}: timed out ({exc.__class__.__name__})")
    if isinstance(exc, (*_sdk_types("APIConnectionError"), httpx2.TransportError)):
        return errors.UpstreamConnectionError(
            f"{where}: connection failed: {exc!r}; check the provider's base URL and that it is up"
        )
    if isinstance(exc, _sdk_types("APIResponseValidationError")):
        return errors.MalformedStream(f"{where}: response did not validate: {exc}")
    if isinstance(exc, _sdk_types("APIError")):
        # An ``error`` payload inside a 200 stream; the SDK gives no status.
        return stream_error_event(getattr(exc, "body", None), where=where)
    return None


@contextlib.contextmanager
def translated(where: str = "upstream") -> Iterator[None]:
    """Around a vendor call: known vendor exceptions leave as the project's errors, ``from`` the
    original; the project's own errors and anything unknown pass through unchanged."""
    try:
        yield
    except errors.MarsError:
        raise
    except Exception as exc:
        mapped = translate(exc, where=where)
        if mapped is None:
            raise
        raise mapped from exc


def stream_json(data: bytes, *, where: str = "upstream") -> Any:
    """One SSE event's JSON payload; bytes that do not parse are the upstream's fault."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise errors.MalformedStream(f"{where}: malformed JSON in the stream: {exc}") from exc
