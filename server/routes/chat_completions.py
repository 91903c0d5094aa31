"""POST /v1/chat/completions: OpenAI's chat API, plus server-side memory via ``conversation_id``.

A translation only: the request becomes a ``ChatCall`` for the chat service,
its ``ChatResult`` a ``chat.completion`` and its ``ChatStream`` OpenAI's SSE chunks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from errors import APIError
from server.chat_request import ChatCompletionRequest
from server.chat_service import ChatCall, ChatChoice, ChatResult, ChatStream
from server.deps import ChatCaller, ServicesDep
from server.failures import as_api_error
from server.gateway.request_context import sane_request_id
from server.responses import FastJSONResponse
from server.schemas import ChatCompletion, Usage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["chat"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"description": "A chat completion, or with `stream: true` a stream of chunks as server-sent events."}
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest, caller: ChatCaller, services: ServicesDep, request: Request
):
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    # A retry sends the same Idempotency-Key (or its own request id again): it gets the stored reply.
    idempotency_header, idempotency_key = "Idempotency-Key", request.headers.get("idempotency-key")
    if idempotency_key is None and (request_id := sane_request_id(request.headers.get("x-request-id"))):
        idempotency_header, idempotency_key = "X-Request-ID", request_id
    call = ChatCall(
        caller=caller,
        messages=body.lc_messages(),
        model=body.model,
        conversation_id=body.conversation_id,
        params=body.params(),
        user=body.user,
        vector_store_ids=body.vector_store_ids,
        use_cache=body.cache is not False and not no_cache,
        store=bool(body.store),
        idempotency_key=idempotency_key,
        idempotency_header=idempotency_header,
    )
    if not body.stream:
        result = await services.chat.complete(call)
        headers = answer_headers(
            {
                "cache": "hit" if result.cached else "miss",
                "conversation_id": result.conversation_id,
                "deployment": result.deployment,
                "replayed": result.replayed,
            }
        )
        return FastJSONResponse(completion_object(result), headers=headers)
    stream = await services.chat.stream(call)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    headers = {**SSE_HEADERS, **answer_headers(stream.info)}
    return StreamingResponse(sse_chunks(stream, include_usage), media_type="text/event-stream", headers=headers)


def answer_headers(info: dict[str, Any]) -> dict[str, str]:
    """What the platform tells of an answer in headers: cache hit, conversation, the deployment that answered, and
    whether it is the stored reply of an earlier request with the same idempotency key."""
    headers = {"X-Cache": "hit" if info.get("cache") == "hit" else "miss"}
    if info.get("conversation_id"):
        headers["X-Conversation-ID"] = info["conversation_id"]
    if info.get("deployment"):
        headers["X-Deployment"] = info["deployment"]
    if info.get("replayed"):
        headers["Idempotent-Replayed"] = "true"
    return headers


def completion_object(result: ChatResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": result.response_id,
        "object": "chat.completion",
        "created": result.created,
        "model": result.model,
        "system_fingerprint": None,
        "choices": [_choice_object(index, choice) for index, choice in enumerate(result.choices)],
        "usage": Usage.of(result.prompt_tokens, result.completion_tokens).model_dump(),
    }
    if result.conversation_id:
        body["conversation_id"] = result.conversation_id
    if result.citations:
        body["citations"] = result.citations
    if result.safety:
        body["safety"] = result.safety
    return body


def _choice_object(index: int, choice: ChatChoice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.tool_calls:
        message["tool_calls"] = choice.tool_calls
        message["content"] = choice.text or None  # as OpenAI: null content beside tool calls
    return {"index": index, "message": message, "logprobs": choice.logprobs, "finish_reason": choice.finish_reason}


async def sse_chunks(stream: ChatStream, include_usage: bool) -> AsyncIterator[bytes]:
    """The stream as OpenAI's ``chat.completion.chunk`` events, ending in ``data: [DONE]``.

    The status line is sent by then, so a failure (the model's, or the server shutting down) becomes a
    ``data: {"error": ...}`` event in OpenAI's shape, still followed by ``data: [DONE]``: the body always ends cleanly.
    """
    info = stream.info
    shape = _ChunkShape(info["response_id"], info["model_name"], info.get("conversation_id"), include_usage)
    try:
        yield shape.event({"role": "assistant", "content": ""})
        opened = {0}
        async for part in stream:
            if part.index not in opened:  # each choice opens with its role, as OpenAI streams n choices
                opened.add(part.index)
                yield shape.event({"role": "assistant", "content": ""}, index=part.index)
            if part.tool_calls:
                yield shape.event({"tool_calls": part.tool_calls}, index=part.index)
            if part.text:
                yield shape.event({"content": part.text}, logprobs=part.logprobs, index=part.index)
        result = stream.result
        assert result is not None
        for index, choice in enumerate(result.choices):
            if index not in opened:
                yield shape.event({"role": "assistant", "content": ""}, index=index)
            last = {"citations": result.citations, "safety": result.safety} if index == 0 else {}
            yield shape.event({}, choice.finish_reason, index=index, **last)
        if include_usage:
            yield shape.event(None, usage=Usage.of(result.prompt_tokens, result.completion_tokens).model_dump())
        yield b"data: [DONE]\n\n"
    except APIError as error:  # recorded by the chat service already
        yield b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # a bug in shaping the chunks: the client still gets an error and the end
        log.exception("streaming %s failed", info["response_id"])
        yield b"data: " + orjson.dumps(as_api_error(exc).to_dict()) + b"\n\n"
        yield b"data: [DONE]\n\n"


class _ChunkShape:
    def __init__(self, response_id: str, model: str, conversation_id: str | None, include_usage: bool) -> None:
        self.common: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage
        self.conversation_id = conversation_id

    def event(
        self,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        usage: Any = None,
        logprobs: Any = None,
        index: int = 0,
        citations: list[dict[str, Any]] | None = None,
        safety: dict[str, Any] | None = None,
    ) -> bytes:
        """One SSE event of choice ``index``; ``delta=None`` makes the usage chunk, whose ``choices`` is empty."""
        choices = (
            []
            if delta is None
            else [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        )
        body = {**self.common, "choices": choices}
        if self.include_usage:
            body["usage"] = usage
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        if citations:
            body["citations"] = citations
        if safety:
            body["safety"] = safety
        return b"data: " + orjson.dumps(body) + b"\n\n"
