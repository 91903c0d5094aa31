"""A circuit breaker per model deployment: stop sending requests to a deployment that keeps failing.

Closed (requests go) -> open after ``threshold`` consecutive failures (requests skip it for ``cooldown`` seconds,
so they fail over at once instead of waiting out its timeouts) -> half-open (one request probes it) -> closed when
the probe succeeds, open again when it fails.

With Redis configured the failure count and the time the breaker stays open are shared by every worker and
replica (a hash per deployment); each worker reads them at most once a second, so the shared state costs no
round trip on most requests. Without Redis, or while it is down, each worker keeps its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from redis.asyncio import Redis

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]

# How stale a worker's copy of the shared state may be.
SYNC_SECONDS = 1.0
# The shared state of a deployment that stopped failing long ago is dropped.
SHARED_TTL_SECONDS = 3600


class CircuitBreaker:
    def __init__(
        self,
        key: str,
        *,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.key = key
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.on_change = on_change
        self.shared: Redis | None = None
        self.failures = 0
        self.open_until = 0.0  # wall clock (shared between machines); 0: never opened since the last success
        self._probing = False
        self._synced_at = float("-inf")
        self._reported: State = "closed"

    @property
    def redis_key(self) -> str:
        return f"genai:breaker:{self.key}"

    @property
    def state(self) -> State:
        if not self.open_until:
            return "closed"
        return "open" if self.clock() < self.open_until else "half_open"

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        return max(self.open_until - self.clock(), 0.0)

    async def allows(self) -> bool:
        """Whether a request may go to the deployment now; a half-open breaker lets one probe through at a time
        (its caller must report it with ``record``)."""
        await self._sync()
        state = self.state
        self._report(state)
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    async def record(self, ok: bool | None) -> None:
        """A request's outcome: True succeeded, False failed (the deployment's fault), None says nothing of the
        deployment (the client left, the request was refused as invalid)."""
        self._probing = False
        if ok is None:
            return
        if ok:
            if self.failures or self.open_until:
                self.failures, self.open_until = 0, 0.0
                await self._shared(lambda redis: redis.delete(self.redis_key))
        else:
            half_open = self.state == "half_open"
            self.failures += 1
            counted = await self._shared(self._count_failure)
            if counted is not None:
                self.failures = max(self.failures, counted)
            if half_open or self.failures >= self.threshold:
                self.open_until = self.clock() + self.cooldown
                await self._shared(lambda redis: redis.hset(self.redis_key, "open_until", self.open_until))
        self._report(self.state)

    async def _count_failure(self, redis: Redis) -> int:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.redis_key, "failures", 1)
            pipe.expire(self.redis_key, SHARED_TTL_SECONDS)
            count, _ = await pipe.execute()
        return int(count)

    async def _sync(self) -> None:
        if self.shared is None or time.monotonic() - self._synced_at < SYNC_SECONDS:
            return
        self._synced_at = time.monotonic()
        values = await self._shared(lambda redis: redis.hmget(self.redis_key, "failures", "open_until"))
        if values is not None:
            failures, open_until = values
            self.failures = int(failures or 0)
            self.open_until = float(open_until or 0.0)

    async def _shared(self, operation):
        """``operation`` on the shared state; None when there is none or Redis fails (the local state holds)."""
        if self.shared is None:
            return None
        try:
            return await operation(self.shared)
        except Exception as exc:  # Redis down: this worker decides alone until it is back
            log.debug("circuit breaker %s: shared state unavailable: %s", self.key, exc)
            return None

    def _report(self, state: State) -> None:
        if state != self._reported:
            self._reported = state
            if self.on_change is not None:
                self.on_change(state)
