"""Isolation: every stored thing belongs to an app (and to the ``user`` a client passes within it).

No key reads, lists, continues or deletes another app's conversations, on any route: what is not yours is a 404,
exactly like what does not exist. Within an app, a conversation created for one user is a 404 for another.
An app's ``allowed_models`` hides the other model routes (404 model_not_found).
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from langserve.api_handler import LZString

from chains.local_model import local_route
from tests.conftest import ADMIN_KEY, MODEL_PATH
from tests.test_errors import assert_error

USER = {"role": "user", "content": "What is the capital of France?"}
QUESTION = {"messages": [{"type": "human", "content": "What is the capital of France?"}]}
SHORT = {"max_tokens": 6, "temperature": 0}


def chat(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": [USER], **SHORT, **body})


def stream_chat(client: httpx.Client, **body) -> httpx.Response:
    with client.stream("POST", "/v1/chat/completions", json={"messages": [USER], **SHORT, "stream": True, **body}) as r:
        r.read()
    return r


def langserve_stream(client: httpx.Client, path: str, **kwargs) -> tuple[int, list[tuple[str, str]], bool]:
    """POST a LangServe stream: its status, (event, data) pairs, and whether it ended cleanly."""
    events, name, status, clean = [], "data", 0, True
    try:
        with client.stream("POST", path, **kwargs) as response:
            status = response.status_code
            for line in response.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((name, line[5:].strip()))
    except httpx.RemoteProtocolError:
        clean = False  # the server cut the stream short (see test_langserve_stream_errors_end_the_stream_cleanly)
    return status, events, clean


def assert_not_found(response: httpx.Response, param: str = "conversation_id") -> None:
    assert_error(response, 404, code="not_found", param=param)


def usage(client: httpx.Client, **params) -> list[dict]:
    response = client.get("/v1/usage", params={"group_by": "model", **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.fixture(params=["sql", "redis"])
def any_server(request, live_server, llama):
    """The same checks with conversation memory in SQL and in Redis."""
    if request.param == "redis":
        return live_server(redis_url=request.getfixturevalue("redis_url"))
    return live_server()


# ---------------------------------------------------------------------------------------------------------------
# Across apps


@pytest.mark.slow
def test_another_apps_conversation_is_404_on_every_route(any_server):
    server = any_server
    key_a, key_b = server.create_key("app-a"), server.create_key("app-b")
    with server.http(key=key_a) as a, server.http(key=key_b) as b:
        first = chat(a, conversation_id="new")
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        before = a.get(f"/v1/conversations/{conversation}").json()
        assert [m["role"] for m in before["messages"]] == ["user", "assistant"]

        # Read, delete, list, page from it.
        assert_not_found(b.get(f"/v1/conversations/{conversation}"))
        assert_not_found(b.get(f"/v1/conversations/{conversation}", params={"user": "anyone"}))
        assert_not_found(b.delete(f"/v1/conversations/{conversation}"))
        listed = b.get("/v1/conversations", params={"limit": 100})
        assert listed.status_code == 200 and conversation not in [c["id"] for c in listed.json()["data"]]
        assert_not_found(b.get("/v1/conversations", params={"after": conversation}), param="after")

        # Continue it: OpenAI-style, plain and streamed, and through the SDK.
        assert_not_found(chat(b, conversation_id=conversation))
        assert_not_found(stream_chat(b, conversation_id=conversation))
        assert_not_found(stream_chat(b, conversation_id=conversation, stream_options={"include_usage": True}))
        with pytest.raises(openai.NotFoundError) as raised:
            server.openai(key=key_b).chat.completions.create(
                model="gemma-3-270m", messages=[USER], max_tokens=4, extra_body={"conversation_id": conversation}
            )
        assert raised.value.param == "conversation_id"

        # Continue it through LangServe, also when the body's config claims app A.
        header = {"X-Conversation-ID": conversation}
        assert_not_found(b.post("/chat/invoke", json={"input": QUESTION}, headers=header))
        configurable = {"app_id": _app_id(server, "app-a"), "conversation_id": conversation}
        spoofed = {"input": QUESTION, "config": {"configurable": configurable}}
        assert_not_found(b.post("/chat/invoke", json=spoofed, headers=header))
        config_hash = LZString.compressToEncodedURIComponent(json.dumps({"configurable": configurable}))
        assert_not_found(b.post(f"/chat/c/{config_hash}/invoke", json={"input": QUESTION}, headers=header))
        batch = b.post("/chat/batch", json={"inputs": [QUESTION]}, headers=header)
        assert batch.status_code == 404, batch.text
        for path in ("/chat/stream", "/chat/stream_log", "/chat/stream_events"):
            status, events, _ = langserve_stream(b, path, json={"input": QUESTION}, headers=header)
            assert status == 404 or [name for name, _ in events][-1:] == ["error"], (path, status, events)
            assert not [data for name, data in events if name == "data" and "Paris" in data], (path, events)

        # Nothing B did touched A's conversation.
        after = a.get(f"/v1/conversations/{conversation}").json()
        assert after["messages"] == before["messages"]

        # B's usage shows only B's own (failed) attempts; A's shows A's answer and nothing of B's.
        b_usage = usage(b)
        assert sum(row["requests"] for row in b_usage) == sum(row["failed_requests"] for row in b_usage) > 0
        assert sum(row["completion_tokens"] for row in b_usage) == 0
        a_usage = usage(a)
        assert [(row["requests"], row["failed_requests"]) for row in a_usage] == [(1, 0)]
        assert a_usage[0]["completion_tokens"] == first.json()["usage"]["completion_tokens"]
        assert_error(b.get("/v1/usage", params={"app": "app-a"}), 400)

        # A can still delete it; then it is gone for A too.
        assert a.delete(f"/v1/conversations/{conversation}").json()["deleted"] is True
        assert_not_found(a.get(f"/v1/conversations/{conversation}"))


def test_langserve_stream_errors_end_the_stream_cleanly(server):
    with server.http() as client:
        status, events, clean = langserve_stream(
            client, "/chat/stream", json={"input": QUESTION}, headers={"X-Conversation-ID": "conv_not_there"}
        )
    assert clean and (status == 404 or events[-1][0] == "error"), (status, events)


def test_conversations_created_by_one_app_are_listed_only_for_it(server):
    key_a, key_b = server.create_key("app-a"), server.create_key("app-b")
    with server.http(key=key_a) as a, server.http(key=key_b) as b:
        mine = {a.post("/v1/conversations", json={"title": f"a{i}"}).json()["id"] for i in range(3)}
        theirs = {b.post("/v1/conversations", json={"title": f"b{i}"}).json()["id"] for i in range(2)}
        listed_a = [c["id"] for c in a.get("/v1/conversations", params={"limit": 100}).json()["data"]]
        listed_b = [c["id"] for c in b.get("/v1/conversations", params={"limit": 100}).json()["data"]]
        assert set(listed_a) == mine and set(listed_b) == theirs
        # Paging within one's own conversations works; a cursor from the other app does not.
        page = a.get("/v1/conversations", params={"limit": 1}).json()
        assert page["has_more"] is True
        rest = a.get("/v1/conversations", params={"after": page["last_id"], "limit": 100}).json()["data"]
        assert {c["id"] for c in rest} | {page["last_id"]} == mine
        for conversation in theirs:
            assert_not_found(a.get("/v1/conversations", params={"after": conversation}), param="after")
            assert_not_found(a.get(f"/v1/conversations/{conversation}"))
            assert_not_found(a.delete(f"/v1/conversations/{conversation}"))
        # Still all there for B.
        assert {c["id"] for c in b.get("/v1/conversations").json()["data"]} == theirs


def test_two_keys_of_one_app_share_its_conversations(server):
    """Data belongs to the app, not to the key: a second key of the same app sees it."""
    other = server.create_key("tests")
    with server.http() as first, server.http(key=other) as second:
        conversation = first.post("/v1/conversations", json={"title": "shared"}).json()["id"]
        assert second.get(f"/v1/conversations/{conversation}").json()["title"] == "shared"
        assert second.delete(f"/v1/conversations/{conversation}").status_code == 200
        assert_not_found(first.get(f"/v1/conversations/{conversation}"))


def _app_id(server, name: str) -> str:
    with server.http(key=ADMIN_KEY) as admin:
        return admin.get(f"/admin/apps/{name}").json()["id"]


# ---------------------------------------------------------------------------------------------------------------
# Within an app: the user field


def test_another_users_conversation_is_404(server):
    with server.http() as client:
        conversation = client.post("/v1/conversations", json={"user": "u1", "title": "u1's"}).json()["id"]
        # Read and delete, as another user: 404, and nothing is deleted.
        assert_not_found(client.get(f"/v1/conversations/{conversation}", params={"user": "u2"}))
        assert_not_found(client.delete(f"/v1/conversations/{conversation}", params={"user": "u2"}))
        assert client.get(f"/v1/conversations/{conversation}", params={"user": "u1"}).json()["user"] == "u1"
        # The app itself (no user given) sees all of its conversations.
        assert client.get(f"/v1/conversations/{conversation}").status_code == 200
        # Lists filtered by user.
        u2 = [c["id"] for c in client.get("/v1/conversations", params={"user": "u2"}).json()["data"]]
        u1 = [c["id"] for c in client.get("/v1/conversations", params={"user": "u1"}).json()["data"]]
        assert conversation not in u2 and conversation in u1
        # Continue it as another user: 404, plain and streamed, before any model call.
        assert_not_found(chat(client, conversation_id=conversation, user="u2"))
        assert_not_found(stream_chat(client, conversation_id=conversation, user="u2"))
        assert client.get(f"/v1/conversations/{conversation}").json()["messages"] == []
        # The owner can delete it.
        assert client.delete(f"/v1/conversations/{conversation}", params={"user": "u1"}).status_code == 200


def test_a_conversation_without_a_user_belongs_to_the_whole_app(server):
    """Semantics of storage.transcripts.get_conversation: no stored user means any user of the app may use it."""
    with server.http() as client:
        conversation = client.post("/v1/conversations", json={"title": "app-wide"}).json()["id"]
        assert client.get(f"/v1/conversations/{conversation}", params={"user": "u2"}).status_code == 200
        assert conversation not in [
            c["id"] for c in client.get("/v1/conversations", params={"user": "u2"}).json()["data"]
        ]


@pytest.mark.slow
def test_chat_completions_keep_a_users_conversation_to_that_user(server):
    with server.http() as client:
        first = chat(client, conversation_id="new", user="u1")
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        stored = client.get(f"/v1/conversations/{conversation}", params={"user": "u1"}).json()
        assert stored["user"] == "u1" and len(stored["messages"]) == 2
        assert_not_found(client.get(f"/v1/conversations/{conversation}", params={"user": "u2"}))
        assert_not_found(chat(client, conversation_id=conversation, user="u2"))
        assert_not_found(stream_chat(client, conversation_id=conversation, user="u2"))
        assert len(client.get(f"/v1/conversations/{conversation}").json()["messages"]) == 2


# ---------------------------------------------------------------------------------------------------------------
# allowed_models


@pytest.fixture
def two_model_server(live_server, llama):
    """Two model routes on the session's llama.cpp server: gemma-3-270m and gemma-alias."""
    route = local_route(base_url=llama.base_url, gguf_path=str(MODEL_PATH), context_window=llama.context_window)
    return live_server(model_routes=[route, route.model_copy(update={"name": "gemma-alias"})])


def _app_with_models(server, name: str, allowed_models) -> str:
    with server.http(key=ADMIN_KEY) as admin:
        created = admin.post("/admin/apps", json={"name": name, "allowed_models": allowed_models})
        assert created.status_code == 200, created.text
        assert created.json()["allowed_models"] == allowed_models
    return server.create_key(name)


@pytest.mark.slow
def test_allowed_models_limit_what_an_app_sees_and_uses(two_model_server):
    server = two_model_server
    key = _app_with_models(server, "only-gemma", ["gemma-3-270m"])
    with server.http(key=key) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["gemma-3-270m"]
        assert client.get("/v1/models/gemma-3-270m").status_code == 200
        assert_error(client.get("/v1/models/gemma-alias"), 404, code="model_not_found", param="model")
        assert_error(chat(client, model="gemma-alias"), 404, code="model_not_found", param="model")
        assert_error(stream_chat(client, model="gemma-alias"), 404, code="model_not_found")
        refused = client.post("/chat/invoke", json={"input": QUESTION}, headers={"X-Model": "gemma-alias"})
        assert_error(refused, 404, code="model_not_found")
        allowed = chat(client, model="gemma-3-270m")
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["model"] == "gemma-3-270m"
    # An app with every route allowed sees both, and the embedding model; so does the admin key.
    every = ["gemma-3-270m", "gemma-alias", "all-MiniLM-L6-v2"]
    with server.http() as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == every
    with server.http(key=ADMIN_KEY) as admin:
        assert [m["id"] for m in admin.get("/v1/models").json()["data"]] == every


def test_an_app_with_no_allowed_models_can_use_none(server):
    key = _app_with_models(server, "no-models", [])
    with server.http(key=key) as client:
        assert client.get("/v1/models").json()["data"] == []
        assert_error(client.get("/v1/models/gemma-3-270m"), 404, code="model_not_found")
        assert_error(chat(client, model="gemma-3-270m"), 404, code="model_not_found")
        no_model = client.post("/v1/chat/completions", json={"messages": [USER], "max_tokens": 4})
        assert_error(no_model, 404, code="model_not_found")  # the default route is not allowed either
        assert_error(stream_chat(client), 404, code="model_not_found")
        assert_error(client.post("/chat/invoke", json={"input": QUESTION}), 404, code="model_not_found")
    with pytest.raises(openai.NotFoundError) as raised:
        server.openai(key=key).chat.completions.create(model="gemma-3-270m", messages=[USER], max_tokens=4)
    assert raised.value.code == "model_not_found"
    # Allowing the route later takes effect at once.
    with server.http(key=ADMIN_KEY) as admin:
        assert admin.patch("/admin/apps/no-models", json={"allowed_models": ["gemma-3-270m"]}).status_code == 200
    with server.http(key=key) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["gemma-3-270m"]
