"""Authentication: ``Authorization: Bearer <key>`` on every API route.

Resolved keys are cached in process for a few seconds so a request costs no
database round trip; a revocation through this process takes effect at once,
through another worker within ``AUTH_CACHE_SECONDS``.
"""

from __future__ import annotations

import time

from fastapi import Request

from errors import AuthenticationFailed, PermissionDenied
from storage.tenants import Caller, TenantStore, hash_key

AUTH_CACHE_SECONDS = 5.0


class Authenticator:
    def __init__(self, tenants: TenantStore, cache_seconds: float = AUTH_CACHE_SECONDS) -> None:
        self.tenants = tenants
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Caller | None, float]] = {}

    async def caller(self, secret: str) -> Caller | None:
        digest = hash_key(secret)
        cached = self._cache.get(digest)
        moment = time.monotonic()
        if cached is not None and cached[1] > moment:
            caller = cached[0]
        else:
            caller = await self.tenants.authenticate(secret)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (caller, moment + self.cache_seconds)
        if caller is not None and caller.expires_at is not None and caller.expires_at <= time.time():
            return None
        return caller

    def forget(self) -> None:
        """Drop cached keys, after a revocation or a change of limits."""
        self._cache.clear()


KEY_COOKIE = "genai_api_key"


def bearer_token(request: Request) -> str | None:
    """The key from ``Authorization: Bearer``, or from the ``genai_api_key`` cookie (browser pages such as
    the LangServe playground cannot set headers)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if not header and (cookie := request.cookies.get(KEY_COOKIE)):
        return cookie.strip()
    return None


async def authenticate(request: Request) -> Caller:
    """The caller behind the request's key, remembered on the request for logs and limits."""
    known = getattr(request.state, "caller", None)
    if known is not None:
        return known
    token = bearer_token(request)
    if token is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    caller = await request.app.state.services.auth.caller(token)
    if caller is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {_redacted(token)}.")
    request.state.caller = caller
    request.state.app_name = caller.app_name or "admin"
    request.state.key_prefix = caller.key_prefix
    return caller


async def app_caller(request: Request) -> Caller:
    """The calling app's key, not yet counted against its limits (see ``admit``)."""
    caller = await authenticate(request)
    if caller.app_id is None:
        raise PermissionDenied("Admin keys manage the platform; call this route with an app's API key.")
    return caller


async def require_app(request: Request) -> Caller:
    """An app's key, with the request counted against its rate limits."""
    caller = await app_caller(request)
    await admit(request, caller)
    return caller


async def require_chat_app(request: Request) -> Caller:
    """An app's key for a chat request: counted against its rate limits and checked against its budgets."""
    caller = await app_caller(request)
    await admit(request, caller, chat=True)
    return caller


async def require_key(request: Request) -> Caller:
    """Any valid key; app keys count against their rate limits."""
    caller = await authenticate(request)
    if caller.app_id is not None:
        await admit(request, caller)
    return caller


async def require_admin(request: Request) -> Caller:
    caller = await authenticate(request)
    if not caller.is_admin:
        raise PermissionDenied("This route needs an admin key.")
    return caller


async def admit(request: Request, caller: Caller, requests: int = 1, *, chat: bool = False) -> None:
    """Count the request (as ``requests`` chat requests: a batch counts each input) against the key's limits,
    and a ``chat`` request against its budgets, once even when several dependencies ask."""
    if not getattr(request.state, "admitted", False):
        request.state.admitted = True
        await request.app.state.services.limiter.admit(request, caller, requests=requests, chat=chat)


def _redacted(token: str) -> str:
    return f"{token[:3]}***{token[-4:]}" if len(token) > 10 else "***"
