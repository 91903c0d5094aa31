"""Redis stopped and started again under a live server (a redis-server the test runs on its own port): no 500, no
request let through unchecked, memory read from the database and whole again once Redis is back, /readyz degraded
rather than failing, the fallbacks counted; the first requests after Redis returns use it again."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_sync

from chains.local_model_process import free_port
from tests.scripted_upstream import ScriptedUpstream, scripted_route, serve_scripted_upstream

pytestmark = pytest.mark.slow  # a redis-server of its own, stopped and started


class RedisProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis_sync.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis_sync.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


def user_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def test_a_redis_outage_degrades_and_recovers(live_server, own_redis, scripted):
    server = live_server(model_routes=[scripted_route("scripted", scripted)], redis_url=own_redis.url)
    # Try Redis again soon after a failure (5 s in production), so that the test need not wait.
    server.services.limiter.outage.retry_after = server.services.memory.outage.retry_after = 0.2
    key = server.create_key("tests", rpm=6)

    def turn(http, text: str, conversation: str = "new"):
        body = {"model": "scripted", "messages": [{"role": "user", "content": text}], "conversation_id": conversation}
        return http.post("/v1/chat/completions", json=body)

    with server.http(key=key) as http:
        first = turn(http, "one")
        assert first.status_code == 200
        conversation = first.json()["conversation_id"]
        server.settle()

        own_redis.stop()
        during = turn(http, "two", conversation)
        assert during.status_code == 200, during.text
        assert user_texts(scripted.requests[-1]) == ["one", "two"]  # memory read from the database
        fresh = turn(http, "elsewhere")
        assert fresh.status_code == 200 and fresh.json()["conversation_id"]  # a new conversation, id returned
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "degraded: rate limits per process" in ready.json()["checks"]["redis"]
        # Limits still hold, counted in this process since the outage began: 2 requests of rpm 6 so far.
        assert [http.get("/v1/models").status_code for _ in range(5)] == [200, 200, 200, 200, 429]

    with server.http() as anonymous:
        text = anonymous.get("/metrics").text
    assert 'genai_redis_fallbacks_total{part="memory"}' in text
    assert 'genai_redis_fallbacks_total{part="ratelimits"}' in text

    own_redis.start()  # empty: its lists are gone, and so are the counts of the outage
    time.sleep(0.3)
    other = server.create_key("tests", rpm=100)
    with server.http(key=other) as http:
        after = turn(http, "three", conversation)
        assert after.status_code == 200, after.text
        assert user_texts(scripted.requests[-1]) == ["one", "two", "three"]  # nothing lost in the outage
        server.settle()
        assert http.get("/readyz").json()["status"] == "ok"
    stored = redis_sync.Redis.from_url(own_redis.url)
    assert any(name.startswith(b"genai-ratelimit") for name in stored.keys())  # limits shared again


def test_a_list_that_missed_turns_in_an_outage_is_not_read_back(live_server, own_redis, scripted):
    """Redis down only for the append (the list survives, one turn short): when Redis answers again, the list is
    dropped and rebuilt from the database rather than read without the turn."""
    server = live_server(model_routes=[scripted_route("scripted", scripted)], redis_url=own_redis.url)
    memory = server.services.memory
    memory.outage.retry_after = 0.2
    client = server.openai()
    first = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "one"}], extra_body={"conversation_id": "new"}
    )
    conversation = first.model_extra["conversation_id"]
    server.settle()
    stored = redis_sync.Redis.from_url(own_redis.url)
    assert stored.llen(memory.key(conversation)) == 2
    memory.outage.down()  # as if Redis had just failed: the next turn is read from and kept in the database only
    client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "two"}], extra_body={"conversation_id": conversation}
    )
    assert conversation in memory.unsynced and stored.llen(memory.key(conversation)) == 2  # one turn short
    time.sleep(0.3)
    client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "three"}], extra_body={"conversation_id": conversation}
    )
    assert user_texts(scripted.requests[-1]) == ["one", "two", "three"]
    assert memory.unsynced == set()


def test_redis_dying_during_the_model_call_neither_fails_nor_doubles_the_turn(live_server, own_redis):
    """The case that once answered 500 after committing the turn: the client now gets its answer, the turn is
    stored once, and a retry with the same idempotency key gets the stored reply."""
    from chains.model_routes import ModelRoute
    from storage.tables import Message
    from tests.controlled_upstream import controlled_upstream

    with controlled_upstream("slow") as upstream:
        route = ModelRoute(name="m", base_url=upstream.url, max_retries=0, timeout=20)
        server = live_server(model_routes=[route], redis_url=own_redis.url)
        server.services.limiter.outage.retry_after = server.services.memory.outage.retry_after = 0.2
        key = server.create_key("tests", rpm=100)
        with server.http(key=key) as http:
            first = http.post("/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "one"}], "conversation_id": "new",
            })  # fmt: skip
            conversation = first.json()["conversation_id"]
            upstream.delay = 1.5
            body = {"model": "m", "messages": [{"role": "user", "content": "two"}], "conversation_id": conversation}
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(http.post, "/v1/chat/completions", json=body, headers={"Idempotency-Key": "t2"})
                time.sleep(0.7)  # the model is answering
                own_redis.stop()
                answer = pending.result()
            assert answer.status_code == 200, answer.text
            upstream.delay = 0
            retry = http.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": "t2"})
            assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
            assert retry.json()["id"] == answer.json()["id"]
        contents = [row["content"] for row in server.rows(Message.__table__) if row["role"] == "user"]
        assert contents == ["one", "two"]
        assert upstream.requests == 2
