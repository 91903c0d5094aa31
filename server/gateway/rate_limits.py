"""Per-key rate limits: requests and tokens per minute, sliding window.

The algorithm and its storage come from the ``limits`` library: Redis when
``GENAI_REDIS_URL`` is set (every worker and replica shares one budget), in
process otherwise. Token limits are checked before a request (is any budget
left?) and charged after it with the tokens really used, as OpenAI does.
"""

from __future__ import annotations

import math
import time

from fastapi import Request
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.util import WindowStats
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import RateLimited
from storage.tenants import Caller

HEADERS_STATE_KEY = "ratelimit_headers"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "120ms"."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _reset_in(stats: WindowStats, limit: int) -> float:
    """Seconds until the window frees budget. ``limits`` reports a window opened this very millisecond
    (Redis TTL of exactly two windows) as resetting now, by a modulo; it resets a whole window later."""
    reset = stats.reset_time - time.time()
    if reset <= 0 and stats.remaining < limit:
        reset = 60.0
    return max(reset, 0.0)


class RateLimiter:
    def __init__(self, redis_url: str | None, prefix: str = "genai-ratelimit", on_reject=None) -> None:
        storage: Storage
        if redis_url:
            storage = RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=prefix)
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self.on_reject = on_reject  # called with "requests" or "tokens", for metrics

    async def admit(self, request: Request, caller: Caller, requests: int = 1) -> None:
        """Count ``requests`` (a batch counts each of its inputs) against the key's limits, or raise 429
        with Retry-After. A count larger than what is left is refused whole and counts nothing."""
        headers: dict[str, str] = {}
        if caller.rpm:
            item = RateLimitItemPerMinute(caller.rpm)
            admitted = await self.strategy.hit(item, "requests", caller.key_id, cost=requests)
            reset, _ = await self._window(item, "requests", caller, headers)
            if not admitted:
                self._reject("requests", caller, reset, headers)
        if caller.tpm:
            item = RateLimitItemPerMinute(caller.tpm)
            reset, remaining = await self._window(item, "tokens", caller, headers)
            if remaining <= 0:
                self._reject("tokens", caller, reset, headers)
        request.scope.setdefault("state", {})[HEADERS_STATE_KEY] = headers

    async def _window(self, item, kind: str, caller: Caller, headers: dict[str, str]) -> tuple[float, int]:
        """Add OpenAI's limit/remaining/reset headers for ``kind``; returns (seconds to reset, remaining)."""
        stats = await self.strategy.get_window_stats(item, kind, caller.key_id)
        reset = _reset_in(stats, item.amount)
        headers[f"x-ratelimit-limit-{kind}"] = str(item.amount)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(stats.remaining, 0))
        headers[f"x-ratelimit-reset-{kind}"] = _duration(reset)
        return reset, stats.remaining

    async def spend(self, caller: Caller, *, tokens: int, cost: float = 0.0) -> None:
        """Charge what a finished request used: its tokens to the key's token limit (``cost`` is for budgets)."""
        if caller.tpm and tokens > 0:
            item = RateLimitItemPerMinute(caller.tpm)
            # Charge what fits: a hit larger than the remaining budget would be refused and count nothing.
            stats = await self.strategy.get_window_stats(item, "tokens", caller.key_id)
            charge = min(tokens, max(stats.remaining, 0))
            if charge:
                await self.strategy.hit(item, "tokens", caller.key_id, cost=charge)

    def _reject(self, kind: str, caller: Caller, reset: float, headers: dict[str, str]) -> None:
        if self.on_reject is not None:
            self.on_reject(kind)
        limit = caller.rpm if kind == "requests" else caller.tpm
        error = RateLimited(
            f"Rate limit reached for key {caller.key_prefix}... on {kind} per minute: limit {limit}. "
            f"Please try again in {_duration(reset)}.",
            code="rate_limit_exceeded",
            headers={**headers, "retry-after": str(max(math.ceil(reset), 1))},
        )
        error.type = kind  # OpenAI's type names the exhausted limit: "requests" or "tokens"
        raise error


class RateLimitHeaders:
    """Adds the x-ratelimit-* headers that admission computed to the response, streaming ones too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get(HEADERS_STATE_KEY)
                if extra:
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    message["headers"] = list(message.get("headers", [])) + [
                        (name.encode(), value.encode()) for name, value in extra.items() if name.encode() not in present
                    ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
