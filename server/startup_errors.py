"""What went wrong before the platform could run, in one line that names the setting to fix: a setting that does not
parse, a database or Redis that cannot be reached. The CLI prints these instead of a traceback (``--debug`` shows it).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_settings.exceptions import SettingsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

ENV_PREFIX = "GENAI_"


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (user and host kept: they help find the mistake)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def settings_problem(exc: BaseException) -> str | None:
    """The one-line message of a settings error (``SettingsError`` or ``ValidationError`` of ``Settings``)."""
    if isinstance(exc, SettingsError):
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        return f"the setting {ENV_PREFIX}{field.upper()} is not valid: {_cause(exc)}"
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "?"
            name = f"{ENV_PREFIX}{field.split('.')[0].upper()}"
            problems.append(f"{name}: {error['msg']}" + (f" (at {field})" if "." in field else ""))
        return "invalid setting " + "; ".join(problems)
    return None


def unreachable(exc: BaseException, database_url: str, redis_url: str | None) -> str | None:
    """The one-line message of a database or Redis that cannot be reached; None for other errors."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError) and redis_url:
        return f"cannot reach Redis at {hide_password(redis_url)} (GENAI_REDIS_URL): {exc}"
    if isinstance(exc, OperationalError | InterfaceError | DBAPIError | ConnectionError | OSError | TimeoutError):
        return f"cannot reach the database at {hide_password(database_url)} (GENAI_DATABASE_URL): {_cause(exc)}"
    return None


def _cause(exc: BaseException) -> str:
    """The innermost reason, in one line."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    return " ".join(str(exc).split()) or type(exc).__name__
