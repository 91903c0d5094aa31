"""Routes that fail over, against deployments a test switches between behaving and failing: least in-flight
balancing, retries on another deployment, circuit breakers (also shared through a real Redis), fallback routes
(also for a prompt too long for the route), the route's timeouts, and which route and deployment answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from redis.asyncio import Redis

from chains.circuit_breaker import CircuitBreaker
from chains.model_routes import Deployment, ModelRoute
from storage.tables import Usage
from tests.controlled_upstream import ControlledUpstream, controlled_upstream
from tests.test_errors import assert_error


@pytest.fixture
def a() -> Iterator[ControlledUpstream]:
    with controlled_upstream("a") as upstream:
        yield upstream


@pytest.fixture
def b() -> Iterator[ControlledUpstream]:
    with controlled_upstream("b") as upstream:
        yield upstream


def pool_route(*upstreams: ControlledUpstream, **extra) -> ModelRoute:
    values = {
        "name": "pool",
        "deployments": [Deployment(name=u.name, base_url=u.url) for u in upstreams],
        "max_retries": 1,
        "retry_backoff": 0.05,
        "first_byte_timeout": 1.0,
        "timeout": 10,
        "breaker_failures": 2,
        "breaker_cooldown": 1.5,
        **extra,
    }
    return ModelRoute(**values)


def ask(http: httpx.Client, model: str = "pool", content: str = "hi", **extra) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}], **extra}
    )


def metric(http: httpx.Client, prefix: str) -> float:
    """The sum of the samples whose line starts with ``prefix`` on /metrics."""
    text = http.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_requests_spread_over_deployments_by_least_in_flight(live_server, a, b):
    a.delay = b.delay = 0.3
    server = live_server(model_routes=[pool_route(a, b)])
    with ThreadPoolExecutor(8) as pool, server.http() as http:
        responses = list(pool.map(lambda _: ask(http), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert a.requests + b.requests == 16
    # Least in flight: neither deployment takes much more than its share, and each answered in turn.
    assert 5 <= a.requests <= 11 and 5 <= b.requests <= 11
    assert {r.headers["x-deployment"] for r in responses} == {"a", "b"}
    served = {r["deployment"] for r in server.rows(Usage.__table__)}
    assert served == {"a", "b"}


def test_a_failing_deployment_is_retried_elsewhere_then_skipped_by_its_breaker(live_server, a, b):
    a.set("fail")
    server = live_server(model_routes=[pool_route(a, b)])
    with server.http() as http:
        responses = [ask(http) for _ in range(8)]
        assert [r.status_code for r in responses] == [200] * 8
        assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {"Answered by b."}
        # Two failures open a's breaker: the later requests go straight to b.
        assert a.requests == 2
        assert metric(http, 'genai_circuit_breaker_state{deployment="a",route="pool"}') == 2
        assert metric(http, 'genai_upstream_retries_total{deployment="b",reason="500",route="pool"}') == 2
        # After the cool-down a probe goes to a; it is healthy again, its breaker closes, and it takes its share.
        a.set("ok")
        time.sleep(1.6)
        for _ in range(6):
            assert ask(http).status_code == 200
        assert a.requests >= 4
        assert metric(http, 'genai_circuit_breaker_state{deployment="a",route="pool"}') == 0
    usage = server.rows(Usage.__table__)
    assert [row["status"] for row in usage] == ["ok"] * 14


def test_a_hung_deployment_costs_a_client_its_first_byte_timeout_once(live_server, a, b):
    a.set("hang")
    server = live_server(model_routes=[pool_route(a, b, breaker_failures=1, breaker_cooldown=60)])
    with server.http() as http:
        started = time.monotonic()
        first = ask(http)
        waited = time.monotonic() - started
        assert first.status_code == 200 and first.headers["x-deployment"] == "b"
        assert waited < 5  # at most a's first-byte timeout (1 s), when the first try went to a
        started = time.monotonic()
        assert all(ask(http).headers["x-deployment"] == "b" for _ in range(5))
        assert time.monotonic() - started < 3  # a's breaker is open: nobody waits for it any more


def test_when_every_deployment_hangs_the_client_learns_the_real_wait(live_server, a, b):
    a.set("hang")
    b.set("hang")
    server = live_server(model_routes=[pool_route(a, b, breaker_failures=5)])
    with server.http() as http:
        started = time.monotonic()
        error = assert_error(ask(http), 504, code="timeout")
        waited = time.monotonic() - started
    assert 1.9 < waited < 6
    assert error["message"].startswith("The model `pool` did not answer within 1 s (2 attempts, ")
    assert [row["status"] for row in server.rows(Usage.__table__)] == ["timeout"]


def test_the_route_time_limit_bounds_the_whole_call(live_server, a):
    a.delay = 5
    route = pool_route(a, first_byte_timeout=30, timeout=1.5)
    server = live_server(model_routes=[route])
    with server.http() as http:
        started = time.monotonic()
        error = assert_error(ask(http), 504, code="timeout")
        assert time.monotonic() - started < 4
    assert error["message"] == "The model `pool` did not finish within its time limit of 1.5 s."


def test_a_failing_route_falls_back_to_the_next(live_server, a, b):
    a.set("fail")
    routes = [
        pool_route(a, name="primary", fallbacks=["backup"], breaker_failures=50),
        pool_route(b, name="backup"),
    ]
    server = live_server(model_routes=routes)
    with server.http() as http:
        answer = ask(http, "primary")
        assert answer.status_code == 200
        assert answer.json()["model"] == "backup" and answer.headers["x-deployment"] == "b"
        assert a.requests == 2  # its attempt and its retry, then the fallback
        assert metric(http, 'genai_route_fallbacks_total{fallback="backup",reason="500",route="primary"}') == 1
        # Streamed too: the fallback is chosen before the first byte, and the chunks name it.
        with http.stream("POST", "/v1/chat/completions", json={
            "model": "primary", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        }) as response:  # fmt: skip
            assert response.status_code == 200 and response.headers["x-deployment"] == "b"
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
        assert all('"model":"backup"' in line.replace(" ", "") for line in lines)
    assert [(row["model"], row["deployment"]) for row in server.rows(Usage.__table__)] == [("backup", "b")] * 2


def test_every_route_failing_says_which_were_tried(live_server, a, b):
    a.set("fail")
    b.set("fail")
    routes = [pool_route(a, name="primary", fallbacks=["backup"]), pool_route(b, name="backup")]
    server = live_server(model_routes=routes)
    with server.http() as http:
        error = assert_error(ask(http, "primary"), 502, code="upstream_error")
    assert error["message"].endswith("Routes tried: primary, backup.")


def test_a_prompt_too_long_for_the_route_goes_to_a_fallback_with_a_bigger_window(live_server, a, b):
    routes = [
        pool_route(a, name="small", context_window=300, max_output_tokens=100, fallbacks=["big"]),
        pool_route(b, name="big", context_window=4000, max_output_tokens=100),
    ]
    server = live_server(model_routes=routes)
    with server.http() as http:
        short = ask(http, "small", "a short question")
        assert short.json()["model"] == "small"
        long = ask(http, "small", "word " * 600)
        assert long.status_code == 200 and long.json()["model"] == "big"
        assert_error(ask(http, "small", "word " * 6000), 400, code="context_length_exceeded")
    assert a.requests == 1 and b.requests == 1


def test_a_long_retry_after_takes_the_deployment_out_and_reaches_the_client(live_server, a, b):
    a.set("busy", retry_after="30")
    server = live_server(model_routes=[pool_route(a, b)])
    with server.http() as http:
        assert all(ask(http).headers["x-deployment"] == "b" for _ in range(4))
        assert a.requests <= 1  # paused for 30 s after its 429, without opening its breaker
        b.set("busy", retry_after="20")
        answer = ask(http)
        assert_error(answer, 503, code="service_unavailable")
        assert 15 <= int(answer.headers["retry-after"]) <= 20
    assert metric(server.http(), 'genai_circuit_breaker_state{deployment="a",route="pool"}') == 0


def test_a_request_the_upstream_refuses_is_not_retried(live_server, a, b):
    a.set("reject")
    b.set("reject")
    server = live_server(model_routes=[pool_route(a, b)])
    with server.http() as http:
        error = assert_error(ask(http), 400)
    assert "rejected the request" in error["message"]
    assert a.requests + b.requests == 1


def test_route_configuration_is_checked():
    from pydantic import ValidationError

    from chains.model_routes import ModelRegistry

    with pytest.raises(ValidationError, match="needs a `base_url` or `deployments`"):
        ModelRoute(name="x")
    with pytest.raises(ValidationError, match="distinct names"):
        ModelRoute(name="x", deployments=[{"base_url": "http://h:1/v1"}, {"base_url": "http://h:1/v1"}])
    with pytest.raises(ValidationError, match="cannot fall back to itself"):
        ModelRoute(name="x", base_url="http://h:1/v1", fallbacks=["x"])
    with pytest.raises(ValueError, match="unknown routes: nowhere"):
        ModelRegistry([ModelRoute(name="x", base_url="http://h:1/v1", fallbacks=["nowhere"])])
    route = ModelRoute(name="x", base_url="http://h:1/v1", api_key="sk-route", deployments=[
        {"base_url": "http://h:2/v1"}, {"name": "own", "base_url": "http://h:3/v1", "api_key_env": "OWN_KEY"},
    ])  # fmt: skip
    first, second = route.deployment_list
    assert (first.name, first.resolve_api_key(), first.model) == ("h:2", "sk-route", "x")
    assert (second.name, second.api_key, second.api_key_env) == ("own", None, "OWN_KEY")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_once_and_closes():
    clock = Clock()
    states: list[str] = []
    breaker = CircuitBreaker("r/d", threshold=3, cooldown=10, clock=clock, on_change=states.append)

    async def scenario() -> None:
        for _ in range(2):
            assert await breaker.allows()
            await breaker.record(False)
        assert breaker.state == "closed"
        await breaker.record(True)  # a success in between starts the count again
        for _ in range(3):
            await breaker.record(False)
        assert breaker.state == "open" and not await breaker.allows()
        clock.now += 10
        assert await breaker.allows()  # the probe
        assert not await breaker.allows()  # one at a time
        await breaker.record(False)  # the probe failed: open again
        assert breaker.state == "open" and breaker.retry_after() == 10
        clock.now += 10
        assert await breaker.allows()
        await breaker.record(None)  # the client left: the probe proved nothing, another may go
        assert await breaker.allows()
        await breaker.record(True)
        assert breaker.state == "closed" and await breaker.allows()

    asyncio.run(scenario())
    assert states == ["open", "half_open", "open", "half_open", "closed"]


def test_breaker_state_is_shared_through_redis(redis_url):
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        key = f"test/{time.time_ns()}"
        one = CircuitBreaker(key, threshold=2, cooldown=30)
        other = CircuitBreaker(key, threshold=2, cooldown=30)
        one.shared = other.shared = redis
        try:
            await one.record(False)
            await other.record(False)  # the second failure, in another worker: it opens the breaker for both
            assert other.state == "open"
            one._synced_at = float("-inf")  # its once-a-second read is due
            assert not await one.allows() and one.state == "open"
            await other.record(True)
            one._synced_at = float("-inf")
            assert await one.allows() and one.state == "closed"
        finally:
            await redis.delete(f"genai:breaker:{key}")
            await redis.aclose()

    asyncio.run(scenario())


def test_breakers_keep_working_without_redis():
    async def scenario() -> None:
        dead = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
        breaker = CircuitBreaker("r/d", threshold=1, cooldown=30)
        breaker.shared = dead
        await breaker.record(False)
        assert breaker.state == "open" and not await breaker.allows()
        await dead.aclose()

    asyncio.run(scenario())


def test_deployments_report_readiness_one_by_one(live_server, a, b):
    a.set("fail")
    server = live_server(model_routes=[pool_route(a, b)])
    with server.http() as http:
        ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    checks = ready.json()["checks"]
    assert checks["model:pool deployment:b"] == "ok"
    assert "fails over to its other deployments" in checks["model:pool deployment:a"]
