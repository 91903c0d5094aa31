"""CORS: which browser pages of other origins may call the platform, per app and platform-wide.

A browser app's own frontend (``https://app.example.com``, ``http://127.0.0.1:5173``) calls the API with one of
its app's keys. Its origin must be allowed: in the app's ``cors_origins`` (``genai apps update APP --cors-origin
ORIGIN``, ``PATCH /admin/apps/APP``), or platform-wide (``GENAI_CORS_ORIGINS``). ``*`` allows every origin.

- **Preflights** (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) carry no key, so they are
  answered here, before authentication: allowed (204) when the origin is allowed platform-wide or by any app (the
  union of every app's origins, read from the database at most every ``CACHE_SECONDS`` per process, and at once
  after a change through this process's admin API); refused (403, no CORS headers: the browser reports a CORS
  error) otherwise.
- **Responses** (errors and streams too) get ``Access-Control-Allow-Origin`` only when the origin is allowed for
  the app of the key that made the request, or platform-wide: a page allowed for one app cannot read answers to
  another app's key. A request whose key was not resolved (no key, a wrong one: 401; open routes) is answered with
  CORS headers when the origin would pass a preflight, so that a browser app can read its 401.
- Credentials are never allowed (no ``Access-Control-Allow-Credentials``): keys travel in the ``Authorization``
  header, and the playground's key cookie must not be usable from another origin. So ``*`` is safe to answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from errors import PermissionDenied

if TYPE_CHECKING:
    from storage.tenants import Caller, TenantStore

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0  # how stale the union of the apps' origins may be (other workers, `genai apps update`)
MAX_AGE_SECONDS = 600  # how long a browser may cache a preflight's answer
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")
# The request headers the platform reads; a preflight's other requested headers (the openai JS SDK's
# X-Stainless-*) are allowed too: the platform ignores them, and no credentials are involved.
ALLOWED_HEADERS = (
    "Authorization", "Content-Type", "Accept", "Idempotency-Key", "X-Request-ID", "X-Conversation-ID", "X-Model",
    "Cache-Control", "OpenAI-Organization", "OpenAI-Project",
)  # fmt: skip
# The response headers a page may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = (
    "x-request-id",
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
    "retry-after", "x-conversation-id", "x-deployment", "x-cache", "idempotent-replayed",
)  # fmt: skip
WILDCARD = "*"
EXAMPLE = "an origin is scheme://host[:port], e.g. 'https://app.example.com' or 'http://127.0.0.1:5173'"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_ALLOW_METHODS = ", ".join(ALLOWED_METHODS).encode()
_EXPOSE_HEADERS = ", ".join(EXPOSED_HEADERS).encode()
_PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")

Headers = list[tuple[bytes, bytes]]


# ---------------------------------------------------------------- origins


def check_origin(value: Any) -> str:
    """``value`` as a browser sends it in ``Origin``: scheme and host lower-cased, a default port left out; or
    ``*``. Raises ValueError saying what is wrong (a path, a query, user info, another scheme)."""
    if not isinstance(value, str):
        raise ValueError(f"an origin is a string: {value!r}")
    text = value.strip()
    if text == WILDCARD:
        return WILDCARD
    if text.lower() == "null":
        raise ValueError("'null' (the origin of files and sandboxed pages) cannot be allowed: any page can send it")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an origin ({exc}): {EXAMPLE}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError(f"{text!r} is not an origin: {EXAMPLE}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} has user info: {EXAMPLE}")
    host = parts.hostname or ""
    if "*" in host:
        raise ValueError(f"{text!r} is a pattern: list each origin, or allow them all with '*'")
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"{text!r} has an invalid IPv6 host: {EXAMPLE}") from None
    else:
        try:
            host = host.encode("idna").decode("ascii")  # as browsers send it: bücher.example -> xn--bcher-kva.example
        except UnicodeError:
            host = ""
        if not _HOST.fullmatch(host):
            raise ValueError(f"{text!r} has no valid host: {EXAMPLE}")
    origin = f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"
    if parts.path or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"{text!r} has a path, query or fragment: an origin is scheme://host[:port], here {origin!r}")
    return origin


def check_origins(values: Iterable[Any]) -> list[str]:
    """Each origin checked (ValueError names the first bad one), duplicates dropped, in order."""
    return list(dict.fromkeys(check_origin(value) for value in values))


def parse_origins(value: Any) -> Any:
    """A setting's origins: a JSON list, or comma-separated (``https://a.example,http://127.0.0.1:5173``); empty for
    none. Values that are not strings are left to validation."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def _allows(origins: Iterable[str] | None, origin: str) -> str | None:
    """The Access-Control-Allow-Origin that ``origins`` give ``origin``: itself, ``*``, or None (not allowed)."""
    if not origins:
        return None
    if origin in origins:
        return origin
    return WILDCARD if WILDCARD in origins else None


class CorsPolicy:
    """Who may call from where: the platform-wide origins, each app's (on its ``Caller``), and their union for
    preflights and for requests whose key is unknown (cached for ``cache_seconds``)."""

    def __init__(
        self, platform_origins: Iterable[str], tenants: TenantStore | None, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.platform = frozenset(platform_origins)
        self.tenants = tenants
        self.cache_seconds = cache_seconds
        self._union: frozenset[str] = frozenset()
        self._until = 0.0
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """Read the apps' origins again at the next request (after an app changed)."""
        self._until = 0.0

    async def apps_origins(self) -> frozenset[str]:
        """Every origin some app allows (``*`` included when one allows all)."""
        if self.tenants is None or time.monotonic() < self._until:
            return self._union
        async with self._lock:
            if time.monotonic() < self._until:  # another request read them meanwhile
                return self._union
            try:
                self._union = frozenset(await self.tenants.cors_origins())
            except Exception as exc:  # the database is down: keep what was known, try again later
                log.warning(
                    "cannot read the apps' CORS origins; using the last ones known: %s: %s", type(exc).__name__, exc
                )
            self._until = time.monotonic() + self.cache_seconds
        return self._union

    async def for_preflight(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin of a preflight from ``origin``: allowed platform-wide or by any app."""
        return _allows(self.platform, origin) or _allows(await self.apps_origins(), origin)

    async def for_response(self, origin: str, caller: Caller | None) -> str | None:
        """The Access-Control-Allow-Origin of a response: platform-wide, else the calling app's origins; for admin
        keys the platform-wide only; with no key resolved, as a preflight."""
        if allowed := _allows(self.platform, origin):
            return allowed
        if caller is None:
            return await self.for_preflight(origin)
        return _allows(getattr(caller, "cors_origins", None), origin)

    async def preflight(self, origin: str, method: str, requested_headers: str | None) -> tuple[int, Headers, bytes]:
        """The answer to a preflight (status, headers, body): 204 with what may be sent, or a 403 in OpenAI's
        error shape without CORS headers (the browser then reports a CORS error)."""
        allowed = await self.for_preflight(origin)
        if allowed is None:
            return _refusal(
                f"Origin {origin} may not call this platform: add it to the app's cors_origins (genai apps update "
                "APP --cors-origin ORIGIN, or PATCH /admin/apps/APP), or to GENAI_CORS_ORIGINS."
            )
        if method.upper() not in ALLOWED_METHODS:
            return _refusal(f"Method {method} is not allowed across origins: {', '.join(ALLOWED_METHODS)} are.")
        requested = [name.strip() for name in (requested_headers or "").split(",") if _TOKEN.fullmatch(name.strip())]
        known = {name.lower() for name in ALLOWED_HEADERS}
        allow_headers = [*ALLOWED_HEADERS, *dict.fromkeys(n.lower() for n in requested if n.lower() not in known)]
        headers = [
            (b"access-control-allow-origin", allowed.encode("latin-1")),
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-allow-headers", ", ".join(allow_headers).encode("latin-1")),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
            (b"content-length", b"0"),
        ]
        return 204, _vary(headers, *_PREFLIGHT_VARY), b""

    async def response_headers(
        self, headers: Iterable[tuple[bytes, bytes]], origin: str, caller: Caller | None
    ) -> Headers:
        """A response's ``headers`` for a request from ``origin``: the app's own access-control-* ones replaced by
        the allowed origin and the exposed headers (or none), ``Origin`` added to ``Vary``."""
        kept = [(key, value) for key, value in headers if not key.lower().startswith(b"access-control-")]
        allowed = await self.for_response(origin, caller)
        if allowed is not None:
            kept += [
                (b"access-control-allow-origin", allowed.encode("latin-1")),
                (b"access-control-expose-headers", _EXPOSE_HEADERS),
            ]
        return _vary(kept, "Origin")


# ---------------------------------------------------------------- headers


def _vary(headers: Headers, *names: str) -> Headers:
    """``headers`` with ``names`` added to its Vary header (one header, no duplicates)."""
    present: list[str] = []
    rest = []
    for key, value in headers:
        if key.lower() == b"vary":
            present += [part.strip() for part in value.decode("latin-1").split(",") if part.strip()]
        else:
            rest.append((key, value))
    if "*" in present:
        return [*rest, (b"vary", b"*")]
    known = {part.lower() for part in present}
    present += [name for name in names if name.lower() not in known]
    return [*rest, (b"vary", ", ".join(present).encode("latin-1"))]


def _refusal(message: str) -> tuple[int, Headers, bytes]:
    """A refused preflight: 403 in OpenAI's error shape."""
    error = PermissionDenied(message, code="cors_not_allowed")
    body = orjson.dumps(error.to_dict())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return error.status_code, _vary(headers, *_PREFLIGHT_VARY), body
