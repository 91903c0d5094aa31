"""A stream whose model fails after its first chunk (an error event, a dropped connection, a stall past the route's
time limit) ends with the mapped error in OpenAI's shape and a clean end, on both streaming entry points:

- ``/v1/chat/completions``: ``data: {"error": {...}}`` then ``data: [DONE]``; the openai SDK raises ``APIError``;
- LangServe's ``/chat/stream`` (and ``stream_log``, ``stream_events``): ``event: error`` with the status, message and
  OpenAI's error object, then ``event: end``; LangServe's ``RemoteRunnable`` raises an error carrying the message.

The chunked body always ends properly (httpx would raise ``RemoteProtocolError`` on a cut one), the keep-alive
connection stays usable, and each failure has its usage record."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from langserve import RemoteRunnable

from storage.tables import Usage
from tests.scripted_upstream import ScriptedUpstream, fault_route, scripted_route, serve_scripted_upstream

QUESTION = "Tell me a long story"
MESSAGES = [{"role": "user", "content": QUESTION}]
LANGSERVE_INPUT = {"messages": [{"type": "human", "content": QUESTION}]}
# route -> (status, code) the client gets once the stream has started
FAULTS = {
    "crash": (502, "upstream_error"),  # the model's stream carries an error event
    "cut": (503, "service_unavailable"),  # its connection drops in the middle of the body
    "stall": (504, "timeout"),  # it stops sending, past the route's time limit
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as url:
        yield url


@pytest.fixture
def platform(live_server, upstream):
    return live_server(
        model_routes=[
            fault_route("crash", upstream, fail_after=2),
            fault_route("cut", upstream, fail_after=2, fail="cut"),
            fault_route("stall", upstream, fail_after=2, fail="stall", timeout=2),
            fault_route("instant", upstream, fail_after=0),
            fault_route("slow", upstream, delay=0.2),
            scripted_route("fine", upstream),
        ]
    )


def sse_events(response: httpx.Response) -> list[tuple[str, str | None]]:
    """(event name, data) of each event of a raw SSE body, read to its end (a cut body raises)."""
    events, name, data = [], "message", None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and (data is not None or name != "message"):
            events.append((name, data))
            name, data = "message", None
    if data is not None or name != "message":
        events.append((name, data))
    return events


def usage_statuses(platform) -> list[tuple[str, bool]]:
    return [(row["status"], row["stream"]) for row in platform.rows(Usage.__table__)]


@pytest.mark.parametrize("route", FAULTS)
def test_v1_stream_that_fails_after_its_first_chunk_ends_with_an_error_event_and_done(platform, route):
    status, code = FAULTS[route]
    with platform.http() as http:
        body = {"model": route, "messages": MESSAGES, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            data = [payload for _, payload in sse_events(response)]
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code and error["type"] == "server_error" and f"`{route}`" in error["message"]
        chunks = [json.loads(payload) for payload in data[:-2]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).startswith("Scripted")
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # it did not end as a success
        # the same keep-alive connection still serves
        again = http.post("/v1/chat/completions", json={"model": "fine", "messages": MESSAGES})
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"].startswith("Scripted")
    assert (code, True) in usage_statuses(platform)


@pytest.mark.parametrize("route", FAULTS)
def test_langserve_stream_that_fails_after_its_first_chunk_ends_with_an_error_event_and_end(platform, route):
    status, code = FAULTS[route]
    with platform.http() as http:
        headers = {"X-Model": route}
        with http.stream("POST", "/chat/stream", json={"input": LANGSERVE_INPUT}, headers=headers) as response:
            assert response.status_code == 200
            events = sse_events(response)
        names = [name for name, _ in events]
        assert names[0] == "metadata" and names[-2:] == ["error", "end"] and set(names[1:-2]) == {"data"}
        assert events[-1][1] is None
        error = json.loads(events[-2][1])
        assert error["status_code"] == status and error["message"] == error["error"]["message"]
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert error["error"]["code"] == code and f"`{route}`" in error["message"]
        text = "".join(json.loads(data)["content"] for name, data in events if name == "data")
        assert text.startswith("Scripted")
        again = http.post("/chat/invoke", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "fine"})
        assert again.status_code == 200 and again.json()["output"]["content"].startswith("Scripted")
    assert (code, True) in usage_statuses(platform)


@pytest.mark.parametrize("path", ["/chat/stream_log", "/chat/stream_events", "/chat/c/N4XyA/stream"])
def test_langserve_other_streams_end_the_same_way(platform, path):
    with platform.http() as http:
        headers = {"X-Model": "crash"}
        with http.stream("POST", path, json={"input": LANGSERVE_INPUT}, headers=headers) as response:
            assert response.status_code == 200
            events = sse_events(response)
    assert [name for name, _ in events][-2:] == ["error", "end"]
    error = json.loads(events[-2][1])
    assert error["status_code"] == 502 and error["error"]["code"] == "upstream_error"


def test_a_model_that_fails_at_once_gets_the_error_before_the_stream_starts_or_as_its_first_event(platform):
    """The model's first chunk is the error event: /v1 answers 502 before it commits to a stream; LangServe, which
    has committed already, sends the error and the end."""
    with platform.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "instant", "messages": MESSAGES, "stream": True})
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
        headers = {"X-Model": "instant"}
        with http.stream("POST", "/chat/stream", json={"input": LANGSERVE_INPUT}, headers=headers) as response:
            events = sse_events(response)
    assert [name for name, _ in events] == ["error", "end"]
    assert json.loads(events[0][1])["error"]["code"] == "upstream_error"


async def test_remote_runnable_raises_an_error_carrying_the_message(platform):
    chat = RemoteRunnable(
        f"{platform.url}/chat/", headers={"Authorization": f"Bearer {platform.key}", "X-Model": "crash"}
    )
    received = []
    with pytest.raises(httpx.HTTPStatusError) as raised:
        async for chunk in chat.astream({"messages": [HumanMessage(content=QUESTION)]}):
            received.append(chunk.content)
    assert raised.value.response.status_code == 502
    assert "the model crashed" in str(raised.value) and "`crash`" in str(raised.value)
    assert "".join(received).startswith("Scripted")


def test_the_openai_sdk_raises_api_error_with_the_error_body(platform):
    client = platform.openai()
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(model="crash", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "the model crashed" in raised.value.message
    assert raised.value.body["code"] == "upstream_error" and raised.value.body["type"] == "server_error"
    assert "".join(received).startswith("Scripted")


def test_a_client_that_leaves_mid_stream_ends_the_run(platform):
    """The chat service's stream (and its model call) ends with the client's connection, on both entry points."""
    long = " ".join(["word"] * 100)  # 20 s of chunks
    requests = [
        (
            "/v1/chat/completions",
            {"model": "slow", "stream": True, "messages": [{"role": "user", "content": long}]},
            {},
        ),
        ("/chat/stream", {"input": {"messages": [{"type": "human", "content": long}]}}, {"X-Model": "slow"}),
    ]
    for path, body, headers in requests:
        with platform.http() as http, http.stream("POST", path, json=body, headers=headers) as response:
            lines = response.iter_lines()
            while "Scripted" not in next(lines):
                pass
            assert len(platform.services.chat.running) == 1
        deadline = time.monotonic() + 10
        while len(platform.services.chat.running):
            assert time.monotonic() < deadline, f"{path}: the stream still runs after its client left"
            time.sleep(0.05)
    with platform.http() as http:
        assert http.post("/v1/chat/completions", json={"model": "fine", "messages": MESSAGES}).status_code == 200
