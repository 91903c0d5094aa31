"""The chat graph's nodes: small functions of the state, with their dependencies in the runtime context.

Each returns only the keys it sets. The wiring is in ``graphs.chat.graph``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from chains.failover import call_with_failover
from chains.model_routes import ChatModel, Upstream
from chains.output_stage import OutputStage, prepare
from chains.route_features import check_request, content_kinds
from errors import ContextLengthExceeded, InvalidRequest
from graphs.chat.answers import Choice, generate_choices, reply_of, stream_choices
from graphs.chat.context import ChatContext
from graphs.chat.history_window import block_window
from graphs.chat.knowledge import plan_cache, remember_answer, resolve_stores
from graphs.chat.safety import output_verdicts
from graphs.chat.state import ChatState
from storage.message_records import to_record, tool_calls_of
from storage.transcripts import TurnRecord, new_conversation_id

log = logging.getLogger(__name__)


async def preprocess(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Validate the turn, resolve the route, the conversation and the system prompt; refuse what cannot fit."""
    context = runtime.context
    messages = list(state.get("messages") or [])
    if not messages:
        raise InvalidRequest("`messages` must contain at least one message.", param="messages")
    if not any(m.type == "human" for m in messages) and not state.get("conversation_id"):
        raise InvalidRequest("`messages` must contain a user message.", param="messages")
    chat = context.models.get(state.get("model"), allowed=state.get("allowed_models"), app_id=state.get("app_id"))
    kinds = content_kinds(messages)
    check_request(chat.route.name, chat.features, state.get("params") or {}, kinds)
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
    if prompt_tokens > chat.route.context_window - max_tokens and (
        bigger := next((fb for fb in context.models.fallbacks(chat) if takes(fb, system + turn, params, kinds)), None)
    ):  # a fallback route with a bigger context window takes the request
        chat, prompt_tokens = bigger, bigger.tokens.count_messages(system + turn)
    elif prompt_tokens > chat.route.context_window - max_tokens:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {chat.route.context_window} tokens. "
            f"However, you requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
        )
    stores = await resolve_stores(state, context)
    return {
        **plan_cache(state, context, turn, chat.route),
        "stores": stores,
        "messages": turn,
        "system": system,
        "model_name": chat.route.name,
        "conversation_id": conversation_id,
        "created_conversation": created,
        "prompt_tokens": prompt_tokens,
        "started_at": state.get("started_at") or time.perf_counter(),
    }


def takes(chat: ChatModel, prompt: list[BaseMessage], params: dict[str, Any], kinds: list[tuple[str, str]]) -> bool:
    """Whether the route can answer this prompt: it fits the context window, and the route has what it asks for."""
    if chat.tokens.count_messages(prompt) > chat.route.context_window - chat.max_tokens_for(params):
        return False
    try:
        check_request(chat.route.name, chat.features, params, kinds)
    except InvalidRequest:
        return False
    return True


async def load_memory(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """The conversation's newest prior turns that fit the memory budget and the context window."""
    context = runtime.context
    chat = context.models.get(state["model_name"], app_id=state.get("app_id"))
    history: list[BaseMessage] = []
    if state.get("conversation_id") and not state.get("created_conversation"):
        prior = await context.memory.load(state["conversation_id"])
        window = chat.route.context_window - chat.max_tokens_for(state.get("params") or {})
        stable = min(context.memory_max_tokens, window)  # the same every turn, unlike the room the new message leaves
        budget = min(stable, window - state["prompt_tokens"])
        if prior and budget > 0:
            # Cut in blocks, so that the prompt's prefix stays the same from turn to turn (a model server reuses it).
            history = block_window(
                prior,
                budget,
                chat.tokens.count_messages,
                keep_fraction=context.memory_keep_fraction,
                stable_budget=stable,
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
    params = state.get("params") or {}
    await prepare(context.output_filters, state)
    delivered = False  # some of the answer reached the client: a failure from now on is final

    async def attempt(chat: ChatModel, upstream: Upstream) -> list[Choice]:
        choices = [Choice(OutputStage.for_answer(context.output_filters, state)) for _ in range(params.get("n") or 1)]
        kwargs = chat.call_kwargs(params)
        if not state.get("stream"):
            await generate_choices(upstream.client, state["prompt"], config, kwargs, choices)
            return choices

        def deliver(event: dict[str, Any]) -> None:
            nonlocal delivered
            if not delivered:  # the route that answers, for the stream's chunks and headers
                delivered = True
                runtime.stream_writer({"info": {"model_name": chat.route.name, "deployment": upstream.name}})
            runtime.stream_writer(event)

        await stream_choices(upstream.client, state["prompt"], config, kwargs, choices, deliver)
        return choices

    kinds = content_kinds(state["prompt"])
    choices, chat, upstream = await call_with_failover(
        context.models,
        context.models.get(state["model_name"], app_id=state.get("app_id")),
        attempt,
        delivered=lambda: delivered,
        fits=lambda chat: takes(chat, state["prompt"], params, kinds),
    )
    usage = next((c.raw.usage_metadata for c in choices if c.raw.usage_metadata), None) or {}
    prompt_tokens = usage.get("input_tokens") or state["prompt_tokens"]
    completion_tokens = usage.get("output_tokens") or sum(chat.tokens.count_text(c.raw.text) for c in choices)
    cached_tokens = (usage.get("input_token_details") or {}).get("cache_read") or 0
    answers = [choice.answer(state["response_id"]) for choice in choices]
    return {
        **output_verdicts(state, [choice.stage for choice in choices]),
        "answer": answers[0],
        "more_answers": answers[1:],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost": chat.route.cost(prompt_tokens, completion_tokens, cached_tokens),
        "finish_reason": answers[0].response_metadata["finish_reason"],
        "model_name": chat.route.name,
        "deployment": upstream.name,
        "latency_ms": (time.perf_counter() - state["started_at"]) * 1000,
    }


async def persist(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """The turn and its usage in one transaction, then the conversation's memory."""
    context = runtime.context
    conversation_id = state.get("conversation_id")
    created = int(time.time())
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
            cached=state.get("cache") == "hit",
            citations=state.get("citations"),
            safety=state.get("safety"),
            stored_messages=[to_record(m) for m in [*state["system"], *state["messages"]]]
            if state.get("store") and not conversation_id
            else None,
            deployment=state.get("deployment"),
            idempotency_key=state.get("idempotency_key"),
            reply=reply_of({**state, "created": created}) if state.get("idempotency_key") else None,
        )
    )
    # The turn is stored: from here on nothing may fail the request (the client would retry a stored turn). Memory
    # and the cache are copies, and mend themselves (memory is rebuilt from the database when it falls behind).
    try:
        if conversation_id and total:
            await context.memory.append(conversation_id, [*state["messages"], state["answer"]], total)
        await remember_answer(state, context)
    except Exception:
        log.exception("the turn %s is stored, but updating memory or the cache failed", state["response_id"])
    return {"created": created}
