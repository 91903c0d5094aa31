"""POST /v1/chat/completions: OpenAI's chat API, plus server-side memory via ``conversation_id``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from chains.errors import APIError, InvalidRequest
from memory.store import TurnRecord
from server.completions import CompletionStream, completion_object, graph_input
from server.deps import AppCaller, ServicesDep
from server.metrics import MetricsDep
from server.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["chat"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions")
async def create_chat_completion(
    body: ChatCompletionRequest, caller: AppCaller, services: ServicesDep, metrics: MetricsDep
):
    started_at = time.perf_counter()
    recorder = metrics.chat(body.model or services.models.default, started_at)  # TTFT, tokens, model errors
    if body.n != 1:
        raise InvalidRequest("Only n=1 is supported: ask for one choice per request.", param="n", code="unsupported_value")
    state, config = graph_input(body, caller, started_at)
    graph = services.chat_graph

    async def record_failure(error: APIError, info: dict[str, Any] | None = None) -> None:
        """A usage record for a request that failed (successful ones are written by the graph)."""
        recorder.failed(error, info)
        await services.store.record_turn(
            TurnRecord.failure(
                response_id=state["response_id"],
                app_id=caller.app_id,
                key_prefix=caller.key_prefix,
                user=body.user,
                model=(info or {}).get("model_name") or body.model or services.models.default or "",
                latency_ms=(time.perf_counter() - started_at) * 1000,
                stream=body.stream,
                error=error,
            )
        )

    if not body.stream:
        try:
            result = await graph.ainvoke(state, config)
        except APIError as error:
            await record_failure(error)
            raise
        recorder.finished(result)
        # Charged after the answer leaves: the next request of this key sees it, this one does not wait for it.
        background = BackgroundTask(services.limiter.spend_tokens, caller, result["prompt_tokens"] + result["completion_tokens"])
        response = completion_object(result)
        headers = {"X-Conversation-ID": response["conversation_id"]} if "conversation_id" in response else None
        return JSONResponse(response, headers=headers, background=background)

    async def finish(info: dict[str, Any], error: APIError | None) -> None:
        if error is not None:
            await record_failure(error, info)
        else:
            recorder.finished(info)
            await services.limiter.spend_tokens(caller, info.get("prompt_tokens", 0) + info.get("completion_tokens", 0))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = CompletionStream(
        graph, state, config, include_usage, on_finish=finish, on_first_token=recorder.first_token
    )
    try:
        await stream.start()
    except APIError as error:
        await record_failure(error)
        raise
    headers = dict(SSE_HEADERS)
    if stream.info.get("conversation_id"):
        headers["X-Conversation-ID"] = stream.info["conversation_id"]
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
