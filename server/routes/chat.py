"""POST /v1/chat/completions: OpenAI's chat API, plus server-side memory via ``conversation_id``."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from chains.errors import InvalidRequest
from server.completions import CompletionStream, completion_object, graph_input
from server.deps import ServicesDep
from server.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["chat"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, services: ServicesDep):
    started_at = time.perf_counter()
    if body.n != 1:
        raise InvalidRequest("Only n=1 is supported: ask for one choice per request.", param="n", code="unsupported_value")
    state, config = graph_input(body, started_at)
    graph = services.chat_graph

    if not body.stream:
        result = await graph.ainvoke(state, config)
        response = completion_object(result)
        headers = {"X-Conversation-ID": response["conversation_id"]} if "conversation_id" in response else None
        return JSONResponse(response, headers=headers)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = CompletionStream(graph, state, config, include_usage)
    await stream.start()
    headers = dict(SSE_HEADERS)
    if stream.info.get("conversation_id"):
        headers["X-Conversation-ID"] = stream.info["conversation_id"]
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
