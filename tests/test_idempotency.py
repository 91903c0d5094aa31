"""The turn's commit and the reply agree: a client retrying with the same ``Idempotency-Key`` (or its own request
id) gets the stored reply instead of a second turn; a request that failed left nothing and runs again; the same
key with another request, or while the first still runs, is refused."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from sqlalchemy import select

import storage.idempotency as idempotency
import storage.processes as processes
from chains.model_routes import ModelRoute
from errors import Conflict
from storage.tables import IdempotencyKey, Message, ServerProcess, Usage
from tests.controlled_upstream import ControlledUpstream, controlled_upstream
from tests.test_errors import assert_error


@pytest.fixture
def upstream() -> Iterator[ControlledUpstream]:
    with controlled_upstream("only") as upstream:
        yield upstream


@pytest.fixture
def platform(live_server, upstream):
    return live_server(model_routes=[ModelRoute(name="m", base_url=upstream.url, max_retries=0, timeout=10)])


def post(http: httpx.Client, key: str | None, content: str = "hi", header: str = "Idempotency-Key", **extra):
    headers = {header: key} if key else {}
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    return http.post("/v1/chat/completions", json=body, headers=headers)


def test_a_retry_gets_the_stored_reply_not_a_second_turn(platform, upstream):
    with platform.http() as http:
        first = post(http, "k-1", conversation_id="new")
        assert first.status_code == 200 and "idempotent-replayed" not in first.headers
        again = post(http, "k-1", conversation_id="new")
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()  # the same id, conversation, answer, usage and creation time
        assert again.headers["x-conversation-id"] == first.json()["conversation_id"]
    assert upstream.requests == 1
    assert [row["status"] for row in platform.rows(Usage.__table__)] == ["ok"]  # a replay is no new request
    assert [row["role"] for row in platform.rows(Message.__table__)] == ["user", "assistant"]


def test_a_streamed_retry_replays_the_stored_answer(platform, upstream):
    client = platform.openai()
    first = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"Idempotency-Key": "k-2"}
    )
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"Idempotency-Key": "k-2"},
    )
    chunks = list(stream)
    assert {chunk.id for chunk in chunks} == {first.id}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Answered by only."
    assert chunks[-1].usage.total_tokens == first.usage.total_tokens
    assert upstream.requests == 1


def test_the_same_key_with_another_request_is_refused(platform):
    with platform.http() as http:
        assert post(http, "k-3", "first question").status_code == 200
        error = assert_error(post(http, "k-3", "another question"), 400, code="idempotency_key_reused")
        assert error["param"] == "Idempotency-Key"
        other_app = platform.create_key("other-app")
        # Keys belong to their app: another app's request with the same key runs.
        response = http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "another question"}]},
            headers={"Idempotency-Key": "k-3", "Authorization": f"Bearer {other_app}"},
        )
        assert response.status_code == 200 and "idempotent-replayed" not in response.headers


def test_a_retry_while_the_first_still_runs_is_a_409(platform, upstream):
    upstream.delay = 1.5
    results: dict[str, httpx.Response] = {}

    def first() -> None:
        with platform.http() as http:
            results["first"] = post(http, "k-4")

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.5)
    with platform.http() as http:
        assert_error(post(http, "k-4"), 409, code="idempotency_key_in_use")
        thread.join()
        assert results["first"].status_code == 200
        assert post(http, "k-4").headers["idempotent-replayed"] == "true"
    assert upstream.requests == 1


def test_a_request_that_failed_leaves_nothing_and_its_retry_runs(platform, upstream):
    upstream.set("fail")
    with platform.http() as http:
        assert_error(post(http, "k-5", conversation_id="new"), 502, code="upstream_error")
        upstream.set("ok")
        retry = post(http, "k-5", conversation_id="new")
        assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert upstream.requests == 2
    assert platform.rows(Message.__table__) and len(platform.rows(Message.__table__)) == 2
    assert [row["reply"] is not None for row in platform.rows(IdempotencyKey.__table__)] == [True]


def test_a_client_that_leaves_mid_request_gives_the_key_back(platform, upstream):
    upstream.delay = 1.0
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {platform.key}"}) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Idempotency-Key": "k-6"},
                timeout=0.3,
            )
    time.sleep(1.5)  # the server notices the client left when the model answers; the claim is released
    upstream.delay = 0
    with platform.http() as http:
        retry = post(http, "k-6")
    assert retry.status_code == 200


def test_the_clients_request_id_serves_as_the_key(platform, upstream):
    with platform.http() as http:
        first = post(http, "req-7", header="X-Request-ID")
        again = post(http, "req-7", header="X-Request-ID")
        assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
        error = assert_error(post(http, "req-7", "something else", header="X-Request-ID"), 400)
        assert error["param"] == "X-Request-ID"
        # An Idempotency-Key with the same value is another key.
        assert "idempotent-replayed" not in post(http, "req-7").headers
    assert upstream.requests == 2


def test_a_key_too_long_is_refused(platform):
    with platform.http() as http:
        error = assert_error(post(http, "k" * 300), 400, code="invalid_idempotency_key")
    assert "Idempotency-Key" in error["message"]


def test_the_openai_sdk_gets_the_stored_reply(platform, upstream):
    client = platform.openai()
    first = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"Idempotency-Key": "k-8"}
    )
    retried = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=platform.key, max_retries=2)
    again = retried.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"Idempotency-Key": "k-8"}
    )
    assert again.id == first.id and upstream.requests == 1
    assert json.loads(again.model_dump_json())["choices"] == json.loads(first.model_dump_json())["choices"]


def test_langserve_invoke_takes_an_idempotency_key_and_batch_refuses_one(platform, upstream):
    body = {"input": {"messages": [{"type": "human", "content": "hi"}]}}
    with platform.http() as http:
        headers = {"X-Model": "m", "Idempotency-Key": "ls-1"}
        first = http.post("/chat/invoke", json=body, headers=headers)
        again = http.post("/chat/invoke", json=body, headers=headers)
        assert first.status_code == again.status_code == 200, first.text
        assert again.json()["output"]["id"] == first.json()["output"]["id"]
        assert again.json()["output"]["response_metadata"]["replayed"] is True
        assert first.json()["output"]["response_metadata"]["deployment"] == upstream.url.split("//")[1].split("/")[0]
        batch = http.post("/chat/batch", json={"inputs": [body["input"]] * 2}, headers=headers)
        error = assert_error(batch, 400)
        assert error["param"] == "Idempotency-Key"
    assert upstream.requests == 1


async def test_keys_older_than_a_day_are_purged(db, monkeypatch):
    """Clients send a new key with every request: a process deletes the expired ones every PURGE_EVERY seconds
    (when a claim comes), or the table, a reply per row, would only grow."""
    clock = [1_000_000]
    monkeypatch.setattr(idempotency, "now", lambda: clock[0])
    keys = idempotency.IdempotencyKeys(db)

    async def stored() -> list[str]:
        async with db.engine.connect() as conn:
            return sorted((await conn.execute(select(IdempotencyKey.key))).scalars())

    assert await keys.claim("app", "first", "f", "r1") is None
    clock[0] += idempotency.KEEP_SECONDS - 60
    assert await keys.claim("app", "second", "f", "r2") is None
    assert await stored() == ["first", "second"]  # nothing a day old yet
    clock[0] += 120  # "first" is now older than a day, but the last purge ran 2 minutes ago
    assert await keys.claim("app", "third", "f", "r3") is None
    assert await stored() == ["first", "second", "third"]
    clock[0] += idempotency.PURGE_EVERY  # the next purge is due
    assert await keys.claim("app", "fourth", "f", "r4") is None
    assert await stored() == ["fourth", "second", "third"]


async def _claim_row(db, owner: str | None, key: str = "k") -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            IdempotencyKey.__table__.insert().values(
                app_id="app", key=key, fingerprint="f", response_id="r1", created_at=idempotency.now(), owner=owner
            )
        )


async def _beat(db, process_id: str, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    async with db.engine.begin() as conn:
        await conn.execute(
            ServerProcess.__table__.insert().values(
                id=process_id, host="elsewhere", pid=1, started_at=stamp, heartbeat_at=stamp
            )
        )


async def test_the_claim_of_a_process_that_died_is_taken_over_at_once(db):
    """A replica SIGKILLed mid-request leaves its claim: a retry elsewhere takes it over once that process's
    heartbeat is older than STALE_SECONDS, not after CLAIM_SECONDS (15 minutes) of 409s."""
    keys = idempotency.IdempotencyKeys(db)
    await _beat(db, "dead", seconds_ago=processes.STALE_SECONDS + 5)
    await _claim_row(db, owner="dead")
    assert await keys.claim("app", "k", "f", "r2") is None  # taken over
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(IdempotencyKey.owner, IdempotencyKey.response_id))).one()
    assert tuple(row) == (processes.PROCESS_ID, "r2")

    await _claim_row(db, owner="vanished", key="k2")  # its heartbeat row is gone too
    assert await keys.claim("app", "k2", "f", "r3") is None


@pytest.mark.parametrize("owner", ["alive", None])
async def test_the_claim_of_a_live_process_or_of_no_known_process_is_still_a_409(db, owner):
    keys = idempotency.IdempotencyKeys(db)
    await _beat(db, "alive", seconds_ago=1)
    await _claim_row(db, owner=owner)
    with pytest.raises(Conflict):
        await keys.claim("app", "k", "f", "r2")


async def test_a_serving_process_renews_its_heartbeat_and_removes_it_when_it_stops(db, monkeypatch):
    monkeypatch.setattr(processes, "HEARTBEAT_SECONDS", 0.05)
    registry = processes.ProcessRegistry(db)

    async def beats() -> list[float]:
        async with db.engine.connect() as conn:
            query = select(ServerProcess.heartbeat_at).where(ServerProcess.id == processes.PROCESS_ID)
            return list((await conn.execute(query)).scalars())

    await registry.start()
    first = await beats()
    await asyncio.sleep(0.3)
    renewed = await beats()
    assert len(first) == len(renewed) == 1 and renewed[0] > first[0]
    await registry.stop()
    assert await beats() == []
