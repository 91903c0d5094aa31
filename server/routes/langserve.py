"""The chat graph through LangServe at /chat: invoke, batch, stream, stream_log, playground.

LangServe builds these routes itself; around them this module adds the app-key
authentication, the caller's app and conversation in the run config, and the
checks that must happen before LangServe starts a response: a malformed body
(which LangServe would answer with a 500) or an unknown conversation or model
(which, once streaming, could only cut the stream short).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from langserve import add_routes

from chains.errors import APIError, InvalidRequest
from graphs.chat_runnable import as_chat_runnable
from memory.store import TurnRecord
from server.auth import require_app
from server.completions import caller_state, trace_config
from server.services import Services

PATH = "/chat"
MESSAGE_TYPES = {
    "human", "ai", "system", "HumanMessage", "AIMessage", "SystemMessage",
    "HumanMessageChunk", "AIMessageChunk", "SystemMessageChunk",
}  # fmt: skip


def mount(app: FastAPI, services: Services) -> None:
    async def per_request_config(config: dict, request: Request) -> dict:
        # LangServe drops configurable keys a client sends that the runnable does not declare;
        # the caller's app comes from its key, the conversation and model from headers.
        caller = await require_app(request)
        trace = trace_config(caller)
        configurable = {**(config.get("configurable") or {}), **caller_state(caller)}
        if conversation_id := request.headers.get("x-conversation-id"):
            configurable["conversation_id"] = conversation_id
        if model := request.headers.get("x-model"):
            configurable["model"] = model
        started = time.perf_counter()
        try:
            services.models.get(configurable.get("model"), allowed=caller.allowed_models)
            if (conversation_id := configurable.get("conversation_id")) and conversation_id != "new":
                await services.store.check_conversation(conversation_id, app_id=caller.app_id)
        except APIError as error:
            await services.store.record_turn(
                TurnRecord.failure(
                    response_id=f"chatcmpl-{uuid.uuid4().hex}",
                    app_id=caller.app_id,
                    key_prefix=caller.key_prefix,
                    model=configurable.get("model") or services.models.default or "",
                    latency_ms=(time.perf_counter() - started) * 1000,
                    stream=not request.url.path.endswith(("/invoke", "/batch")),
                    error=error,
                )
            )
            raise
        return {
            **config,
            "configurable": configurable,
            "tags": [*(config.get("tags") or []), *trace["tags"]],
            "metadata": {**(config.get("metadata") or {}), **trace["metadata"]},
        }

    add_routes(
        app,
        as_chat_runnable(services.chat_graph, services.store),
        path=PATH,
        playground_type="chat",
        per_req_config_modifier=per_request_config,
        enable_feedback_endpoint=False,
        dependencies=[Depends(require_app), Depends(check_body)],
    )


async def check_body(request: Request) -> None:
    """Refuse what LangServe would answer with a 500 or a cut stream: bad JSON, wrong types, no messages."""
    if request.method != "POST":
        return
    try:
        body = orjson.loads(await request.body())
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if request.url.path.endswith("/batch"):
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise InvalidRequest("`inputs` must be a non-empty list of chat inputs.", param="inputs")
        for index, item in enumerate(inputs):
            _check_input(item, f"inputs[{index}]")
        if "config" in body and not isinstance(body["config"], dict | list):
            raise InvalidRequest("`config` must be an object or a list of objects.", param="config")
        return
    _check_input(body.get("input"), "input")
    if "config" in body and not isinstance(body["config"], dict):
        raise InvalidRequest("`config` must be an object.", param="config")
    if "kwargs" in body and not isinstance(body["kwargs"], dict):
        raise InvalidRequest("`kwargs` must be an object.", param="kwargs")


def _check_input(value: Any, param: str) -> None:
    messages = value.get("messages") if isinstance(value, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(f"`{param}.messages` must be a non-empty list of messages.", param=f"{param}.messages")
    for index, message in enumerate(messages):
        where = f"{param}.messages[{index}]"
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            raise InvalidRequest(
                f"`{where}` must be a human, ai or system message (tool and function messages are not supported).",
                param=where,
            )
        if not _is_text(message.get("content")):
            raise InvalidRequest(f"`{where}.content` must be text or a list of text parts.", param=f"{where}.content")
    if not any(m["type"].startswith(("human", "Human")) for m in messages):
        raise InvalidRequest(f"`{param}.messages` must contain a human message.", param=f"{param}.messages")


def _is_text(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(part, str) or (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
        for part in content
    )
