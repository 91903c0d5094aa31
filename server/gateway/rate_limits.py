"""Per-key rate limits (requests and tokens per minute, sliding window) and monthly budgets per app and key.

The rate limits' algorithm and storage come from the ``limits`` library; budgets
are plain counters of what each app and key spent this calendar month (UTC).
Both live in Redis when ``GENAI_REDIS_URL`` is set (every worker and replica
shares them), in process otherwise. Token limits and budgets are checked before
a request (is any left?) and charged after it with what it really used, as
OpenAI does. When Redis cannot be reached, the limits and budgets fall back to
counts of this process (logged, counted in the metrics, shown by /readyz) until
Redis answers again: no request goes through unchecked, none fails for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time

from fastapi import Request
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.util import WindowStats
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import RateLimited
from memory.redis_client import Outage, open_redis, redis_options
from storage.tenants import Caller

log = logging.getLogger(__name__)

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


BUDGET_TTL_SECONDS = 35 * 86400  # a month's counters outlive the month, then Redis drops them


def _month_of(moment: dt.datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def _next_month(moment: dt.datetime) -> dt.datetime:
    """When a month's budgets reset: the first of the next month, 00:00 UTC."""
    year, month = divmod(moment.year * 12 + moment.month, 12)
    return dt.datetime(year, month + 1, 1, tzinfo=dt.UTC)


def _amount(value: float) -> str:
    """A sum of money for a message: "0.25", "1000", "0.000125" (no exponent, no trailing zeros)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


class BudgetCounters:
    """What each app and key spent in a calendar month (UTC): one Redis counter per app or key and month
    (``INCRBYFLOAT``, expiring after ``BUDGET_TTL_SECONDS``), or a dict of this month's in process."""

    def __init__(self, redis_url: str | None, prefix: str) -> None:
        self.redis: Redis | None = open_redis(redis_url) if redis_url else None
        self.prefix = prefix
        self._month = ""
        self._local: dict[str, float] = {}

    def names(self, caller: Caller, month: str) -> tuple[str, str]:
        """The counters of the caller's app and key in ``month``."""
        return f"{self.prefix}:{month}:app:{caller.app_id}", f"{self.prefix}:{month}:key:{caller.key_id}"

    def _this_month(self, month: str) -> dict[str, float]:
        if month != self._month:  # a new month: last month's counters are of no more use
            self._month, self._local = month, {}
        return self._local

    async def spent(self, names: list[str], month: str) -> list[float]:
        if self.redis is None:
            local = self._this_month(month)
            return [local.get(name, 0.0) for name in names]
        return [float(value) if value is not None else 0.0 for value in await self.redis.mget(names)]

    async def add(self, names: tuple[str, ...], month: str, amount: float) -> None:
        if self.redis is None:
            local = self._this_month(month)
            for name in names:
                local[name] = local.get(name, 0.0) + amount
            return
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            for name in names:
                pipe.incrbyfloat(name, amount)
                pipe.expire(name, BUDGET_TTL_SECONDS)
            await pipe.execute()

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


class RateLimiter:
    def __init__(
        self, redis_url: str | None, prefix: str = "genai-ratelimit", on_reject=None, on_fallback=None
    ) -> None:
        self.shared = redis_url is not None  # counted in Redis, for every worker and replica
        self.strategy = SlidingWindowCounterRateLimiter(
            RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=prefix, **redis_options())
            if redis_url
            else MemoryStorage()
        )
        self.budgets = BudgetCounters(redis_url, f"{prefix}:budget")
        # What this process counts while Redis is unreachable.
        self.local_strategy = SlidingWindowCounterRateLimiter(MemoryStorage())
        self.local_budgets = BudgetCounters(None, f"{prefix}:budget")
        self.outage = Outage()
        self.on_reject = on_reject  # called with "requests", "tokens" or "budget", for metrics
        self.on_fallback = on_fallback  # called with "ratelimits" for a request counted in process (Redis down)

    async def admit(self, request: Request, caller: Caller, requests: int = 1, *, chat: bool = False) -> None:
        """Count ``requests`` (a batch counts each of its inputs) against the key's limits, or raise 429
        with Retry-After. A count larger than what is left is refused whole and counts nothing. A ``chat``
        request (the only kind that costs money, so that a key whose budget is spent can still list models and
        read its usage) is first checked against the monthly budgets (429 ``insufficient_quota``, counting
        nothing). While Redis is unreachable, this process's own counts decide."""

        async def count(strategy: SlidingWindowCounterRateLimiter, budgets: BudgetCounters) -> None:
            if chat:
                await self._check_budgets(caller, budgets)
            await self._admit(request, caller, requests, strategy)

        await self._counted(count)

    async def _counted(self, action) -> None:
        """``action(strategy, budgets)`` on the shared counts, or on this process's while Redis is unreachable
        (after a failure, Redis is tried again ``Outage.retry_after`` seconds later)."""
        if not self.shared:
            await action(self.strategy, self.budgets)
            return
        if not self.outage.skip:
            try:
                await action(self.strategy, self.budgets)
            except (RedisError, StorageError) as exc:
                if self.outage.down():
                    log.warning(
                        "Redis is unreachable: rate limits and budgets are counted per process until it answers: "
                        "%s: %s",
                        type(exc).__name__,
                        exc,
                    )
            else:
                if self.outage.up():
                    log.warning("Redis answers again: rate limits and budgets are shared again")
                return
        if self.on_fallback is not None:
            self.on_fallback("ratelimits")
        await action(self.local_strategy, self.local_budgets)

    async def _check_budgets(self, caller: Caller, counters: BudgetCounters) -> None:
        """429 ``insufficient_quota`` when the app's or the key's budget for this month is spent."""
        moment = dt.datetime.now(dt.UTC)
        month = _month_of(moment)
        app_counter, key_counter = counters.names(caller, month)
        owners = (
            (f"app '{caller.app_name}'", app_counter, caller.app_budget),
            (f"key {caller.key_prefix}...", key_counter, caller.key_budget),
        )
        budgets = [(owner, counter, budget) for owner, counter, budget in owners if budget is not None]
        if not budgets:
            return
        spent = await counters.spent([counter for _, counter, _ in budgets], month)
        for (owner, _, budget), used in zip(budgets, spent):
            if used >= budget:
                error = RateLimited(
                    f"You exceeded the monthly budget of {owner}: {_amount(used)} spent of {_amount(budget)} "
                    f"this month (UTC). It resets on {_next_month(moment):%Y-%m-%d} at 00:00 UTC; "
                    "until then, ask the platform's admin to raise it.",
                    code="insufficient_quota",
                )
                error.type = "insufficient_quota"  # OpenAI's error for an exhausted quota
                if self.on_reject is not None:
                    self.on_reject("budget")
                raise error

    async def _admit(
        self, request: Request, caller: Caller, requests: int, strategy: SlidingWindowCounterRateLimiter
    ) -> None:
        headers: dict[str, str] = {}
        if caller.rpm:
            item = RateLimitItemPerMinute(caller.rpm)
            admitted = await strategy.hit(item, "requests", caller.key_id, cost=requests)
            reset, _ = await self._window(strategy, item, "requests", caller, headers)
            if not admitted:
                self._reject("requests", caller, reset, headers)
        if caller.tpm:
            item = RateLimitItemPerMinute(caller.tpm)
            reset, remaining = await self._window(strategy, item, "tokens", caller, headers)
            if remaining <= 0:
                self._reject("tokens", caller, reset, headers)
        request.scope.setdefault("state", {})[HEADERS_STATE_KEY] = headers

    async def _window(
        self, strategy: SlidingWindowCounterRateLimiter, item, kind: str, caller: Caller, headers: dict[str, str]
    ) -> tuple[float, int]:
        """Add OpenAI's limit/remaining/reset headers for ``kind``; returns (seconds to reset, remaining)."""
        stats = await strategy.get_window_stats(item, kind, caller.key_id)
        reset = _reset_in(stats, item.amount)
        headers[f"x-ratelimit-limit-{kind}"] = str(item.amount)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(stats.remaining, 0))
        headers[f"x-ratelimit-reset-{kind}"] = _duration(reset)
        return reset, stats.remaining

    async def spend(self, caller: Caller, *, tokens: int, cost: float = 0.0) -> None:
        """Charge what a finished request used: its cost to this month's spending of its app and key (whether
        they have a budget or not: one set later this month counts what was spent already), its tokens to the
        key's token limit."""

        async def charge(strategy: SlidingWindowCounterRateLimiter, budgets: BudgetCounters) -> None:
            if cost > 0 and caller.app_id is not None:
                month = _month_of(dt.datetime.now(dt.UTC))
                await budgets.add(budgets.names(caller, month), month, cost)
            if caller.tpm and tokens > 0:
                item = RateLimitItemPerMinute(caller.tpm)
                # Charge what fits: a hit larger than the remaining budget would be refused and count nothing.
                stats = await strategy.get_window_stats(item, "tokens", caller.key_id)
                fits = min(tokens, max(stats.remaining, 0))
                if fits:
                    await strategy.hit(item, "tokens", caller.key_id, cost=fits)

        await self._counted(charge)

    async def aclose(self) -> None:
        """Close the budgets' Redis connections (the ``limits`` storage keeps its own)."""
        await self.budgets.aclose()

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
