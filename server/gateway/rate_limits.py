"""Per-key rate limits (requests and tokens per minute, sliding window) and monthly budgets per app and key.

A sliding window counter per limit: two fixed windows aligned to the minute (the current one and the previous one);
what a key used in the sliding minute is estimated as previous * weight + current, where the weight is the share of
the previous window still inside the sliding minute. Budgets are plain counters of what each app and key spent
this calendar month (UTC). Both live in Redis when ``GENAI_REDIS_URL`` is set (every worker and replica shares
them), in process otherwise. Token limits and budgets are checked before a request (is any left?) and charged
after it with what it really used, as OpenAI does.

Each step costs one Redis round trip: admission is one Lua script (budgets, the requests window's hit, the tokens
window's read, on Redis's clock so that replicas agree) and so is the charge afterwards. ``LocalCounts`` is the
same algorithm in Python. When Redis cannot be reached, the limits and budgets fall back to counts of this process
(logged, counted in the metrics, shown by /readyz) until Redis answers again: no request goes through unchecked,
none fails for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fastapi import Request
from redis.exceptions import RedisError

from errors import RateLimited
from memory.redis_client import Outage, open_redis
from storage.tenants import Caller

log = logging.getLogger(__name__)

HEADERS_STATE_KEY = "ratelimit_headers"
WINDOW_MS = 60_000  # one fixed window: a minute, aligned to the clock's minutes
BUDGET_TTL_SECONDS = 35 * 86400  # a month's counters outlive the month, then Redis drops them

T = TypeVar("T")


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "120ms"."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Window:
    """One limit's counts at a moment: the previous and the current fixed window's, and the milliseconds left of
    the current one (which is also how much of the previous one the sliding minute still covers)."""

    previous: int
    current: int
    left_ms: int

    @property
    def used(self) -> int:
        """previous * weight + current, rounded down (the Lua scripts compute the same)."""
        return self.previous * self.left_ms // WINDOW_MS + self.current

    def remaining(self, limit: int) -> int:
        return max(limit - self.used, 0)


def _reset_in(window: Window) -> float:
    """Seconds until the window frees budget (0 when it is untouched), in whole milliseconds: the weighted previous
    count drops by one every ``WINDOW_MS / previous`` ms, the current count starts to slide out when its window
    ends."""
    resets = []
    if window.previous:
        period = WINDOW_MS / window.previous
        resets.append(window.left_ms % period or period)
    if window.current:
        resets.append(window.left_ms)
    return math.ceil(min(resets, default=0)) / 1000


def _minute(now_ms: int) -> tuple[int, int]:
    """The fixed window ``now_ms`` falls in (minutes since the epoch), and the milliseconds left of it."""
    minute, into = divmod(now_ms, WINDOW_MS)
    return minute, WINDOW_MS - into


@dataclass(frozen=True)
class Admission:
    """What one admission found: which check refused it (None: admitted), the spent budget if that was it (its index
    among those checked, and what was spent), and the counts of the requests and tokens windows for the headers
    (those of the requests window after its hit; none for a limit the key does not have or that was not read)."""

    refused: str | None = None  # "budget", "requests" or "tokens"
    budget: int = 0
    spent: float = 0.0
    requests: Window | None = None
    tokens: Window | None = None


class Counts(Protocol):
    """Where the windows and budgets are counted: in Redis (``RedisCounts``) or in this process (``LocalCounts``).
    ``budgets`` are (counter, budget) pairs to check, ``counters`` those to charge; both carry ``month`` in their
    names, which the in-process counts use to forget last month's."""

    async def admit(
        self, key_id: str, rpm: int, requests: int, tpm: int, budgets: Sequence[tuple[str, float]], month: str
    ) -> Admission: ...

    async def spend(
        self, key_id: str, tpm: int, tokens: int, counters: Sequence[str], cost: float, month: str
    ) -> None: ...

    async def aclose(self) -> None: ...


# Both scripts: the windows of one limit in one hash {m: the current window's minute, c: its count, p: the count
# of the minute before}, expiring two windows after its last change. The time is Redis's, which every replica shares
# (TIME before writes needs Redis >= 5, whose scripts replicate their effects).
_WINDOWS_LUA = f"""
local window_ms = {WINDOW_MS}
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local minute = math.floor(now_ms / window_ms)
local left = (minute + 1) * window_ms - now_ms

local function counts(key)
    local values = redis.call('HMGET', key, 'm', 'p', 'c')
    local m, p, c = tonumber(values[1]), tonumber(values[2]) or 0, tonumber(values[3]) or 0
    if m == minute then return p, c end
    if m == minute - 1 then return c, 0 end
    return 0, 0
end

local function used(p, c)
    return math.floor(p * left / window_ms) + c
end

local function store(key, p, c)
    redis.call('HSET', key, 'm', minute, 'p', p, 'c', c)
    redis.call('PEXPIRE', key, 2 * window_ms)
end
"""

# KEYS: the requests window, the tokens window, then the budget counters to check.
# ARGV: rpm, requests, tpm (0: no such limit), then each counter's budget.
# Returns {verdict, budget index, spent, requests previous, current, tokens previous, current, ms left}.
_ADMIT_LUA = (
    _WINDOWS_LUA
    + """
local rpm, requests, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 3, #KEYS do
    local spent = redis.call('GET', KEYS[i]) or '0'
    if tonumber(spent) >= tonumber(ARGV[i + 1]) then
        return {'budget', i - 2, spent, 0, 0, 0, 0, left}
    end
end
local verdict, rp, rc, tp, tc = 'ok', 0, 0, 0, 0
if rpm > 0 then
    rp, rc = counts(KEYS[1])
    if requests <= rpm - used(rp, rc) then
        rc = rc + requests
        store(KEYS[1], rp, rc)
    else
        verdict = 'requests'
    end
end
if tpm > 0 and verdict == 'ok' then
    tp, tc = counts(KEYS[2])
    if used(tp, tc) >= tpm then verdict = 'tokens' end
end
return {verdict, 0, '0', rp, rc, tp, tc, left}
"""
)

# KEYS: the tokens window, then the budget counters to charge. ARGV: tpm (0: none), tokens, cost, the counters' TTL.
_SPEND_LUA = (
    _WINDOWS_LUA
    + """
for i = 2, #KEYS do
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[3])
    redis.call('EXPIRE', KEYS[i], ARGV[4])
end
local tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and tokens > 0 then
    local p, c = counts(KEYS[1])
    local fits = math.min(tokens, math.max(tpm - used(p, c), 0))
    if fits > 0 then store(KEYS[1], p, c + fits) end
end
return 1
"""
)


class RedisCounts:
    """The windows and budgets in Redis, shared by every worker and replica: one script call per admission and one
    per charge (``EVALSHA``; redis-py loads the script again if Redis restarted without it)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis = open_redis(redis_url)
        self.prefix = prefix
        self._admit = self.redis.register_script(_ADMIT_LUA)
        self._spend = self.redis.register_script(_SPEND_LUA)

    def _windows(self, key_id: str) -> list[str]:
        return [f"{self.prefix}:requests:{key_id}", f"{self.prefix}:tokens:{key_id}"]

    async def admit(
        self, key_id: str, rpm: int, requests: int, tpm: int, budgets: Sequence[tuple[str, float]], month: str
    ) -> Admission:
        if not (rpm or tpm or budgets):
            return Admission()
        keys = self._windows(key_id) + [name for name, _ in budgets]
        args = [rpm, requests, tpm] + [repr(float(budget)) for _, budget in budgets]
        verdict, budget, spent, rp, rc, tp, tc, left = await self._admit(keys=keys, args=args)
        return Admission(
            refused=None if verdict == b"ok" else verdict.decode(),
            budget=budget - 1 if verdict == b"budget" else 0,
            spent=float(spent),
            requests=Window(rp, rc, left) if rpm and verdict != b"budget" else None,
            tokens=Window(tp, tc, left) if tpm and verdict in (b"ok", b"tokens") else None,
        )

    async def spend(self, key_id: str, tpm: int, tokens: int, counters: Sequence[str], cost: float, month: str) -> None:
        if not (counters or (tpm and tokens > 0)):
            return
        keys = self._windows(key_id)[1:] + list(counters)
        await self._spend(keys=keys, args=[tpm, tokens, repr(float(cost)), BUDGET_TTL_SECONDS])

    async def aclose(self) -> None:
        await self.redis.aclose()


class LocalCounts:
    """The windows and budgets in this process (no Redis, or Redis unreachable): the scripts' algorithm in Python.
    One entry per limited key and this month's spending per app and key; ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, tuple[int, int, int]] = {}  # "kind:key id": (minute, previous, current)
        self._month = ""
        self._spent: dict[str, float] = {}

    def _now(self) -> tuple[int, int]:
        return _minute(int(self.clock() * 1000))

    def _counts(self, name: str, minute: int, left: int) -> Window:
        """The window of ``name`` now: one whose minute has passed becomes the previous one, or nothing."""
        stored, previous, current = self._windows.get(name, (minute, 0, 0))
        if stored == minute - 1:
            previous, current = current, 0
        elif stored != minute:
            previous, current = 0, 0
        return Window(previous, current, left)

    def _this_month(self, month: str) -> dict[str, float]:
        if month != self._month:  # a new month: last month's counters are of no more use
            self._month, self._spent = month, {}
        return self._spent

    async def admit(
        self, key_id: str, rpm: int, requests: int, tpm: int, budgets: Sequence[tuple[str, float]], month: str
    ) -> Admission:
        spent = self._this_month(month)
        for index, (name, budget) in enumerate(budgets):
            if spent.get(name, 0.0) >= budget:
                return Admission(refused="budget", budget=index, spent=spent.get(name, 0.0))
        minute, left = self._now()
        admission = Admission()
        if rpm:
            window = self._counts(f"requests:{key_id}", minute, left)
            if requests > rpm - window.used:
                return Admission(refused="requests", requests=window)
            window = Window(window.previous, window.current + requests, left)
            self._windows[f"requests:{key_id}"] = (minute, window.previous, window.current)
            admission = Admission(requests=window)
        if tpm:
            window = self._counts(f"tokens:{key_id}", minute, left)
            refused = "tokens" if window.used >= tpm else None
            admission = Admission(refused=refused, requests=admission.requests, tokens=window)
        return admission

    async def spend(self, key_id: str, tpm: int, tokens: int, counters: Sequence[str], cost: float, month: str) -> None:
        spent = self._this_month(month)
        for name in counters:
            spent[name] = spent.get(name, 0.0) + cost
        if tpm and tokens > 0:
            minute, left = self._now()
            window = self._counts(f"tokens:{key_id}", minute, left)
            fits = min(tokens, window.remaining(tpm))
            if fits:
                self._windows[f"tokens:{key_id}"] = (minute, window.previous, window.current + fits)

    async def aclose(self) -> None:
        pass


def _month_of(moment: dt.datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def _next_month(moment: dt.datetime) -> dt.datetime:
    """When a month's budgets reset: the first of the next month, 00:00 UTC."""
    year, month = divmod(moment.year * 12 + moment.month, 12)
    return dt.datetime(year, month + 1, 1, tzinfo=dt.UTC)


def _amount(value: float) -> str:
    """A sum of money for a message: "0.25", "1000", "0.000125" (no exponent, no trailing zeros)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


class RateLimiter:
    def __init__(
        self,
        redis_url: str | None,
        prefix: str = "genai-ratelimit",
        on_reject: Callable[[str], None] | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.shared = redis_url is not None  # counted in Redis, for every worker and replica
        self.prefix = prefix
        self.counts: Counts = RedisCounts(redis_url, prefix) if redis_url else LocalCounts()
        self.local_counts = LocalCounts()  # what this process counts while Redis is unreachable
        self.outage = Outage()
        self.on_reject = on_reject  # called with "requests", "tokens" or "budget", for metrics
        self.on_fallback = on_fallback  # called with "ratelimits" for a request counted in process (Redis down)

    def _counters(self, caller: Caller, month: str) -> tuple[str, str]:
        """The budget counters of the caller's app and key in ``month``."""
        budget = f"{self.prefix}:budget:{month}"
        return f"{budget}:app:{caller.app_id}", f"{budget}:key:{caller.key_id}"

    async def admit(self, request: Request, caller: Caller, requests: int = 1, *, chat: bool = False) -> None:
        """Count ``requests`` (a batch counts each of its inputs) against the key's limits, or raise 429
        with Retry-After. A count larger than what is left is refused whole and counts nothing. A ``chat``
        request (the only kind that costs money, so that a key whose budget is spent can still list models and
        read its usage) is first checked against the monthly budgets (429 ``insufficient_quota``, counting
        nothing). While Redis is unreachable, this process's own counts decide."""
        moment = dt.datetime.now(dt.UTC)
        month = _month_of(moment)
        owners = []
        if chat:
            app_counter, key_counter = self._counters(caller, month)
            candidates = (
                (f"app '{caller.app_name}'", app_counter, caller.app_budget),
                (f"key {caller.key_prefix}...", key_counter, caller.key_budget),
            )
            owners = [(owner, counter, budget) for owner, counter, budget in candidates if budget is not None]
        budgets = [(counter, budget) for _, counter, budget in owners]
        rpm, tpm = caller.rpm or 0, caller.tpm or 0
        admission = await self._counted(lambda counts: counts.admit(caller.key_id, rpm, requests, tpm, budgets, month))

        if admission.refused == "budget":
            owner, _, budget = owners[admission.budget]
            error = RateLimited(
                f"You exceeded the monthly budget of {owner}: {_amount(admission.spent)} spent of {_amount(budget)} "
                f"this month (UTC). It resets on {_next_month(moment):%Y-%m-%d} at 00:00 UTC; "
                "until then, ask the platform's admin to raise it.",
                code="insufficient_quota",
            )
            error.type = "insufficient_quota"  # OpenAI's error for an exhausted quota
            if self.on_reject is not None:
                self.on_reject("budget")
            raise error
        headers: dict[str, str] = {}
        for kind, limit, window in (("requests", rpm, admission.requests), ("tokens", tpm, admission.tokens)):
            if window is None:
                continue
            reset = _reset_in(window)
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining(limit))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(reset)
            if admission.refused == kind:
                self._reject(kind, caller, reset, headers)
        request.scope.setdefault("state", {})[HEADERS_STATE_KEY] = headers

    async def spend(self, caller: Caller, *, tokens: int, cost: float = 0.0) -> None:
        """Charge what a finished request used: its cost to this month's spending of its app and key (whether
        they have a budget or not: one set later this month counts what was spent already), its tokens to the
        key's token limit (what fits: a charge larger than what is left takes what is left)."""
        month = _month_of(dt.datetime.now(dt.UTC))
        counters = self._counters(caller, month) if cost > 0 and caller.app_id is not None else ()
        tpm = caller.tpm or 0
        await self._counted(lambda counts: counts.spend(caller.key_id, tpm, tokens, counters, cost, month))

    async def _counted(self, action: Callable[[Counts], Awaitable[T]]) -> T:
        """``action(counts)`` on the shared counts, or on this process's while Redis is unreachable
        (after a failure, Redis is tried again ``Outage.retry_after`` seconds later)."""
        if not self.shared:
            return await action(self.counts)
        if not self.outage.skip:
            try:
                result = await action(self.counts)
            except RedisError as exc:
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
                return result
        if self.on_fallback is not None:
            self.on_fallback("ratelimits")
        return await action(self.local_counts)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.counts.aclose()

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
