"""Request ids, the access log and the HTTP metrics of each request (written by ``edge.Edge``).

Every request gets an id: the client's ``X-Request-ID`` when it is sane
(at most 128 characters of ``[A-Za-z0-9._-]``), else ``req_<uuid hex>``. It is
returned as ``x-request-id`` on every response (errors and streams too) and
written on every log line made while the request runs.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

if TYPE_CHECKING:
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


def set_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` the id of every log line of this context, until ``reset_request_id``."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


# ---------------------------------------------------------------- access log and metrics


def record_request(scope: Scope, status: int, seconds: float, metrics: Metrics | None = None) -> None:
    """The request's access-log line, and its count and duration in the HTTP metrics."""
    route = getattr(scope.get("route"), "path", None)
    method = scope.get("method", "")
    if metrics is not None:
        # Unmatched URLs and made-up methods share one label: raw values would make the series unbounded.
        label = method if method in _METHODS else "other"
        metrics.observe_request(label, route or "unmatched", status, seconds)
    if not access_log.isEnabledFor(logging.INFO):  # access log off: skip building its fields
        return
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
