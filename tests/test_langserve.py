"""The chat graph through LangServe at /chat: invoke, stream, batch, playground, RemoteRunnable."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import HumanMessage
from langserve import RemoteRunnable

pytestmark = pytest.mark.slow

QUESTION = {"messages": [{"type": "human", "content": "What is the capital of France?"}]}


def test_invoke_returns_an_ai_message(greedy_server):
    with greedy_server.http() as http:
        response = http.post("/chat/invoke", json={"input": QUESTION})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["type"] == "AIMessageChunk"
    assert "Paris" in output["content"]
    assert output["usage_metadata"]["output_tokens"] > 0


def test_stream_sends_token_events(greedy_server):
    with greedy_server.http() as http, http.stream("POST", "/chat/stream", json={"input": QUESTION}) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    contents = [json.loads(line[5:]).get("content", "") for line in events[:-1]]
    assert "Paris" in "".join(contents)
    assert len(contents) >= 2


def test_batch_answers_each_input(server):
    second = {"messages": [{"type": "human", "content": "Who wrote Romeo and Juliet?"}]}
    with server.http() as http:
        response = http.post("/chat/batch", json={"inputs": [QUESTION, second]})
    assert response.status_code == 200, response.text
    outputs = response.json()["output"]
    assert len(outputs) == 2 and all(o["content"] for o in outputs)


def test_playground_and_schemas_are_served(server):
    with server.http() as http:
        page = http.get("/chat/playground/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        schema = http.get("/chat/input_schema").json()
        assert "messages" in json.dumps(schema)


def test_playground_stream_log_works(server):
    """The chat playground streams through /stream_log with an empty config."""
    body = {"input": QUESTION, "config": {}, "kwargs": {}}
    with server.http() as http, http.stream("POST", "/chat/stream_log", json=body) as response:
        assert response.status_code == 200
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(data) > 2


async def test_remote_runnable_with_server_side_conversation(server):
    with server.http() as http:
        conversation = http.post("/v1/conversations", json={"title": "langserve"}).json()["id"]
    chat = RemoteRunnable(
        f"{server.url}/chat/", headers={"X-Conversation-ID": conversation, "Authorization": f"Bearer {server.key}"}
    )
    first = await chat.ainvoke({"messages": [HumanMessage(content="Who wrote Romeo and Juliet?")]})
    assert first.content
    chunks = [chunk async for chunk in chat.astream({"messages": [HumanMessage(content="Name another play.")]})]
    assert "".join(c.content for c in chunks)
    with server.http() as http:
        stored = http.get(f"/v1/conversations/{conversation}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0]["content"] == "Who wrote Romeo and Juliet?"


def test_langserve_errors_keep_the_error_shape(server):
    with server.http() as http:
        missing = http.post("/chat/invoke", json={"input": QUESTION}, headers={"X-Conversation-ID": "conv_nope"})
        assert missing.status_code == 404
        assert missing.json()["error"]["param"] == "conversation_id"
        bad_model = http.post("/chat/invoke", json={"input": QUESTION}, headers={"X-Model": "nope"})
        assert bad_model.status_code == 404
        assert bad_model.json()["error"]["code"] == "model_not_found"
        empty = http.post("/chat/invoke", json={"input": {"messages": []}})
        assert empty.status_code == 400
        assert empty.json()["error"] == {
            "message": "`input.messages` must be a non-empty list of messages.",
            "type": "invalid_request_error",
            "param": "input.messages",
            "code": None,
        }
