"""A tiny OpenAI-compatible upstream with a fixed reply ("Mock reply.", plain or streamed in two pieces), for tests
that need a fast, predictable model server rather than the real local model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from chains.local_model_process import free_port

REPLY = "Mock reply."


def _completion(model: str) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def _chunks(model: str, include_usage: bool) -> Iterator[str]:
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    deltas = [{"role": "assistant", "content": ""}, {"content": "Mock "}, {"content": "reply."}]
    for delta in deltas:
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
    yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
    if include_usage:
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


async def _chat_completions(request: Request):
    body = await request.json()
    model = body.get("model") or "mock"
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_chunks(model, include_usage), media_type="text/event-stream")
    return JSONResponse(_completion(model))


async def _models(_: Request):
    model = {"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}
    return JSONResponse({"object": "list", "data": [model]})


@contextmanager
def serve_in_thread(app: ASGIApp, port: int | None = None) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a loopback port; yields its base URL (``http://127.0.0.1:P/v1``)."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the upstream did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_mock_upstream() -> Iterator[str]:
    """A tiny OpenAI-compatible server under uvicorn in a thread; yields its base URL (``.../v1``)."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/v1/models", _models, methods=["GET"]),
        ]
    )
    with serve_in_thread(app) as base_url:
        yield base_url
