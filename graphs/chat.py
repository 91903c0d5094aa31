"""The chat request path as a LangGraph workflow.

preprocess -> load_memory -> call_model -> persist

``call_model`` streams tokens through LangGraph's custom stream
(``stream_mode="custom"``, events ``{"delta": str}``) when the input asks for
``stream``; otherwise it makes one plain call.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage, trim_messages
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

from chains.errors import ContextLengthExceeded, InvalidRequest
from chains.models import ModelRegistry, translate_upstream_error
from graphs.state import ChatInput, ChatState
from memory.history import ConversationMemory
from memory.store import ConversationStore, TurnRecord, new_conversation_id


@dataclass
class ChatDeps:
    """What the chat graph's nodes call out to."""

    models: ModelRegistry
    store: ConversationStore
    memory: ConversationMemory
    system_prompt: str | None = None
    memory_max_tokens: int = 2048


def new_response_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def build_chat_graph(deps: ChatDeps):
    """Compile the chat graph around ``deps``."""

    async def preprocess(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        messages = list(state.get("messages") or [])
        if not messages:
            raise InvalidRequest("`messages` must contain at least one message.", param="messages")
        if not any(m.type == "human" for m in messages) and not state.get("conversation_id"):
            raise InvalidRequest("`messages` must contain a user message.", param="messages")
        chat = deps.models.get(state.get("model"), allowed=state.get("allowed_models"))
        params = state.get("params") or {}
        app_id = state.get("app_id") or _configured(config, "app_id")
        if not app_id:
            raise InvalidRequest("The request has no app: call with an app's API key.")

        conversation_id = state.get("conversation_id") or _configured(config, "conversation_id")
        created = conversation_id == "new"
        if created:
            conversation_id = new_conversation_id()
        elif conversation_id:
            await deps.store.check_conversation(conversation_id, app_id=app_id, user=state.get("user"))

        system = [m for m in messages if m.type == "system"]
        default_prompt = state.get("app_system_prompt") or deps.system_prompt
        if not system and default_prompt:
            system = [SystemMessage(content=default_prompt)]
        turn = [m for m in messages if m.type != "system"]
        if not turn:
            raise InvalidRequest("`messages` must contain a user message.", param="messages")
        prompt_tokens = chat.tokens.count_messages(system + turn)
        budget = chat.route.context_window - chat.max_tokens_for(params)
        if prompt_tokens > budget:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {chat.route.context_window} tokens. "
                f"However, you requested {prompt_tokens + chat.max_tokens_for(params)} tokens "
                f"({prompt_tokens} in the messages, {chat.max_tokens_for(params)} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages",
            )
        return {
            "messages": turn,
            "system": system,
            "model_name": chat.route.name,
            "conversation_id": conversation_id,
            "app_id": app_id,
            "created_conversation": created,
            "prompt_tokens": prompt_tokens,
            "response_id": state.get("response_id") or new_response_id(),
            "started_at": state.get("started_at") or time.perf_counter(),
        }

    async def load_memory(state: ChatState) -> dict[str, Any]:
        conversation_id = state.get("conversation_id")
        chat = deps.models.get(state["model_name"])
        history: list[BaseMessage] = []
        if conversation_id and not state.get("created_conversation"):
            prior = await deps.memory.load(conversation_id)
            room = chat.route.context_window - chat.max_tokens_for(state.get("params") or {}) - state["prompt_tokens"]
            budget = min(deps.memory_max_tokens, room)
            if prior and budget > 0:
                history = trim_messages(
                    prior,
                    max_tokens=budget,
                    token_counter=chat.tokens.count_messages,
                    strategy="last",
                    start_on="human",
                )
        prompt_tokens = state["prompt_tokens"] + (chat.tokens.count_messages(history) if history else 0)
        return {
            "history": history,
            "prompt": [*state["system"], *history, *state["messages"]],
            "prompt_tokens": prompt_tokens,
        }

    async def call_model(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        chat = deps.models.get(state["model_name"])
        kwargs = chat.call_kwargs(state.get("params") or {})
        try:
            if state.get("stream"):
                write = get_stream_writer()
                answer: AIMessageChunk | None = None
                async for chunk in chat.client.astream(state["prompt"], config, **kwargs):
                    # Completion-style models start with the space after "Answer:"; drop it.
                    delta = chunk.text if answer is not None and answer.text else chunk.text.lstrip()
                    if delta:
                        write({"delta": delta})
                    answer = chunk if answer is None else answer + chunk
                answer = answer or AIMessageChunk(content="")
            else:
                answer = await chat.client.ainvoke(state["prompt"], config, **kwargs)
        except Exception as exc:  # the model server's failures become API errors
            error = translate_upstream_error(exc, chat.route)
            if error is None:
                raise
            raise error from exc
        usage = answer.usage_metadata or {}
        completion_tokens = usage.get("output_tokens") or chat.tokens.count_text(answer.text)
        return {
            "answer": AIMessage(content=answer.text.lstrip(), id=state["response_id"]),
            "prompt_tokens": usage.get("input_tokens") or state["prompt_tokens"],
            "completion_tokens": completion_tokens,
            "finish_reason": _finish_reason(answer),
            "latency_ms": (time.perf_counter() - state["started_at"]) * 1000,
        }

    async def persist(state: ChatState) -> dict[str, Any]:
        conversation_id = state.get("conversation_id")
        turn = TurnRecord(
            response_id=state["response_id"],
            app_id=state["app_id"],
            key_prefix=state.get("key_prefix"),
            model=state["model_name"],
            prompt_tokens=state["prompt_tokens"],
            completion_tokens=state["completion_tokens"],
            latency_ms=state["latency_ms"],
            conversation_id=conversation_id,
            create_conversation=bool(state.get("created_conversation")),
            user=state.get("user"),
            new_messages=state["messages"],
            answer=state["answer"].text,
            finish_reason=state["finish_reason"],
            stream=bool(state.get("stream")),
        )
        total = await deps.store.record_turn(turn)
        if conversation_id and total:
            await deps.memory.append(conversation_id, [*state["messages"], state["answer"]], total)
        return {}

    graph = StateGraph(ChatState, input_schema=ChatInput)
    graph.add_node("preprocess", preprocess)
    graph.add_node("load_memory", load_memory)
    graph.add_node("call_model", call_model)
    graph.add_node("persist", persist)
    graph.add_edge(START, "preprocess")
    graph.add_edge("preprocess", "load_memory")
    graph.add_edge("load_memory", "call_model")
    graph.add_edge("call_model", "persist")
    graph.add_edge("persist", END)
    return graph.compile(name="chat")


def _configured(config: RunnableConfig, key: str) -> Any:
    return (config.get("configurable") or {}).get(key)


def _finish_reason(answer: AIMessage) -> str:
    reason = (answer.response_metadata or {}).get("finish_reason")
    return reason if reason in ("stop", "length", "content_filter", "tool_calls") else "stop"
