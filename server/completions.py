"""Running the chat graph for one request, and shaping its result as OpenAI's objects."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from chains.errors import APIError, InternalError
from graphs.state import ChatInput
from memory.tenants import Caller
from server.observability import current_request_id
from server.schemas import ChatCompletionRequest


def caller_state(caller: Caller) -> dict[str, Any]:
    """What the chat graph needs to know of the calling app."""
    return {
        "app_id": caller.app_id,
        "key_prefix": caller.key_prefix,
        "app_system_prompt": caller.system_prompt,
        "allowed_models": list(caller.allowed_models) if caller.allowed_models is not None else None,
    }


def trace_config(caller: Caller) -> dict[str, Any]:
    """LangSmith tags and metadata naming the app and key (never the key itself)."""
    return {
        "tags": [f"app:{caller.app_name}", f"key:{caller.key_prefix}"],
        "metadata": {"app": caller.app_name, "app_id": caller.app_id, "key_prefix": caller.key_prefix},
    }


def graph_input(
    body: ChatCompletionRequest, caller: Caller, started_at: float
) -> tuple[ChatInput, dict[str, Any]]:
    """The graph's input and run config; the response id is the run id, so traces and feedback meet."""
    run_id = uuid.uuid4()
    state: ChatInput = {
        "messages": [message.to_message() for message in body.messages],
        "model": body.model,
        "conversation_id": body.conversation_id,
        "params": body.generation_params(),
        "stream": body.stream,
        "response_id": f"chatcmpl-{run_id.hex}",
        "user": body.user,
        "started_at": started_at,
        **caller_state(caller),
    }
    trace = trace_config(caller)
    metadata = {**trace["metadata"], "user": body.user, "request_id": current_request_id()}
    config = {"run_id": run_id, "run_name": "chat", "tags": trace["tags"], "metadata": metadata}
    return state, config


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_object(state: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": state["response_id"],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state["model_name"],
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": state["answer"].text, "refusal": None},
                "logprobs": None,
                "finish_reason": state["finish_reason"],
            }
        ],
        "usage": usage_object(state["prompt_tokens"], state["completion_tokens"]),
    }
    if state.get("conversation_id"):
        body["conversation_id"] = state["conversation_id"]
    return body


class CompletionStream:
    """The graph's streamed run as OpenAI's SSE chunks.

    ``start()`` runs the graph up to its first token, so that bad input, an
    unknown conversation or a model that is down still get a plain error
    response with their status; after that, errors become an SSE error event.
    """

    def __init__(
        self,
        graph,
        state: ChatInput,
        config: dict[str, Any],
        include_usage: bool,
        on_finish: Callable[[dict[str, Any], APIError | None], Awaitable[None]] | None = None,
        on_first_token: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.on_finish = on_finish
        self.on_first_token = on_first_token  # called once, with the run's info, when the model's first token arrives
        self._events = graph.astream(state, config, stream_mode=["custom", "updates"])
        self._buffered: list[tuple[str, Any]] = []
        self.include_usage = include_usage
        self.info: dict[str, Any] = {}
        self.created = int(time.time())

    async def start(self) -> None:
        try:
            async for mode, chunk in self._events:
                self._buffered.append((mode, chunk))
                self._absorb(mode, chunk)
                if mode == "custom":
                    break
        except BaseException:
            await self._events.aclose()
            raise

    def _absorb(self, mode: str, chunk: Any) -> None:
        if mode == "custom" and self.on_first_token is not None:
            self.on_first_token(self.info)
            self.on_first_token = None
        if mode == "updates":
            for update in chunk.values():
                if update:
                    self.info.update(update)

    def _chunk(self, delta: dict[str, Any] | None, finish_reason: str | None = None, usage: Any = None) -> bytes:
        """One SSE event; ``delta=None`` makes the usage chunk, whose ``choices`` is empty."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        body: dict[str, Any] = {
            "id": self.info["response_id"],
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.info["model_name"],
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage
        if self.info.get("conversation_id"):
            body["conversation_id"] = self.info["conversation_id"]
        return b"data: " + orjson.dumps(body) + b"\n\n"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            for mode, chunk in self._buffered:
                if mode == "custom":
                    yield self._chunk({"content": chunk["delta"]})
            self._buffered.clear()
            async for mode, chunk in self._events:
                self._absorb(mode, chunk)
                if mode == "custom":
                    yield self._chunk({"content": chunk["delta"]})
            yield self._chunk({}, self.info.get("finish_reason", "stop"))
            if self.include_usage:
                usage = usage_object(self.info.get("prompt_tokens", 0), self.info.get("completion_tokens", 0))
                yield self._chunk(None, usage=usage)
            yield b"data: [DONE]\n\n"
            await self._finish(None)
        except APIError as error:
            yield b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
            await self._finish(error)
        except Exception:  # noqa: BLE001 - the status line is sent; report in-band
            error = InternalError("The stream failed on the server.")
            yield b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
            await self._finish(error)
        finally:
            await self._events.aclose()

    async def _finish(self, error: APIError | None) -> None:
        if self.on_finish is not None:
            await self.on_finish(self.info, error)

