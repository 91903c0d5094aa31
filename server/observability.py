"""Request ids, JSON logs with secrets redacted, and the access log / HTTP metrics middleware.

Every request gets an id: the client's ``X-Request-ID`` when it is sane
(at most 128 characters of ``[A-Za-z0-9._-]``), else ``req_<uuid hex>``. It is
returned as ``x-request-id`` on every response (errors and streams too) and
written on every log line made while the request runs.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
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


# ---------------------------------------------------------------- redaction

_AUTHORIZATION = re.compile(r"""(?i)((?:proxy-)?authorization['"]?\s*[:=,]\s*(?:b?['"])?)[^'"\\\n,)}\]]+""")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
# Longer than a key prefix ("sk-" and 9 characters, logged on purpose to tell keys apart): a secret.
_SECRET_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{10,}")


def _mask_key(match: re.Match[str]) -> str:
    return f"sk-...{match.group(0)[-4:]}"


def redact(text: str) -> str:
    """``text`` with API keys shortened to ``sk-...<last 4>`` and Authorization values removed."""
    lowered = text.lower()
    if "sk-" not in text and "authorization" not in lowered and "bearer" not in lowered:
        return text
    text = _AUTHORIZATION.sub(r"\1***", text)
    text = _BEARER.sub(r"\1 ***", text)
    return _SECRET_KEY.sub(_mask_key, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message so no handler (JSON or not) sees a full key or an Authorization value."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's business, not ours
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# ---------------------------------------------------------------- JSON lines

_RECORD_FIELDS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_RECORD_FIELDS.add("color_message")  # uvicorn's copy of the message with terminal colours


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, exc_info, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # Redacting the finished line covers the message, the traceback and every extra field.
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def logging_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: JSON lines on stderr for the app and uvicorn.

    Also given to ``uvicorn.run(log_config=...)``, so worker processes configure
    themselves the same way. uvicorn's access log is off: ``RequestContext`` writes one.
    """
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "server.observability.RedactSecrets"}},
        "formatters": {"json": {"()": "server.observability.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["redact"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def configure_logging(level: str = "info") -> None:
    logging.config.dictConfig(logging_config(level))


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
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
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
