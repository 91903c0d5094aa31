"""The chat graph as a chat-shaped runnable: messages in, an AI message (streamed) out.

This is what LangServe serves at ``/chat``: its chat playground wants a
``{"messages": [...]}`` input and a message output. The conversation id comes
from the run config (``configurable.conversation_id``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import AIMessageChunk, AnyMessage, message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
from pydantic import BaseModel, Field

from chains.errors import APIError
from memory.store import ConversationStore, TurnRecord


class ChatRequest(BaseModel):
    """Input of /chat: the messages (only the new ones when the conversation is kept server-side)."""

    messages: list[AnyMessage] = Field(description="chat messages, oldest first")


def as_chat_runnable(graph, store: ConversationStore | None = None) -> Runnable:
    """``store``, when given, gets a usage record for each request that fails inside the graph."""

    async def answer(inputs: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[AIMessageChunk]:
        request: Any = None
        async for item in inputs:
            request = item
        messages = request.get("messages") if isinstance(request, dict) else getattr(request, "messages", None)
        configurable = config.get("configurable") or {}
        state = {
            # The playground sends earlier answers back as chunks; the graph and memory want messages.
            "messages": [message_chunk_to_message(m) for m in messages or []],
            "model": configurable.get("model"),
            "conversation_id": configurable.get("conversation_id"),
            "stream": True,
            "response_id": f"chatcmpl-{uuid.uuid4().hex}",
            **{key: configurable.get(key) for key in ("app_id", "key_prefix", "app_system_prompt", "allowed_models")},
        }
        info: dict[str, Any] = {}
        started = time.perf_counter()
        try:
            async for mode, chunk in graph.astream(state, config, stream_mode=["custom", "updates"]):
                if mode == "custom":
                    yield AIMessageChunk(content=chunk["delta"], id=state["response_id"])
                else:
                    for update in chunk.values():
                        info.update(update or {})
        except APIError as error:
            if store is not None and state["app_id"]:
                await store.record_turn(
                    TurnRecord.failure(
                        response_id=state["response_id"],
                        app_id=state["app_id"],
                        key_prefix=state["key_prefix"],
                        model=info.get("model_name") or state["model"] or "",
                        latency_ms=(time.perf_counter() - started) * 1000,
                        stream=True,
                        error=error,
                    )
                )
            raise
        yield AIMessageChunk(
            content="",
            id=state["response_id"],
            response_metadata={
                "finish_reason": info.get("finish_reason"),
                "model_name": info.get("model_name"),
                "conversation_id": info.get("conversation_id"),
            },
            usage_metadata={
                "input_tokens": info.get("prompt_tokens", 0),
                "output_tokens": info.get("completion_tokens", 0),
                "total_tokens": info.get("prompt_tokens", 0) + info.get("completion_tokens", 0),
            },
        )

    return RunnableGenerator(answer, name="chat").with_types(input_type=ChatRequest, output_type=AIMessageChunk)
