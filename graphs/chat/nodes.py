"""The chat graph's nodes: small functions of the state, with their dependencies in the runtime context.

Each returns only the keys it sets. The wiring is in ``graphs.chat.graph``.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage, trim_messages
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from chains.model_routes import ChatModel, translate_upstream_error
from chains.output_stage import OutputStage
from chains.route_features import check_request, content_kinds
from errors import ContextLengthExceeded, InvalidRequest
from graphs.chat.context import ChatContext
from graphs.chat.state import ChatState
from storage.message_records import tool_calls_of
from storage.transcripts import TurnRecord, new_conversation_id


async def preprocess(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Validate the turn, resolve the route, the conversation and the system prompt; refuse what cannot fit."""
    context = runtime.context
    messages = list(state.get("messages") or [])
    if not messages:
        raise InvalidRequest("`messages` must contain at least one message.", param="messages")
    if not any(m.type == "human" for m in messages) and not state.get("conversation_id"):
        raise InvalidRequest("`messages` must contain a user message.", param="messages")
    chat = context.models.get(state.get("model"), allowed=state.get("allowed_models"))
    check_request(chat.route.name, chat.features, state.get("params") or {}, content_kinds(messages))
    app_id = state.get("app_id")
    if not app_id:
        raise InvalidRequest("The request has no app: call with an app's API key.")

    conversation_id = state.get("conversation_id")
    if conversation_id and (state.get("params") or {}).get("n", 1) > 1:
        raise InvalidRequest(
            "`n` > 1 cannot be combined with `conversation_id`: a conversation keeps one answer per turn.",
            param="n",
            code="unsupported_parameter",
        )
    created = conversation_id == "new"
    if created:
        conversation_id = new_conversation_id()
    elif conversation_id:
        await context.store.check_conversation(conversation_id, app_id=app_id, user=state.get("user"))

    system = [m for m in messages if m.type == "system"]
    default_prompt = state.get("app_system_prompt") or context.system_prompt
    if not system and default_prompt:
        system = [SystemMessage(content=default_prompt)]
    turn = [m for m in messages if m.type != "system"]
    if not turn:
        raise InvalidRequest("`messages` must contain a user message.", param="messages")
    params = state.get("params") or {}
    prompt_tokens = chat.tokens.count_messages(system + turn)
    max_tokens = chat.max_tokens_for(params)
    if prompt_tokens > chat.route.context_window - max_tokens:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {chat.route.context_window} tokens. "
            f"However, you requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
        )
    return {
        "messages": turn,
        "system": system,
        "model_name": chat.route.name,
        "conversation_id": conversation_id,
        "created_conversation": created,
        "prompt_tokens": prompt_tokens,
        "started_at": state.get("started_at") or time.perf_counter(),
    }


async def load_memory(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """The conversation's newest prior turns that fit the memory budget and the context window."""
    context = runtime.context
    chat = context.models.get(state["model_name"])
    history: list[BaseMessage] = []
    if state.get("conversation_id") and not state.get("created_conversation"):
        prior = await context.memory.load(state["conversation_id"])
        room = chat.route.context_window - chat.max_tokens_for(state.get("params") or {}) - state["prompt_tokens"]
        budget = min(context.memory_max_tokens, room)
        if prior and budget > 0:
            history = trim_messages(
                prior, max_tokens=budget, token_counter=chat.tokens.count_messages, strategy="last", start_on="human"
            )
    return {
        "history": history,
        "prompt": [*state["system"], *history, *state["messages"]],
        "prompt_tokens": state["prompt_tokens"] + (chat.tokens.count_messages(history) if history else 0),
    }


async def call_model(state: ChatState, config: RunnableConfig, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """The model's answer (``n`` of them when asked) through the output stage, one stage per answer.

    Streamed, when asked, as custom events ``{"index": i, "delta": text}`` (with ``"logprobs"`` when the model
    sent them and no output filter rewrites the text) and ``{"index": i, "tool_calls": [...]}`` (OpenAI's indexed
    tool-call deltas). ``answer`` is the first choice, the one a conversation keeps; ``more_answers`` the others.
    """
    context = runtime.context
    chat = context.models.get(state["model_name"])
    params = state.get("params") or {}
    kwargs = chat.call_kwargs(params)
    choices = [_Choice(OutputStage.for_answer(context.output_filters, state)) for _ in range(params.get("n") or 1)]
    try:
        if state.get("stream"):
            await _stream_choices(chat, state["prompt"], config, kwargs, choices, runtime.stream_writer)
        else:
            await _generate_choices(chat, state["prompt"], config, kwargs, choices)
    except Exception as exc:  # the model server's failures become API errors
        error = translate_upstream_error(exc, chat.route)
        if error is None:
            raise
        raise error from exc
    usage = next((c.raw.usage_metadata for c in choices if c.raw.usage_metadata), None) or {}
    prompt_tokens = usage.get("input_tokens") or state["prompt_tokens"]
    completion_tokens = usage.get("output_tokens") or sum(chat.tokens.count_text(c.raw.text) for c in choices)
    cached_tokens = (usage.get("input_token_details") or {}).get("cache_read") or 0
    answers = [choice.answer(state["response_id"]) for choice in choices]
    return {
        "answer": answers[0],
        "more_answers": answers[1:],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost": chat.route.cost(prompt_tokens, completion_tokens, cached_tokens),
        "finish_reason": answers[0].response_metadata["finish_reason"],
        "latency_ms": (time.perf_counter() - state["started_at"]) * 1000,
    }


class _Choice:
    """One choice of an answer: the model's message as it came, and the output stage it goes through."""

    def __init__(self, stage: OutputStage) -> None:
        self.stage = stage
        self.raw: AIMessage | AIMessageChunk = AIMessageChunk(content="")
        self.started = False  # streamed text has begun (completion-style models start with a space)
        self.named: set[int] = set()  # tool calls whose id and name were streamed
        self.logprobs: list[dict[str, Any]] = []

    def answer(self, response_id: str) -> AIMessage:
        """The message as the client saw it: the text the output stage let through, the finish reason."""
        if self.stage.blocked:
            reason = "content_filter"
        else:
            reason = (self.raw.response_metadata or {}).get("finish_reason")
            reason = reason if reason in ("stop", "length", "content_filter", "tool_calls") else "stop"
        metadata: dict[str, Any] = {"finish_reason": reason}
        # Streamed logprobs are gathered here whole (chunk metadata would merge them key by key).
        logprobs = {"content": self.logprobs} if self.logprobs else self.raw.response_metadata.get("logprobs")
        if logprobs:
            metadata["logprobs"] = logprobs
        return AIMessage(
            content=self.stage.text, tool_calls=self.raw.tool_calls, id=response_id, response_metadata=metadata
        )


async def _generate_choices(
    chat: ChatModel, prompt: list[BaseMessage], config: RunnableConfig, kwargs: dict[str, Any], choices: list[_Choice]
) -> None:
    # agenerate, not ainvoke: ainvoke keeps only the first of n choices. The config's fields go as ainvoke sends them.
    result = await chat.client.agenerate(
        [prompt],
        callbacks=config.get("callbacks"),
        tags=config.get("tags"),
        metadata=config.get("metadata"),
        run_name=config.get("run_name"),
        **kwargs,
    )
    for choice, generation in zip(choices, result.generations[0]):
        choice.raw = generation.message
        await choice.stage.feed(choice.raw.text.lstrip())  # completion-style models start with a space
        await choice.stage.finish()


async def _stream_choices(
    chat: ChatModel,
    prompt: list[BaseMessage],
    config: RunnableConfig,
    kwargs: dict[str, Any],
    choices: list[_Choice],
    write,
) -> None:
    async for chunk in chat.client.astream(prompt, config, **kwargs):
        index = chunk.response_metadata.get("choice_index") or 0
        if index >= len(choices):
            continue
        choice = choices[index]
        if choice.stage.blocked:
            if all(c.stage.blocked for c in choices):
                break  # nothing more to show: stop the model
            continue
        for part in chunk.tool_call_chunks:
            # A call's id and name come once, as OpenAI sends them; llama.cpp repeats them in every delta, which
            # would be concatenated ("JokeJoke") here and by every client.
            if (call := part.get("index") or 0) in choice.named:
                part["id"] = part["name"] = None
            choice.named.add(call)
        choice.raw = choice.raw + chunk
        if chunk.tool_call_chunks:
            write({"index": index, "tool_calls": [_tool_call_delta(part) for part in chunk.tool_call_chunks]})
        delta = chunk.text if choice.started else chunk.text.lstrip()
        choice.started = choice.started or bool(delta)
        chunk_logprobs = (chunk.response_metadata.get("logprobs") or {}).get("content")
        if chunk_logprobs:
            choice.logprobs.extend(chunk_logprobs)
        if delta and (released := await choice.stage.feed(delta)):
            event: dict[str, Any] = {"index": index, "delta": released}
            if chunk_logprobs and not choice.stage.filters:  # a filter's text would not match the model's logprobs
                event["logprobs"] = {"content": chunk_logprobs}
            write(event)
    for index, choice in enumerate(choices):
        if released := await choice.stage.finish():
            write({"index": index, "delta": released})


def _tool_call_delta(part: dict[str, Any]) -> dict[str, Any]:
    """A LangChain tool-call chunk as OpenAI's streamed tool-call delta."""
    delta: dict[str, Any] = {"index": part.get("index") or 0}
    if part.get("id"):
        delta.update(id=part["id"], type="function")
    function = {key: part[key] for key in ("name", "args") if part.get(key) is not None}
    if "args" in function:
        function["arguments"] = function.pop("args")
    if function:
        delta["function"] = function
    return delta


async def persist(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """The turn and its usage in one transaction, then the conversation's memory."""
    context = runtime.context
    conversation_id = state.get("conversation_id")
    total = await context.store.record_turn(
        TurnRecord(
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
            answer_tool_calls=tool_calls_of(state["answer"]),
            finish_reason=state["finish_reason"],
            stream=bool(state.get("stream")),
            cost=state.get("cost", 0.0),
        )
    )
    if conversation_id and total:
        await context.memory.append(conversation_id, [*state["messages"], state["answer"]], total)
    return {}
