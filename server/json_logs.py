"""JSON log lines with secrets redacted: the format of every log line the platform and uvicorn write.

Each line carries the id of the request being served (``request_context``);
no full API key or ``Authorization`` value ever reaches a handler.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import datetime, timezone
from typing import Any

from server.gateway.request_context import current_request_id

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
    themselves the same way. uvicorn's access log is off: ``Edge`` (server/gateway/edge.py) writes one.
    """
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "server.json_logs.RedactSecrets"}},
        "formatters": {"json": {"()": "server.json_logs.JsonFormatter"}},
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
            # Alembic narrates every start; storage.migrations logs the upgrades that change something.
            "alembic": {"handlers": [], "level": "WARNING", "propagate": True},
        },
    }


def configure_logging(level: str = "info") -> None:
    logging.config.dictConfig(logging_config(level))
