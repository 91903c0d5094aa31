"""/openapi.json documents what every JSON route returns, and the response models send what the routes always sent.

Built without serving: no database, model or Redis is needed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from chains.model_routes import ModelRoute
from server.routes.conversations import conversation_object, message_object
from server.schemas import ConversationWithMessages
from server.settings import Settings
from storage import tables

# Operations whose bodies are not ours to document, each with the reason.
EXCEPTIONS = {
    r"^/chat/": "LangServe's routes, mounted and documented by the library",
    r"^/metrics$": "Prometheus text, not JSON (and left out of the document)",
    r"^/v1/files/\{file_id\}/content$": "the uploaded file's bytes, not JSON (documented as application/octet-stream)",
    r"^/v1/images/\{image_id\}/content$": "the image's PNG, not JSON (documented as image/png)",
}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    from server.app import create_app

    settings = Settings(_env_file=None, model_routes=[ModelRoute(name="mock", base_url="http://127.0.0.1:9/v1")])
    return create_app(settings)


@pytest.fixture(scope="module")
def spec(app) -> dict[str, Any]:
    return app.openapi()


def _excepted(path: str) -> bool:
    return any(re.search(pattern, path) for pattern in EXCEPTIONS)


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in spec["paths"].items()
        if not _excepted(path)
        for method, operation in operations.items()
    ]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _json_schema(spec: dict[str, Any], operation: dict[str, Any], status: str) -> dict[str, Any]:
    schema = operation["responses"][status]["content"]["application/json"]["schema"]
    return _resolve(spec, schema)


def test_every_json_operation_documents_its_body(spec):
    undocumented = []
    for method, path, operation in _operations(spec):
        status = next((s for s in ("200", "201") if s in operation["responses"]), None)
        try:
            schema = _json_schema(spec, operation, status) if status else {}
        except KeyError:
            schema = {}
        # Not `{}`, and not the `{"type": "object", "additionalProperties": true}` of a route returning a bare dict;
        # a choice of bodies (GET /v1/models/{id}: a chat route or the embedding model) documents each.
        branches = [_resolve(spec, branch) for branch in schema.get("anyOf", [])] or [schema]
        if not all(branch.get("properties") for branch in branches):
            undocumented.append(f"{method} {path}")
    assert not undocumented, f"no response schema: {undocumented}"


def test_the_exceptions_are_still_routes(app, spec):
    """So the list does not go stale; and the check above covers the platform's 18 operations, not none."""
    assert any(_excepted(path) for path in spec["paths"] if path.startswith("/chat/"))
    assert _excepted(app.url_path_for("metrics")) and "/metrics" not in spec["paths"]
    assert len(_operations(spec)) >= 18


def test_readyz_documents_503_with_the_same_body(spec):
    responses = spec["paths"]["/readyz"]["get"]["responses"]
    ok = responses["200"]["content"]["application/json"]["schema"]
    unavailable = responses["503"]["content"]["application/json"]["schema"]
    assert ok == unavailable == {"$ref": "#/components/schemas/Readiness"}
    assert _resolve(spec, ok)["properties"]["status"]["enum"] == ["ok", "degraded", "unavailable", "draining"]


def test_fields_always_sent_are_required(spec):
    """`object` and other fields with defaults are always in the body, so the schema requires them."""
    for name in ("Model", "Conversation", "ConversationMessage", "ApiKeyCreated", "UsageReport", "Health"):
        schema = spec["components"]["schemas"][name]
        assert set(schema["required"]) == set(schema["properties"]), name


def test_key_creation_documents_the_secret(spec):
    created = _json_schema(spec, spec["paths"]["/admin/keys"]["post"], "200")
    listed = _json_schema(spec, spec["paths"]["/admin/keys"]["get"], "200")["properties"]["data"]["items"]
    listed = _resolve(spec, listed)
    assert "key" in created["properties"] and "key" not in listed["properties"]


def _message(role: str, **fields) -> dict[str, Any]:
    """The message as GET /v1/conversations/{id} sends it."""
    conversation = tables.Conversation(id="conv_x", app_id="app_x", meta={}, created_at=1, updated_at=2)
    message = tables.Message(id=7, conversation_id="conv_x", role=role, content="Hi", created_at=1_700_000_000, **fields)
    messages = [message_object(message)]
    retrieved = ConversationWithMessages(**conversation_object(conversation).model_dump(), messages=messages)
    return retrieved.model_dump(mode="json")["messages"][0]


def test_user_messages_have_no_assistant_fields():
    assert _message("user") == {
        "id": "msg_7",
        "object": "conversation.message",
        "created_at": 1_700_000_000,
        "role": "user",
        "content": "Hi",
    }


def test_assistant_messages_carry_their_response():
    assert _message(
        "assistant",
        response_id="chatcmpl-1",
        model="mock",
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=3,
        latency_ms=12.5,
    ) == {
        "id": "msg_7",
        "object": "conversation.message",
        "created_at": 1_700_000_000,
        "role": "assistant",
        "content": "Hi",
        "response_id": "chatcmpl-1",
        "model": "mock",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "latency_ms": 12.5,
        "tool_calls": None,
        "citations": None,
        "safety": None,
    }
    # One that called a tool shows the call in OpenAI's shape; the tool's answer names the call.
    called = _message("assistant", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1"}])
    assert called["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    ]
    assert _message("tool", tool_call_id="call_1")["tool_call_id"] == "call_1"
    # An assistant message the client sent: its response fields are explicit nulls, not missing.
    sent = _message("assistant")
    assert sent["response_id"] is None and sent["latency_ms"] is None
    assert sent["usage"] == {"prompt_tokens": None, "completion_tokens": None, "total_tokens": 0}
