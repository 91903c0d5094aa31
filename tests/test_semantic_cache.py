"""The semantic cache end to end: real embeddings, real embedded Chroma, the exact tier in process and in Redis, in
front of the scripted upstream (which records every request it gets, so a hit is a request it never saw). Every
scope rule is a hit or a miss case here."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from chains.model_routes import ModelRoute
from storage.tables import Usage
from tests.conftest import ADMIN_KEY
from tests.scripted_upstream import ScriptedUpstream, scripted_route, serve_scripted_upstream

COLD = {"temperature": 0}
QUESTION = "How do I reset my password?"
ANSWER = f"Scripted reply to: {QUESTION}"


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


@pytest.fixture
def cached(live_server, scripted):
    """A live server with the cache on and two routes in front of the scripted upstream."""
    scripted.clear()
    return live_server(
        cache_enabled=True,
        model_routes=[scripted_route("scripted", scripted), scripted_route("other", scripted)],
    )


def ask(server, content: str = QUESTION, *, model: str = "scripted", headers=None, **body) -> httpx.Response:
    messages = body.pop("messages", None) or [{"role": "user", "content": content}]
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": messages, **COLD, **body},
            headers=headers or {},
        )
    assert response.status_code == 200, response.text
    server.settle()  # a miss is stored in the background
    return response


def test_a_repeated_question_is_answered_from_the_exact_tier(cached, scripted):
    first = ask(cached)
    second = ask(cached, "  how do I reset my PASSWORD ")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json()["choices"][0]["message"]["content"] == ANSWER
    assert second.json()["choices"][0]["finish_reason"] == "stop"
    assert len(scripted.requests) == 1
    assert second.json()["id"] != first.json()["id"]
    records = {r["response_id"]: r for r in cached.rows(Usage.__table__)}
    hit = records[second.json()["id"]]
    assert (hit["cached"], hit["cost"], hit["status"]) == (True, 0.0, "ok")
    assert records[first.json()["id"]]["cached"] is False
    with cached.http() as http:
        metrics = http.get("/metrics").text
    assert 'genai_cache_lookups_total{result="hit",tier="exact"} 1.0' in metrics
    assert 'genai_cache_lookups_total{result="miss",tier="none"} 1.0' in metrics


def test_a_paraphrase_hits_and_a_near_miss_does_not(cached, scripted):
    ask(cached, "What is the capital of Australia?")
    paraphrase = ask(cached, "Which city is the capital of Australia?")
    assert paraphrase.headers["x-cache"] == "hit"
    assert (
        paraphrase.json()["choices"][0]["message"]["content"] == "Scripted reply to: What is the capital of Australia?"
    )
    ask(cached, "How long is a flight from Paris to London?")
    swapped = ask(cached, "How long is a flight from London to Paris?")
    assert swapped.headers["x-cache"] == "miss"
    assert len(scripted.requests) == 3


def test_a_hit_streams_like_a_fresh_answer(cached, scripted):
    ask(cached)
    with cached.http() as http:
        body = {"model": "scripted", "messages": [{"role": "user", "content": QUESTION}], "stream": True, **COLD}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers["x-cache"] == "hit"
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER and len(chunks) > 3  # word by word, not one block
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(scripted.requests) == 1


# ---------------------------------------------------------------- scope: what must not hit


def test_another_app_never_hits(cached, scripted):
    ask(cached)
    with httpx.Client(base_url=cached.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        admin.post("/admin/apps", json={"name": "other-app"}).raise_for_status()
        key = admin.post("/admin/keys", json={"app": "other-app"}).json()["key"]
    with httpx.Client(base_url=cached.url, headers={"Authorization": f"Bearer {key}"}) as other:
        response = other.post(
            "/v1/chat/completions",
            json={"model": "scripted", "messages": [{"role": "user", "content": QUESTION}], **COLD},
        )
    assert response.headers["x-cache"] == "miss" and len(scripted.requests) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"temperature": 0.2},
        {"max_tokens": 5},
        {"seed": 3},
        {"stop": ["zzz"]},
        {"response_format": {"type": "json_object"}, "content": "Reply in json: how do I reset my password?"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]},
        {"messages": [
            {"role": "user", "content": "I use the mobile app."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": QUESTION},
        ]},
    ],
    ids=["model", "temperature", "max_tokens", "seed", "stop", "response_format", "system", "prior_turns"],
)  # fmt: skip
def test_a_change_of_scope_misses(cached, scripted, change):
    ask(cached)
    response = ask(cached, **dict(change))
    assert response.headers["x-cache"] == "miss" and len(scripted.requests) == 2


def test_a_conversation_hits_only_with_the_same_prior_turns(cached, scripted):
    client = cached.openai()

    def turn(conversation: str, content: str):
        response = client.chat.completions.with_raw_response.create(
            model="scripted",
            messages=[{"role": "user", "content": content}],
            temperature=0,
            extra_body={"conversation_id": conversation},
        )
        cached.settle()
        return response

    a = turn("new", "Tell me about the Eiffel Tower.").headers["x-conversation-id"]
    b = turn("new", "Tell me about the Colosseum.").headers["x-conversation-id"]
    assert turn(a, "Tell me more.").headers["x-cache"] == "miss"
    assert turn(b, "Tell me more.").headers["x-cache"] == "miss"  # another conversation's "more"
    # A new conversation asking the first question again has the same (empty) prior turns: a hit.
    assert turn("new", "Tell me about the Eiffel Tower.").headers["x-cache"] == "hit"
    assert len(scripted.requests) == 4


def test_tool_calls_are_never_stored(cached, scripted):
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    for _ in range(2):
        response = ask(cached, "What is the weather?", tools=[weather])
        assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
        assert response.headers["x-cache"] == "miss"
    assert len(scripted.requests) == 2


# ---------------------------------------------------------------- controls


@pytest.mark.parametrize(
    "bypass",
    [{"body": {"cache": False}}, {"headers": {"Cache-Control": "no-cache"}}, {"body": {"temperature": 0.9}}],
    ids=["cache_false", "cache_control", "hot"],
)
def test_a_bypassed_request_is_neither_looked_up_nor_stored(cached, scripted, bypass):
    body = bypass.get("body", {})
    headers = bypass.get("headers")
    for _ in range(2):
        assert ask(cached, headers=headers, **body).headers["x-cache"] == "miss"
    assert len(scripted.requests) == 2
    assert ask(cached).headers["x-cache"] == "miss"  # nothing was stored for it


def test_an_app_can_turn_the_cache_off(cached, scripted):
    with httpx.Client(base_url=cached.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        response = admin.patch("/admin/apps/tests", json={"cache_enabled": False})
        assert response.status_code == 200, response.text
        assert response.json()["cache_enabled"] is False
    ask(cached)
    assert ask(cached).headers["x-cache"] == "miss" and len(scripted.requests) == 2


def test_the_cache_is_off_by_setting(live_server, scripted):
    scripted.clear()
    server = live_server(cache_enabled=False, model_routes=[scripted_route("scripted", scripted)])
    ask(server)
    assert ask(server).headers["x-cache"] == "miss" and len(scripted.requests) == 2


def test_the_exact_tier_lives_in_redis_when_configured(live_server, scripted, redis_url):
    scripted.clear()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("genai:cache:*"):
        client.delete(key)
    server = live_server(cache_enabled=True, redis_url=redis_url, model_routes=[scripted_route("scripted", scripted)])
    ask(server)
    [key] = list(client.scan_iter("genai:cache:*"))
    assert 0 < client.ttl(key) <= server.settings.cache_ttl_seconds
    assert ask(server).headers["x-cache"] == "hit"
    # A second server of the same deployment (its database and Redis: another worker or replica) hits it too.
    other = live_server(cache_enabled=True, redis_url=redis_url, model_routes=[scripted_route("scripted", scripted)])
    assert ask(other).headers["x-cache"] == "hit"
    assert len(scripted.requests) == 1


def test_a_failing_cache_does_not_fail_the_request(live_server, scripted):
    scripted.clear()
    dead_redis = "redis://127.0.0.1:1/0"
    server = live_server(
        cache_enabled=True, model_routes=[ModelRoute(name="scripted", base_url=scripted, max_retries=0)]
    )
    server.services.chat.context.cache.redis = redis.asyncio.Redis.from_url(dead_redis, socket_connect_timeout=0.5)
    response = ask(server)
    assert response.headers["x-cache"] == "miss"
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


def test_openai_sdk_sees_the_cache_header(cached, scripted):
    client = cached.openai()
    client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": QUESTION}], temperature=0)
    cached.settle()
    raw = client.chat.completions.with_raw_response.create(
        model="scripted", messages=[{"role": "user", "content": QUESTION}], temperature=0
    )
    assert raw.headers["x-cache"] == "hit" and raw.parse().choices[0].message.content == ANSWER


def test_bad_cache_field_is_refused(cached):
    with pytest.raises(openai.BadRequestError) as caught:
        cached.openai().chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": QUESTION}], extra_body={"cache": "yes"}
        )
    assert caught.value.param == "cache"


def test_stores_and_their_content_are_part_of_the_scope(cached, scripted):
    from tests.knowledge import wait_for_ingestion

    client = cached.openai()

    def store_with(text: str, name: str) -> str:
        file = client.files.create(file=(f"{name}.txt", text.encode()), purpose="assistants")
        store = client.vector_stores.create(name=name, file_ids=[file.id])
        assert wait_for_ingestion(client, store.id, file.id).status == "completed"
        return store.id

    fact = "The Quillon tram line closes at 23:40 on weekdays."
    a, b = store_with(fact, "a"), store_with(fact, "b")
    question = "When does the Quillon tram line close?"
    first = ask(cached, question, vector_store_ids=[a])
    again = ask(cached, question, vector_store_ids=[a])
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert again.json()["citations"] == first.json()["citations"] and "23:40" in first.json()["citations"][0]["quote"]
    assert ask(cached, question, vector_store_ids=[b]).headers["x-cache"] == "miss"
    assert ask(cached, question).headers["x-cache"] == "miss"  # no store at all
    # New content in store a: a new version, so its earlier answers are not served.
    extra = client.files.create(file=("more.txt", b"The Quillon tram also runs on Sundays."), purpose="assistants")
    client.vector_stores.files.create(vector_store_id=a, file_id=extra.id)
    assert wait_for_ingestion(client, a, extra.id).status == "completed"
    assert ask(cached, question, vector_store_ids=[a]).headers["x-cache"] == "miss"
    assert len(scripted.requests) == 4
