"""The rate limiter's counting itself, without a server: one Redis round trip for admission and one for the charge,
limiters of several workers sharing one count in Redis (exactly, concurrent requests too), the sliding window's
weighting in process on a fixed clock, and the same outcomes from both backends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.connection import Connection
from starlette.requests import Request

from chains.local_model_process import free_port
from errors import RateLimited
from server.gateway.rate_limits import HEADERS_STATE_KEY, LocalCounts, RateLimiter, Window, _reset_in
from storage.tenants import Caller
from tests.conftest import clear_of_window_edge

MINUTE = 1_700_000_040.0  # the start of an epoch minute (28_333_334 * 60)


def caller(**limits) -> Caller:
    return Caller(
        key_id=f"key-{uuid.uuid4().hex}",
        key_prefix="sk-test12345",
        is_admin=False,
        app_id=f"app-{uuid.uuid4().hex}",
        app_name="tests",
        **limits,
    )


def request() -> Request:
    return Request({"type": "http"})


async def admit(limiter: RateLimiter, who: Caller, requests: int = 1, chat: bool = False) -> dict[str, str]:
    """Admit one request; the x-ratelimit-* headers it would carry."""
    scope = request()
    await limiter.admit(scope, who, requests, chat=chat)
    return scope.scope["state"][HEADERS_STATE_KEY]


async def refusal(limiter: RateLimiter, who: Caller, requests: int = 1, chat: bool = False) -> RateLimited:
    with pytest.raises(RateLimited) as raised:
        await admit(limiter, who, requests, chat)
    return raised.value


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[RateLimiter]:
    """A limiter counting in Redis, under a prefix of its own (other tests may share the database)."""
    limiter = RateLimiter(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    yield limiter
    await limiter.aclose()


class CountingConnection(Connection):
    """A redis-py connection that counts its round trips (a pipeline would be one) and names their commands."""

    round_trips = 0
    commands: list[str] = []

    async def send_command(self, *args, **kwargs) -> None:
        CountingConnection.commands.append(str(args[0]).upper())
        await super().send_command(*args, **kwargs)

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        await super().send_packed_command(command, check_health)


# --------------------------------------------------------------------------- Redis: round trips, sharing


async def test_admission_and_charge_cost_one_round_trip_each(shared):
    shared.counts.redis.connection_pool.connection_class = CountingConnection
    who = caller(rpm=100, tpm=10_000, app_budget=100.0, key_budget=50.0)
    await admit(shared, who, chat=True)  # connects and loads the scripts
    await shared.spend(who, tokens=10, cost=0.5)

    for _ in range(5):
        CountingConnection.round_trips, CountingConnection.commands = 0, []
        headers = await admit(shared, who, chat=True)  # both budgets, the requests hit, the tokens read
        assert (CountingConnection.round_trips, CountingConnection.commands) == (1, ["EVALSHA"])
        assert set(headers) == {
            f"x-ratelimit-{field}-{kind}"
            for field in ("limit", "remaining", "reset")
            for kind in ("requests", "tokens")
        }
        CountingConnection.round_trips, CountingConnection.commands = 0, []
        await shared.spend(who, tokens=10, cost=0.5)  # both budget counters and the tokens window
        assert (CountingConnection.round_trips, CountingConnection.commands) == (1, ["EVALSHA"])

    # A key without limits or budgets costs none.
    CountingConnection.round_trips = 0
    free = caller()
    assert await admit(shared, free, chat=True) == {}
    await shared.spend(free, tokens=10)
    assert CountingConnection.round_trips == 0


async def test_two_workers_share_one_count_in_redis(redis_url):
    prefix = f"test-{uuid.uuid4().hex}"
    first, second = RateLimiter(redis_url, prefix=prefix), RateLimiter(redis_url, prefix=prefix)
    try:
        clear_of_window_edge()
        who = caller(rpm=5)
        remaining = [(await admit(limiter, who))["x-ratelimit-remaining-requests"] for limiter in (first, second) * 2]
        remaining.append((await admit(first, who))["x-ratelimit-remaining-requests"])
        assert remaining == ["4", "3", "2", "1", "0"]
        error = await refusal(second, who)
        assert error.type == "requests" and error.headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(error.headers["retry-after"]) <= 60
        # One hash per limit and key, which Redis drops two windows after its last change.
        ttl = await first.counts.redis.pttl(f"{prefix}:requests:{who.key_id}")
        assert 0 < ttl <= 120_000

        # Concurrent admissions through both: exactly the limit, none lost or doubled.
        busy = caller(rpm=7)
        outcomes = await asyncio.gather(
            *(admit(limiter, busy) for limiter in (first, second) * 10), return_exceptions=True
        )
        assert sum(isinstance(outcome, dict) for outcome in outcomes) == 7
        assert all(isinstance(outcome, (dict, RateLimited)) for outcome in outcomes), outcomes

        # Tokens charged through one are seen by the other; a charge takes at most what is left.
        spender = caller(tpm=100, key_budget=1.0)
        await first.spend(spender, tokens=60, cost=0.5)
        assert (await admit(second, spender))["x-ratelimit-remaining-tokens"] == "40"
        await second.spend(spender, tokens=60, cost=0.5)
        error = await refusal(first, spender)
        assert error.type == "tokens" and error.headers["x-ratelimit-remaining-tokens"] == "0"
        # And so is the budget: 1.0 of 1.0 spent.
        error = await refusal(first, spender, chat=True)
        assert error.code == "insufficient_quota" and "1 spent of 1 this month" in error.message
    finally:
        await first.aclose()
        await second.aclose()


# --------------------------------------------------------------------------- in process: the sliding window


def test_window_weighting_and_reset():
    assert Window(previous=10, current=3, left_ms=30_000).used == 8  # 10 * 0.5 + 3
    assert Window(previous=10, current=3, left_ms=45_000).used == 10  # 7.5 rounds down
    assert Window(previous=10, current=3, left_ms=45_000).remaining(12) == 2
    assert Window(previous=10, current=3, left_ms=45_000).remaining(5) == 0
    assert _reset_in(Window(0, 0, 30_000)) == 0  # nothing counted: nothing to wait for
    assert _reset_in(Window(0, 2, 30_000)) == 30  # the current window ends
    assert _reset_in(Window(10, 2, 45_000)) == 3  # the weighted previous count drops by one every 6 s
    assert _reset_in(Window(10, 0, 30_000)) == 6  # ... at 30 s it just dropped: the next drop is 6 s away
    assert _reset_in(Window(100_000, 0, 30_000)) == 0.001  # whole milliseconds, never 0 while counted


async def test_the_in_process_sliding_window_on_a_fixed_clock():
    now = [MINUTE]
    limiter = RateLimiter(None)
    limiter.counts = LocalCounts(clock=lambda: now[0])
    rejected: list[str] = []
    limiter.on_reject = rejected.append
    who = caller(rpm=10, tpm=100)

    headers = [await admit(limiter, who) for _ in range(10)]
    assert [h["x-ratelimit-remaining-requests"] for h in headers] == [str(n) for n in range(9, -1, -1)]
    assert headers[0]["x-ratelimit-reset-requests"] == "1m0s"  # the window just opened
    error = await refusal(limiter, who)
    assert error.headers["retry-after"] == "60" and "Please try again in 1m0s." in error.message

    await limiter.spend(who, tokens=150)  # 100 fit
    assert (await refusal(limiter, who)).type == "requests"
    assert rejected == ["requests", "requests"]

    # 15 s into the next minute: 45 s of the previous one are still inside the sliding minute (weight 0.75).
    now[0] = MINUTE + 75
    headers = await admit(limiter, who)
    assert headers["x-ratelimit-remaining-requests"] == "2"  # 10 - floor(7.5) - 1
    assert headers["x-ratelimit-reset-requests"] == "3s"  # 45 s % (60 s / 10)
    assert headers["x-ratelimit-remaining-tokens"] == "25"  # 100 - floor(75)
    # A batch larger than what is left is refused whole and counts nothing.
    error = await refusal(limiter, who, requests=3)
    assert error.type == "requests" and error.headers["x-ratelimit-remaining-requests"] == "2"
    assert "x-ratelimit-limit-tokens" not in error.headers  # refused before the tokens were read
    assert (await admit(limiter, who, requests=2))["x-ratelimit-remaining-requests"] == "0"

    # Halfway: weight 0.5.
    now[0] = MINUTE + 90
    headers = await admit(limiter, who)
    assert headers["x-ratelimit-remaining-requests"] == "1"  # 10 - 5 - 3 - 1
    assert headers["x-ratelimit-remaining-tokens"] == "50"
    await limiter.spend(who, tokens=80)  # 50 fit
    error = await refusal(limiter, who)
    assert error.type == "tokens" and error.headers["x-ratelimit-remaining-tokens"] == "0"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"  # counted before the tokens refused it

    # The next minute: what was current slides out (weight 0.75 of 5 requests, of 50 tokens); two minutes: none.
    now[0] = MINUTE + 135
    headers = await admit(limiter, who)
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-tokens"]) == ("6", "63")
    now[0] = MINUTE + 240
    headers = await admit(limiter, who)
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-tokens"]) == ("9", "100")
    assert headers["x-ratelimit-reset-tokens"] == "0ms"


# --------------------------------------------------------------------------- both backends alike


@pytest.fixture(params=["memory", "redis"])
async def limiter(request) -> AsyncIterator[RateLimiter]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    limiter = RateLimiter(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    yield limiter
    await limiter.aclose()


async def test_budgets_then_requests_then_tokens(limiter):
    rejected: list[str] = []
    limiter.on_reject = rejected.append
    clear_of_window_edge()
    who = caller(rpm=3, tpm=50, key_budget=1.0)

    headers = await admit(limiter, who, chat=True)
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-tokens"]) == ("2", "50")
    await limiter.spend(who, tokens=30, cost=0.5)
    headers = await admit(limiter, who, chat=True)
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-tokens"]) == ("1", "20")
    await limiter.spend(who, tokens=30, cost=0.5)  # 20 fit

    error = await refusal(limiter, who, chat=True)  # the budget first, counting nothing
    assert (error.type, error.code) == ("insufficient_quota", "insufficient_quota")
    assert f"monthly budget of key {who.key_prefix}...: 1 spent of 1 this month (UTC)" in error.message
    assert "retry-after" not in (error.headers or {})
    error = await refusal(limiter, who)  # the last request of the minute, counted, but no tokens left
    assert error.type == "tokens" and error.headers["x-ratelimit-remaining-requests"] == "0"
    error = await refusal(limiter, who)
    assert error.type == "requests" and f"limit {who.rpm}" in error.message
    assert rejected == ["budget", "tokens", "requests"]


async def test_an_unreachable_redis_falls_back_to_this_process():
    fallbacks: list[str] = []
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", on_fallback=fallbacks.append)
    try:
        who = caller(rpm=2)
        assert [(await admit(limiter, who))["x-ratelimit-remaining-requests"] for _ in range(2)] == ["1", "0"]
        assert (await refusal(limiter, who)).type == "requests"
        assert limiter.outage.since is not None and fallbacks == ["ratelimits"] * 3
    finally:
        await limiter.aclose()
