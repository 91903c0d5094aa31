"""/v1/conversations over HTTP against live servers: SQL memory (`server`) and Redis memory (`redis_server`)."""

from __future__ import annotations

import sqlite3

import pytest
import redis as redis_sync

MODEL = "gemma-3-270m"


def assert_error(response, status: int, *, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def create(http, **body) -> dict:
    response = http.post("/v1/conversations", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def chat(http, conversation_id: str, content: str, **kwargs):
    return http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "conversation_id": conversation_id,
            "max_tokens": 4,
            "temperature": 0,
            **kwargs,
        },
    )


def stored_message_count(server, conversation_id: str) -> int:
    """Rows in the server's SQLite database, read with the standard library."""
    path = server.services.settings.resolved_database_url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchone()[0]


def stored_conversation_count(server, conversation_id: str) -> int:
    path = server.services.settings.resolved_database_url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]


# ---------------------------------------------------------------- create and retrieve


def test_create_with_title_user_and_metadata(server):
    http = server.http()
    created = create(http, title="Trip planning", user="user-1", metadata={"topic": "travel", "lang": "en"})
    assert created["id"].startswith("conv_")
    assert created["object"] == "conversation"
    assert created["title"] == "Trip planning"
    assert created["user"] == "user-1"
    assert created["metadata"] == {"topic": "travel", "lang": "en"}
    assert isinstance(created["created_at"], int) and created["updated_at"] >= created["created_at"]

    fetched = http.get(f"/v1/conversations/{created['id']}").json()
    assert fetched == {**created, "messages": []}


def test_create_without_a_body(server):
    http = server.http()
    response = http.post("/v1/conversations")
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["title"] is None and created["user"] is None and created["metadata"] == {}
    assert create(http)["metadata"] == {}


# ---------------------------------------------------------------- list


def test_list_is_newest_first_and_paginates(server):
    http = server.http()
    ids = [create(http, title=f"c{n}")["id"] for n in range(5)]
    newest_first = list(reversed(ids))

    everything = http.get("/v1/conversations").json()
    assert everything["object"] == "list"
    assert [c["id"] for c in everything["data"]] == newest_first
    assert [c["title"] for c in everything["data"]] == [f"c{n}" for n in reversed(range(5))]
    assert everything["has_more"] is False
    assert everything["first_id"] == newest_first[0] and everything["last_id"] == newest_first[-1]
    assert all(c["object"] == "conversation" and "messages" not in c for c in everything["data"])

    seen: list[str] = []
    pages = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = http.get("/v1/conversations", params=params).json()
        pages.append(page)
        seen += [c["id"] for c in page["data"]]
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == newest_first
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert [p["has_more"] for p in pages] == [True, True, False]

    # Exactly `limit` left: no more after them.
    last_two = http.get("/v1/conversations", params={"limit": 2, "after": newest_first[2]}).json()
    assert [c["id"] for c in last_two["data"]] == newest_first[3:]
    assert last_two["has_more"] is False

    # After the oldest: an empty page.
    empty = http.get("/v1/conversations", params={"after": newest_first[-1]}).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_list_filters_by_user(server):
    http = server.http()
    mine = [create(http, user="alice")["id"] for _ in range(2)]
    create(http, user="bob")
    create(http)
    listed = http.get("/v1/conversations", params={"user": "alice"}).json()
    assert [c["id"] for c in listed["data"]] == list(reversed(mine))
    assert all(c["user"] == "alice" for c in listed["data"])


def test_list_after_an_unknown_id_is_404(server):
    response = server.http().get("/v1/conversations", params={"after": "conv_missing"})
    assert_error(response, 404, param="after", code="not_found")


@pytest.mark.parametrize("limit", [0, -1, 101, 1000, "ten"])
def test_list_rejects_a_bad_limit(server, limit):
    response = server.http().get("/v1/conversations", params={"limit": limit})
    assert response.status_code == 400, response.text
    error = assert_error(response, 400, param="limit", code="invalid_value")
    assert "limit" in error["message"]


def test_list_accepts_the_limit_bounds(server):
    http = server.http()
    create(http)
    assert len(http.get("/v1/conversations", params={"limit": 1}).json()["data"]) == 1
    assert http.get("/v1/conversations", params={"limit": 100}).status_code == 200


# ---------------------------------------------------------------- invalid bodies and unknown ids


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"title": 5}, "title"),
        ({"title": ["a"]}, "title"),
        ({"title": "x" * 257}, "title"),
        ({"user": 7}, "user"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": "not a mapping"}, "metadata"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_create_rejects_invalid_bodies(server, body, param):
    response = server.http().post("/v1/conversations", json=body)
    assert_error(response, 400, param=param, code="invalid_value")


def test_create_rejects_a_body_that_is_not_an_object(server):
    http = server.http()
    assert_error(http.post("/v1/conversations", json=["title"]), 400)
    response = http.post("/v1/conversations", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 400, code="invalid_json")
    # Nothing was created by the rejected requests.
    assert http.get("/v1/conversations").json()["data"] == []


def test_unknown_conversation_ids_are_404(server):
    http = server.http()
    for response in (
        http.get("/v1/conversations/conv_missing"),
        http.delete("/v1/conversations/conv_missing"),
        chat(http, "conv_missing", "Hi"),
    ):
        error = assert_error(response, 404, param="conversation_id", code="not_found")
        assert "conv_missing" in error["message"]


# ---------------------------------------------------------------- chat turns in a created conversation


@pytest.mark.slow
def test_chat_continues_a_conversation_created_by_post(server):
    http = server.http()
    created = create(http, title="Capitals", metadata={"source": "test"})

    response = chat(http, created["id"], "What is the capital of France?")
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["conversation_id"] == created["id"]
    assert response.headers["x-conversation-id"] == created["id"]

    fetched = http.get(f"/v1/conversations/{created['id']}").json()
    # Title and metadata given at creation stay.
    assert fetched["title"] == "Capitals" and fetched["metadata"] == {"source": "test"}
    assert fetched["updated_at"] >= created["updated_at"]
    user, assistant = fetched["messages"]
    assert user["object"] == "conversation.message" and user["id"].startswith("msg_")
    assert (user["role"], user["content"]) == ("user", "What is the capital of France?")
    assert "response_id" not in user
    assert assistant["role"] == "assistant"
    assert assistant["content"] == completion["choices"][0]["message"]["content"]
    assert assistant["response_id"] == completion["id"]
    assert assistant["model"] == MODEL
    assert assistant["finish_reason"] == completion["choices"][0]["finish_reason"]
    assert assistant["usage"] == completion["usage"]
    assert assistant["latency_ms"] > 0
    assert int(user["id"][4:]) < int(assistant["id"][4:])

    # The conversation now sorts by its creation, not its last turn, and lists once.
    listed = [c["id"] for c in http.get("/v1/conversations").json()["data"]]
    assert listed.count(created["id"]) == 1


# ---------------------------------------------------------------- delete


@pytest.mark.slow
def test_delete_removes_the_conversation_from_the_database_and_redis(redis_server, redis_url):
    http = redis_server.http()
    memory = redis_server.services.memory
    conversation_id = create(http, title="to delete")["id"]

    first = chat(http, conversation_id, "Name a color.")
    assert first.status_code == 200, first.text
    second = chat(http, conversation_id, "Another one?")
    assert second.status_code == 200, second.text
    # The second turn loaded the first from the database into Redis, then appended itself.
    # The server's Redis is read with a client of the test's own.
    key = memory.key(conversation_id)
    client = redis_sync.Redis.from_url(redis_url)
    try:
        assert client.llen(key) == 4
        assert stored_message_count(redis_server, conversation_id) == 4

        deleted = http.delete(f"/v1/conversations/{conversation_id}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

        assert client.exists(key) == 0
        assert stored_message_count(redis_server, conversation_id) == 0
        assert stored_conversation_count(redis_server, conversation_id) == 0
    finally:
        client.close()

    assert_error(http.get(f"/v1/conversations/{conversation_id}"), 404, param="conversation_id", code="not_found")
    assert_error(chat(http, conversation_id, "Still there?"), 404, param="conversation_id", code="not_found")
    assert_error(http.delete(f"/v1/conversations/{conversation_id}"), 404, param="conversation_id", code="not_found")
    assert conversation_id not in [c["id"] for c in http.get("/v1/conversations").json()["data"]]


def test_delete_without_turns_on_sql_memory(server):
    http = server.http()
    keep = create(http, title="keep")["id"]
    gone = create(http, title="gone")["id"]
    assert http.delete(f"/v1/conversations/{gone}").json()["deleted"] is True
    assert [c["id"] for c in http.get("/v1/conversations").json()["data"]] == [keep]
    assert http.get(f"/v1/conversations/{keep}").status_code == 200
    assert_error(http.get(f"/v1/conversations/{gone}"), 404, param="conversation_id")


# ---------------------------------------------------------------- apps


def test_conversations_belong_to_the_calling_app(server):
    mine = server.http()
    theirs = server.http(key=server.create_key("other-app"))
    conversation_id = create(mine, title="private")["id"]
    other_id = create(theirs, title="theirs")["id"]

    assert [c["id"] for c in theirs.get("/v1/conversations").json()["data"]] == [other_id]
    assert [c["id"] for c in mine.get("/v1/conversations").json()["data"]] == [conversation_id]
    assert_error(theirs.get(f"/v1/conversations/{conversation_id}"), 404, param="conversation_id")
    assert_error(theirs.delete(f"/v1/conversations/{conversation_id}"), 404, param="conversation_id")
    assert_error(theirs.get("/v1/conversations", params={"after": conversation_id}), 404, param="after")
    assert_error(chat(theirs, conversation_id, "Hi"), 404, param="conversation_id")
    assert mine.get(f"/v1/conversations/{conversation_id}").json()["title"] == "private"

    anonymous = server.http(key="")
    assert anonymous.get("/v1/conversations").status_code == 401
    assert anonymous.post("/v1/conversations", json={}).status_code == 401


# ---------------------------------------------------------------- rename (POST /v1/conversations/{id})


def test_rename_and_replace_metadata(kb_server):
    http = kb_server.http()
    created = create(http, title="Untitled", metadata={"topic": "travel"})
    conversation_id = created["id"]
    response = http.post(f"/v1/conversations/{conversation_id}", json={"title": "Trip to Lyon"})
    assert response.status_code == 200, response.text
    assert response.json() == {**created, "title": "Trip to Lyon"}  # metadata left out: unchanged
    assert http.get(f"/v1/conversations/{conversation_id}").json()["title"] == "Trip to Lyon"
    assert http.get("/v1/conversations").json()["data"][0]["title"] == "Trip to Lyon"
    replaced = http.post(f"/v1/conversations/{conversation_id}", json={"metadata": {"lang": "fr"}}).json()
    assert (replaced["title"], replaced["metadata"]) == ("Trip to Lyon", {"lang": "fr"})
    cleared = http.post(f"/v1/conversations/{conversation_id}", json={"title": None, "metadata": None}).json()
    assert (cleared["title"], cleared["metadata"]) == (None, {})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"title": 5}, "title"),
        ({"title": "x" * 257}, "title"),
        ({"user": "u"}, "user"),
        ({"metadata": {"k": 1}}, "metadata.k"),
    ],
)
def test_rename_rejects_invalid_bodies(kb_server, body, param):
    http = kb_server.http()
    conversation_id = create(http, title="kept")["id"]
    assert_error(http.post(f"/v1/conversations/{conversation_id}", json=body), 400, param=param, code="invalid_value")
    assert http.get(f"/v1/conversations/{conversation_id}").json()["title"] == "kept"


def test_another_apps_conversation_cannot_be_renamed(kb_server):
    mine = kb_server.http()
    theirs = kb_server.http(key=kb_server.create_key("other-app"))
    conversation_id = create(mine, title="private")["id"]
    for response in (
        theirs.post(f"/v1/conversations/{conversation_id}", json={"title": "mine now"}),
        mine.post("/v1/conversations/conv_missing", json={"title": "x"}),
    ):
        assert_error(response, 404, param="conversation_id", code="not_found")
    assert mine.get(f"/v1/conversations/{conversation_id}").json()["title"] == "private"
    assert kb_server.http(key="").post(f"/v1/conversations/{conversation_id}", json={"title": "x"}).status_code == 401
