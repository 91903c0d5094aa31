"""Request ids, and the middleware that writes the access log and the HTTP metrics.

Every request gets an id: the client's ``X-Request-ID`` when it is sane
(at most 128 characters of ``[A-Za-z0-9._-]``), else ``req_<uuid hex>``. It is
returned as ``x-request-id`` on every response (errors and streams too) and
written on every log line made while the request runs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.gateway.prometheus_metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CLOSED_REQUEST = 499
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

access_log = logging.getLogger("genai.access")


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def sane_request_id(value: str | None) -> str | None:
    """``value`` when it is fit to echo and log, else None."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


# ---------------------------------------------------------------- middleware


class RequestContext:
    """Pure ASGI: request id in, ``x-request-id`` out, one access-log line and the HTTP metrics per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                incoming = sane_request_id(value.decode("latin-1"))
                break
        request_id = incoming or new_request_id()
        token = _request_id.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        # The status of the access log and the metrics: the response's; 499 (nginx's "client closed request") when
        # the client left before one was sent; 500 when the app sent none otherwise.
        status = 500
        responded = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        async def receive_watching() -> Message:
            nonlocal status
            message = await receive()
            if message["type"] == "http.disconnect" and not responded:
                status = CLIENT_CLOSED_REQUEST
            return message

        try:
            await self.app(scope, receive_watching, send_with_id)
        except BaseException:
            self._record(scope, status, time.perf_counter() - started)
            raise  # the id stays set: the server's own error line for this request carries it too
        self._record(scope, status, time.perf_counter() - started)
        _request_id.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None)
        method = scope.get("method", "")
        if self.metrics is not None:
            # Unmatched URLs and made-up methods share one label: raw values would make the series unbounded.
            label = method if method in _METHODS else "other"
            self.metrics.observe_request(label, route or "unmatched", status, seconds)
        state = scope.get("state") or {}
        fields: dict[str, Any] = {
            "method": method,
            "path": scope.get("path", ""),
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        for source, key in (("app_name", "app"), ("key_prefix", "key_prefix")):
            if state.get(source) is not None:
                fields[key] = state[source]
        access_log.info("%s %s %s %.1fms", method, fields["path"], status, fields["duration_ms"], extra=fields)


def install(app: FastAPI, metrics: Metrics | None = None) -> None:
    """Wrap ``app``'s whole middleware stack in ``RequestContext``.

    Outside Starlette's ``ServerErrorMiddleware``, so the 500 of an unhandled
    error carries the request id too (``add_middleware`` would put it inside).
    """
    build = app.build_middleware_stack

    def build_with_context() -> ASGIApp:
        return RequestContext(build(), metrics=metrics)

    app.build_middleware_stack = build_with_context  # type: ignore[method-assign]
