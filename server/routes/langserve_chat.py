"""The chat service through LangServe at /chat: invoke, batch, stream, stream_log, playground.

LangServe builds these routes itself; around them this module adds the app-key
authentication, the caller and its conversation in the run config, the checks
that must happen before LangServe starts a response (a malformed body, which
LangServe would answer with a 500; an unknown conversation or model, which
once streaming could only cut the stream short), and a request count per input
of a batch. The runnable it serves is a thin adapter: messages in, the chat
service's answer out as AI message chunks.

The streaming routes (stream, stream_log, stream_events) are served here, by LangServe's own ``APIHandler``, so that
a stream that fails once started (the model's failure, or the server shutting down) ends with an ``error`` event
that carries the error (its status and OpenAI's error object) and then ``end``, in a complete body: LangServe's
routes send a generic 500 and cut the body.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request, Response
from langchain_core.messages import AIMessageChunk, AnyMessage, message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
from langserve import APIHandler, add_routes
from langserve.playground import serve_playground
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from sse_starlette import EventSourceResponse

from errors import APIError, InvalidRequest
from server.chat_service import ChatCall, ChatService, response_id_for, trace_config
from server.failures import as_api_error
from server.gateway.auth import admit, app_caller
from server.services import Services
from server.shutdown import RunningChats
from storage.tenants import Caller

log = logging.getLogger(__name__)

PATH = "/chat"
MESSAGE_TYPES = {
    "human", "ai", "system", "tool", "HumanMessage", "AIMessage", "SystemMessage", "ToolMessage",
    "HumanMessageChunk", "AIMessageChunk", "SystemMessageChunk", "ToolMessageChunk",
}  # fmt: skip


class ChatRequest(BaseModel):
    """Input of /chat: the messages (only the new ones when the conversation is kept server-side)."""

    messages: list[AnyMessage] = Field(description="chat messages, oldest first")


# What /chat answers: an AI message, streamed as AI message chunks (the last one with the finish reason, model,
# conversation id and usage). Declared by hand because LangServe's chat playground renders its chat only for an
# output schema that is an anyOf/oneOf with a `type` enum holding "ai"; pydantic 2 writes a message class's
# type as a `const`, which the playground does not recognise, and it then shows no chat box.
ANSWER_SCHEMA = {
    "anyOf": [
        {
            "title": "AIMessageChunk",
            "type": "object",
            "properties": {
                "content": {"type": "string"},
                "type": {"type": "string", "enum": ["AIMessageChunk", "ai"]},
                "id": {"type": ["string", "null"], "description": "the response id"},
                "response_metadata": {
                    "type": "object",
                    "description": "on the last chunk: finish_reason, model_name, deployment, conversation_id, replayed, cached, citations, safety",
                },
                "usage_metadata": {
                    "type": ["object", "null"],
                    "description": "on the last chunk: input_tokens, output_tokens, total_tokens",
                },
            },
            "required": ["content", "type"],
        }
    ]
}
ChatAnswer = Annotated[AIMessageChunk, WithJsonSchema(ANSWER_SCHEMA)]


def chat_runnable(service: ChatService) -> Runnable:
    """The chat service as a chat-shaped runnable, as LangServe's chat playground wants it:
    ``{"messages": [...]}`` in, the answer as AI message chunks out (the last one with usage)."""

    async def answer(inputs: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[AIMessageChunk]:
        request: Any = None
        async for item in inputs:
            request = item
        messages = request.get("messages") if isinstance(request, dict) else getattr(request, "messages", None)
        configurable = config.get("configurable") or {}
        call = ChatCall(
            caller=configurable["caller"],
            # The playground sends earlier answers back as chunks; the graph and memory want messages.
            messages=[message_chunk_to_message(m) for m in messages or []],
            model=configurable.get("model"),
            conversation_id=configurable.get("conversation_id"),
            use_cache=configurable.get("use_cache", True),
            run_id=_own_run_id(config),
            idempotency_key=configurable.get("idempotency_key"),
        )
        if not configurable.get("stream", True):  # /invoke and /batch: the client waits for the whole answer
            result = await service.complete(call, config)
            yield AIMessageChunk(
                content=result.first.text,
                id=result.response_id,
                tool_call_chunks=[_tool_call_chunk(index, call) for index, call in enumerate(result.first.tool_calls)],
            )
        else:
            stream = await service.stream(call, config)
            async for part in stream:
                yield AIMessageChunk(
                    content=part.text,
                    id=stream.info["response_id"],
                    tool_call_chunks=[_tool_call_chunk(delta["index"], delta) for delta in part.tool_calls or []],
                )
            result = stream.result
        yield AIMessageChunk(
            content="",
            id=result.response_id,
            response_metadata={
                "finish_reason": result.first.finish_reason,
                "model_name": result.model,
                "deployment": result.deployment,
                "conversation_id": result.conversation_id,
                "replayed": result.replayed,
                "cached": result.cached,
                "citations": result.citations,
                "safety": result.safety,
            },
            usage_metadata={
                "input_tokens": result.prompt_tokens,
                "output_tokens": result.completion_tokens,
                "total_tokens": result.total_tokens,
            },
        )

    return RunnableGenerator(answer, name="chat").with_types(input_type=ChatRequest, output_type=ChatAnswer)


def _tool_call_chunk(index: int, call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call (or streamed delta) as LangChain's tool-call chunk."""
    function = call.get("function") or {}
    return {
        "type": "tool_call_chunk",
        "index": index,
        "id": call.get("id"),
        "name": function.get("name"),
        "args": function.get("arguments"),
    }


def _own_run_id(config: RunnableConfig) -> uuid.UUID | None:
    """The id of this runnable's own trace run (LangServe's run id): the response id is made from it."""
    parent = getattr(config.get("callbacks"), "parent_run_id", None)
    return uuid.UUID(str(parent)) if parent else None


def mount(app: FastAPI, services: Services) -> None:
    async def per_request_config(config: dict, request: Request) -> dict:
        # LangServe drops configurable keys a client sends that the runnable does not declare;
        # the caller comes from its key, the conversation and model from headers.
        caller = await app_caller(request)  # admitted by `gate` already
        configurable = {
            **(config.get("configurable") or {}),
            "caller": caller,
            "stream": not request.url.path.endswith(("/invoke", "/batch")),
            "use_cache": "no-cache" not in request.headers.get("cache-control", "").lower(),
        }
        if conversation_id := request.headers.get("x-conversation-id"):
            configurable["conversation_id"] = conversation_id
        if model := request.headers.get("x-model"):
            configurable["model"] = model
        if (key := request.headers.get("idempotency-key")) is not None:
            if request.url.path.endswith("/batch"):
                raise InvalidRequest(
                    "An Idempotency-Key names one request; /chat/batch sends several: send each to /chat/invoke.",
                    param="Idempotency-Key",
                )
            configurable["idempotency_key"] = key
        await services.chat.check(
            ChatCall(
                caller=caller,
                messages=[],
                model=configurable.get("model"),
                conversation_id=configurable.get("conversation_id"),
            )
        )
        trace = trace_config(caller)
        return {
            **config,
            "configurable": configurable,
            "tags": [*(config.get("tags") or []), *trace["tags"]],
            "metadata": {**(config.get("metadata") or {}), **trace["metadata"]},
        }

    runnable = chat_runnable(services.chat)
    options: dict[str, Any] = {
        "path": PATH,
        "playground_type": "chat",
        "per_req_config_modifier": per_request_config,
        "enable_feedback_endpoint": False,
    }
    mount_feedback(app, services, runnable)
    mount_streams(app, APIHandler(runnable, **options), services.chat.running)
    add_routes(app, runnable, **options, dependencies=[Depends(gate)])


def mount_streams(app: FastAPI, handler: APIHandler, streams: RunningChats) -> None:
    """/chat/stream, /chat/stream_log, /chat/stream_events and their ``/chat/c/{config_hash}/`` forms, served before
    LangServe's routes of the same paths by a handler made with the same options; their events end cleanly
    (``ending_cleanly``)."""
    served = {"stream": handler.stream, "stream_log": handler.stream_log, "stream_events": handler.astream_events}
    for name, serve in served.items():
        plain, with_config = _stream_endpoints(serve, streams)
        for path, endpoint in ((f"{PATH}/{name}", plain), (f"{PATH}/c/{{config_hash}}/{name}", with_config)):
            app.add_api_route(path, endpoint, methods=["POST"], include_in_schema=False, dependencies=[Depends(gate)])


def _stream_endpoints(
    serve: Callable[..., Awaitable[EventSourceResponse]], streams: RunningChats
) -> tuple[Callable[..., Awaitable[Response]], Callable[..., Awaitable[Response]]]:
    async def plain(request: Request) -> Response:
        return ending_cleanly(await serve(request), streams)

    async def with_config(request: Request, config_hash: str) -> Response:
        return ending_cleanly(await serve(request, config_hash=config_hash), streams)

    return plain, with_config


def ending_cleanly(response: EventSourceResponse, streams: RunningChats) -> EventSourceResponse:
    """LangServe's stream response, ending with ``error`` (the error's own status and message, and OpenAI's error
    object) and ``end`` when it fails; and left to run until the chat service stops it at shutdown (``sse_starlette``
    would cancel it as soon as the server begins to shut down)."""
    return EventSourceResponse(
        _clean_events(response.body_iterator), shutdown_grace_period=streams.grace_after_signal()
    )


async def _clean_events(events: AsyncGenerator[Any, None]) -> AsyncIterator[Any]:
    """LangServe ends a failed stream with a generic 500 ``error`` event, then re-raises (which cuts the body). Here
    the event carries the error raised instead, and ``end`` follows."""
    try:
        async for event in events:
            if isinstance(event, dict) and event.get("event") == "error":
                error = await _raised(events)
                yield {"event": "error", "data": orjson.dumps(error_event_data(error)).decode()}
                yield {"event": "end"}
                return
            yield event
    finally:  # also when the response is closed early (the client left): LangServe's stream and the run end now
        await events.aclose()


async def _raised(events: AsyncGenerator[Any, None]) -> APIError:
    """What LangServe re-raises after its error event (the chat service's ``APIError``, recorded already)."""
    try:
        await events.__anext__()
    except StopAsyncIteration:
        pass
    except Exception as exc:
        if not isinstance(exc, APIError):
            log.error("chat stream failed", exc_info=exc)
        return as_api_error(exc)
    return as_api_error(RuntimeError("LangServe ended a stream with an error it did not raise"))


def error_event_data(error: APIError) -> dict[str, Any]:
    """The data of an ``error`` event: ``status_code`` and ``message`` as LangServe's ``RemoteRunnable`` reads them
    (it raises ``httpx.HTTPStatusError`` with them), and the error in OpenAI's shape."""
    return {"status_code": error.status_code, "message": error.message, **error.to_dict()}


class PlaygroundFeedback(BaseModel):
    """LangServe's feedback request (``FeedbackCreateRequest``), as the chat playground's thumbs send it."""

    model_config = ConfigDict(extra="forbid")

    run_id: uuid.UUID = Field(description="the LangServe run id of the answer")
    key: StrictStr = Field(min_length=1, max_length=128)
    score: StrictInt | StrictFloat | StrictBool | None = None
    value: Any = None
    comment: StrictStr | None = Field(None, max_length=10_000)
    correction: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


def mount_feedback(app: FastAPI, services: Services, runnable: Runnable) -> None:
    """``/chat/feedback``: the playground's thumbs, into the platform's feedback store (LangServe's own endpoint
    would send them to LangSmith only, and shows the thumbs only when tracing is on). A run id is the answer's
    response id in another form. The playground's page is served here (before LangServe's route) to show them."""
    from server.routes.feedback import FeedbackCreate, record_feedback

    @app.get(f"{PATH}/playground/", include_in_schema=False, dependencies=[Depends(gate)])
    @app.get(f"{PATH}/playground/index.html", include_in_schema=False, dependencies=[Depends(gate)])
    async def playground_page(request: Request) -> Response:
        base_url = request.scope.get("root_path", "").rstrip("/") + PATH + "/playground"
        return await serve_playground(
            runnable, runnable.input_schema, runnable.output_schema, ["configurable"], base_url, "index.html",
            feedback_enabled=True, public_trace_link_enabled=False, playground_type="chat",
        )  # fmt: skip

    @app.head(f"{PATH}/feedback", include_in_schema=False)
    async def feedback_enabled(caller: Annotated[Caller, Depends(app_caller)]) -> Response:
        return Response(status_code=200)

    @app.post(f"{PATH}/feedback", tags=["chat"])
    async def playground_feedback(
        body: PlaygroundFeedback, request: Request, caller: Annotated[Caller, Depends(app_caller)]
    ) -> dict[str, Any]:
        await admit(request, caller)
        if body.score is None:
            raise InvalidRequest("`score` is required: 1 or 0 (thumbs), -1, or a number from 0 to 1.", param="score")
        correction = (body.correction or {}).get("answer") if isinstance(body.correction, dict) else None
        try:
            checked = FeedbackCreate(
                response_id=response_id_for(body.run_id),
                score=float(body.score),
                comment=body.comment,
                correction=correction if isinstance(correction, str) else None,
            )
        except ValidationError:
            raise InvalidRequest(
                "`score` must be 1 or -1 (thumbs, also 0 for down), or a number from 0 to 1.", param="score"
            ) from None
        row = await record_feedback(
            services, caller, checked.response_id, score=checked.score, comment=checked.comment,
            correction=checked.correction,
        )  # fmt: skip
        moment = dt.datetime.fromtimestamp(row.updated_at, dt.UTC).isoformat()
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, row.id)),
            "run_id": str(body.run_id),
            "key": body.key,
            "score": row.score,
            "value": body.value,
            "comment": row.comment,
            "correction": body.correction,
            "created_at": dt.datetime.fromtimestamp(row.created_at, dt.UTC).isoformat(),
            "modified_at": moment,
        }


async def gate(request: Request, caller: Annotated[Caller, Depends(app_caller)]) -> None:
    """Every /chat route: an app's key, a body LangServe can serve, and one request counted per chat input."""
    await admit(request, caller, requests=await check_body(request), chat=request.method == "POST")


async def check_body(request: Request) -> int:
    """Refuse what LangServe would answer with a 500 or a cut stream: bad JSON, wrong types, no messages.
    Returns how many chat requests the body makes."""
    if request.method != "POST":
        return 1
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
        return len(inputs)
    _check_input(body.get("input"), "input")
    if "config" in body and not isinstance(body["config"], dict):
        raise InvalidRequest("`config` must be an object.", param="config")
    if "kwargs" in body and not isinstance(body["kwargs"], dict):
        raise InvalidRequest("`kwargs` must be an object.", param="kwargs")
    return 1


def _check_input(value: Any, param: str) -> None:
    messages = value.get("messages") if isinstance(value, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(f"`{param}.messages` must be a non-empty list of messages.", param=f"{param}.messages")
    for index, message in enumerate(messages):
        where = f"{param}.messages[{index}]"
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            raise InvalidRequest(
                f"`{where}` must be a human, ai, system or tool message (function messages are not supported).",
                param=where,
            )
        if not _is_content(message.get("content")):
            raise InvalidRequest(
                f"`{where}.content` must be text or a list of content parts.", param=f"{where}.content"
            )
        _check_tool_calls(message, where)
        if kind.startswith(("tool", "Tool")) and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest(
                f"`{where}.tool_call_id` must name the tool call it answers.", param=f"{where}.tool_call_id"
            )
    if not any(m["type"].startswith(("human", "Human")) for m in messages):
        raise InvalidRequest(f"`{param}.messages` must contain a human message.", param=f"{param}.messages")


TOOL_CALL_KEYS = {"name", "args", "id", "type"}


def _check_tool_calls(message: dict[str, Any], where: str) -> None:
    """An AI message's tool calls as LangChain writes them: {"name", "args", "id"}; nothing LangChain would choke on."""
    calls = message.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list)
        and all(
            isinstance(call, dict)
            and call.keys() <= TOOL_CALL_KEYS
            and isinstance(call.get("name"), str)
            and isinstance(call.get("args", {}), dict)
            and isinstance(call.get("id"), str | None)
            for call in calls
        )
    ):
        raise InvalidRequest(
            f'`{where}.tool_calls` must be a list of {{"name", "args", "id"}} objects.', param=f"{where}.tool_calls"
        )
    for key in ("invalid_tool_calls", "tool_call_chunks"):
        if message.get(key):
            raise InvalidRequest(f"`{where}.{key}` must be empty in a request.", param=f"{where}.{key}")


def _is_content(content: Any) -> bool:
    """Text, or a list of text and typed parts (which parts the model takes is checked against its route)."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(part, str)
        or (
            isinstance(part, dict)
            and isinstance(part.get("type"), str)
            and (part["type"] != "text" or isinstance(part.get("text"), str))
        )
        for part in content
    )
