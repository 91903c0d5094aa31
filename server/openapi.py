"""The OpenAPI document as the API really answers: OpenAI-shaped errors, SSE where routes stream."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ERROR_STATUSES = {
    "400": "Invalid request",
    "401": "No, unknown, revoked or expired API key",
    "403": "The key may not use this route",
    "404": "Not found, or not yours",
    "413": "Request body too large",
    "429": "Rate limit reached, or a monthly budget spent (insufficient_quota)",
    "503": "A dependency is down (the model server, Redis for limits and budgets)",
}
# One server-sent event: its `data` is a JSON chunk (or `[DONE]`), `event` names LangServe's kinds.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
}
STREAMING_SUFFIXES = ("/stream", "/stream_log", "/stream_events")
STREAMING_PATHS = {"/v1/chat/completions"}


def document_api(app: FastAPI) -> None:
    """Replace FastAPI's 422 validation schema with the errors the API sends, and declare SSE bodies."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    _document(path, operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    if path not in ("/healthz", "/readyz"):
        for status, description in ERROR_STATUSES.items():
            responses.setdefault(
                status,
                {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            )
    if path in STREAMING_PATHS or path.endswith(STREAMING_SUFFIXES):
        ok = responses.setdefault("200", {"description": "Successful Response"})
        ok.setdefault("content", {})["text/event-stream"] = {"schema": SSE_EVENT_SCHEMA}
