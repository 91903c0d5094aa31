"""Bad input and faults: OpenAI's error shape and status, never a 500, never a half-written conversation."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest
import redis as redis_sync

from chains.local_model import local_route
from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from tests.conftest import MODEL_PATH

USER = {"role": "user", "content": "Hello"}


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture
def http(server):
    with server.http() as client:
        yield client


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content"),
        # The local model sees no images: refused, naming the part.
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0]"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"messages": [USER], "max_tokens": -5}, "max_tokens"),
        ({"messages": [USER], "max_tokens": "many"}, "max_tokens"),
        ({"messages": [USER], "temperature": 2.5}, "temperature"),
        ({"messages": [USER], "temperature": -1}, "temperature"),
        ({"messages": [USER], "top_p": 1.5}, "top_p"),
        ({"messages": [USER], "n": 0}, "n"),
        ({"messages": [USER], "n": 129}, "n"),
        ({"messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [USER], "model": 7}, "model"),
        ({"messages": [USER], "stream": "yes please"}, "stream"),
    ],
)
def test_invalid_bodies_are_400(http, body, param):
    error = assert_error(http.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2, 3]", b'"just a string"', b"null", "{\"messages\": [\"\xff\"]}".encode("latin-1")],
)
def test_malformed_json_is_400(http, raw):
    response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_system_only_messages_are_400(http):
    response = http.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "be brief"}]})
    assert_error(response, 400, param="messages")


def test_n_above_one_is_refused_clearly(http):
    """The local model's route has no `n` feature (llama.cpp makes one choice per request)."""
    error = assert_error(http.post("/v1/chat/completions", json={"messages": [USER], "n": 2}), 400, param="n")
    assert error["code"] == "unsupported_parameter" and "gemma-3-270m" in error["message"]


def test_unknown_model_is_404_model_not_found(server):
    with pytest.raises(openai.NotFoundError) as caught:
        server.openai().chat.completions.create(model="gpt-17", messages=[USER])
    assert caught.value.code == "model_not_found"
    assert caught.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        server.openai().models.retrieve("gpt-17")


def test_unknown_conversation_is_404(server):
    client = server.openai()
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(
                model="gemma-3-270m", messages=[USER], extra_body={"conversation_id": "conv_missing"}, stream=stream
            )
        assert caught.value.param == "conversation_id"


def test_context_length_exceeded_is_400(server):
    client = server.openai()
    long_text = "word " * 5000  # far over the 2048-token window of the test model
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="gemma-3-270m", messages=[{"role": "user", "content": long_text}], stream=stream
            )
        assert caught.value.code == "context_length_exceeded"
        assert "maximum context length is 2048 tokens" in caught.value.message


def test_oversized_body_is_413(live_server, llama):
    server = live_server(max_body_bytes=4096)
    with server.http() as http:
        big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
        assert_error(http.post("/v1/chat/completions", json=big), 413, code="request_too_large")

        def chunks():
            for _ in range(10):
                yield b" " * 1000  # chunked upload with no content-length

        response = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert_error(response, 413)


def test_unknown_url_and_method_use_the_error_shape(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


@pytest.fixture
def silent_upstream():
    """A TCP server that accepts connections and never answers: a hung model server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def faulty_server(live_server, llama, silent_upstream):
    routes = [
        local_route(llama.base_url, str(MODEL_PATH), llama.context_window),
        # free_port() returns a port that nothing listens on any more.
        ModelRoute(name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0),
        ModelRoute(name="hung", base_url=silent_upstream, timeout=1.0, max_retries=0),
    ]
    return live_server(model_routes=routes)


@pytest.mark.parametrize(("model", "status", "code"), [("down", 503, "service_unavailable"), ("hung", 504, "timeout")])
def test_model_server_faults_are_503_504_and_leave_no_half_turn(faulty_server, model, status, code):
    with faulty_server.http() as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        for stream in (False, True):
            body = {"model": model, "messages": [USER], "conversation_id": conversation, "stream": stream}
            error = assert_error(http.post("/v1/chat/completions", json=body), status, code=code)
            assert model in error["message"]
            body["conversation_id"] = "new"
            assert_error(http.post("/v1/chat/completions", json=body), status, code=code)
        stored = http.get(f"/v1/conversations/{conversation}").json()
        assert stored["messages"] == []
        # No conversation was created by the failed "new" calls either.
        assert [c["id"] for c in http.get("/v1/conversations").json()["data"]] == [conversation]
        # The healthy route still answers, and readiness names the broken ones.
        ok = http.post("/v1/chat/completions", json={"model": "gemma-3-270m", "messages": [USER], "max_tokens": 4})
        assert ok.status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["model:down"] != "ok"


@pytest.mark.slow
def test_client_disconnect_mid_stream_stores_nothing_of_the_turn(redis_server):
    """A client that hangs up mid-answer leaves no half turn: not in the database, not in the Redis list; the
    conversation goes on from its last whole turn."""
    memory = redis_sync.Redis.from_url(redis_server.settings.redis_url)
    key = redis_server.services.memory.key
    with redis_server.http() as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        first = {"model": "gemma-3-270m", "messages": [USER], "conversation_id": conversation, "max_tokens": 8}
        assert http.post("/v1/chat/completions", json=first).status_code == 200
        whole_turn = [(m["role"], m["content"]) for m in http.get(f"/v1/conversations/{conversation}").json()["messages"]]
        assert [role for role, _ in whole_turn] == ["user", "assistant"]
        assert [(r["role"], r["content"]) for r in map(json.loads, memory.lrange(key(conversation), 0, -1))] == whole_turn

        # 64 tokens take about 1 s to generate here; the client leaves after the first two events.
        long = {
            "model": "gemma-3-270m", "conversation_id": conversation, "stream": True, "max_tokens": 64, "stop": [],
            "messages": [{"role": "user", "content": "Write a long story about a dragon and a knight."}],
        }  # fmt: skip
        with http.stream("POST", "/v1/chat/completions", json=long) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            next(lines)
            next(lines)
        time.sleep(4)  # longer than the whole answer would have taken: a turn the server kept would be stored by now

        stored = [(m["role"], m["content"]) for m in http.get(f"/v1/conversations/{conversation}").json()["messages"]]
        assert stored == whole_turn
        assert [(r["role"], r["content"]) for r in map(json.loads, memory.lrange(key(conversation), 0, -1))] == whole_turn
        # The server keeps serving, and the conversation goes on from its last whole turn.
        assert http.post("/v1/chat/completions", json=first).status_code == 200
        assert len(http.get(f"/v1/conversations/{conversation}").json()["messages"]) == 4
        assert memory.llen(key(conversation)) == 4
    memory.close()
