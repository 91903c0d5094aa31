"""Redis as every part of the platform uses it (memory, the exact-match cache, rate limits, budgets): short timeouts,
so that a Redis that hangs cannot hang a request, and one retry on a fresh connection, so that the first call after
a restart of Redis does not fail on a pooled connection that died with it."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Passed to redis-py's client (also through the ``limits`` library's storage).
REDIS_OPTIONS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, "health_check_interval": 10}
# After a failure, a part falls back for this long before it tries Redis again (no 2 s timeout per request).
RETRY_AFTER_SECONDS = 5.0


def redis_options() -> dict:
    """Keyword arguments for a redis-py client (also given through the ``limits`` library's storage): the timeouts,
    and one retry on a fresh connection (every pooled connection died with a restarted Redis)."""
    return {
        **REDIS_OPTIONS,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def open_redis(url: str) -> Redis:
    return Redis.from_url(url, **redis_options())


class Outage:
    """Whether a part should skip Redis for now: ``down()`` after a failure, ``up()`` after a success. ``since`` is
    when the current outage began (None while Redis answers)."""

    def __init__(self, retry_after: float = RETRY_AFTER_SECONDS) -> None:
        self.retry_after = retry_after
        self.since: float | None = None
        self._skip_until = 0.0

    @property
    def skip(self) -> bool:
        return time.monotonic() < self._skip_until

    def down(self) -> bool:
        """Record a failure; True when it begins an outage (log it once, not per request)."""
        self._skip_until = time.monotonic() + self.retry_after
        began = self.since is None
        if began:
            self.since = time.time()
        return began

    def up(self) -> bool:
        """Record a success; True when it ends an outage."""
        ended = self.since is not None
        self.since = None
        self._skip_until = 0.0
        return ended
