"""The chat graph's knowledge nodes: ``lookup_cache`` (the semantic cache) and ``retrieve_context`` (the knowledge
base), and what ``persist`` stores in the cache.

One request embeds its question at most once: the cache's semantic tier makes the vector, retrieval reuses it.

What the cache may answer (the scope; see ``memory.semantic_cache``): the same app, route, answer-changing
parameters, tools and response format, system prompt, vector stores at the same content versions, and the same
prior turns. A request is neither looked up nor stored when: the cache is off (settings, the app, ``cache: false``,
``Cache-Control: no-cache``), its last message is not a user's text (tool results, images), it asks for ``n`` > 1 or
logprobs, or it samples hotter than ``cache_max_temperature``. Only answers that ended normally (``stop``, no tool
call) are stored.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from langchain_core.messages import BaseMessage, SystemMessage
from langgraph.runtime import Runtime

from chains.model_routes import ModelRoute
from chains.output_stage import OutputStage, prepare
from errors import APIError, ServiceUnavailable
from graphs.chat.answers import Choice, serve_text
from graphs.chat.context import ChatContext
from graphs.chat.safety import output_verdicts, screen_passages
from graphs.chat.state import ChatState
from memory.semantic_cache import CachedAnswer, chat_scope
from prompts.loader import load_prompt

log = logging.getLogger(__name__)


async def resolve_stores(state: ChatState, context: ChatContext) -> dict[str, int]:
    """The stores to search, each with its content version: those the request names (404 for one that is not the
    app's), else the app's default store (skipped, with a warning, when it is gone)."""
    named = state.get("vector_store_ids")
    if named is None and not state.get("app_default_store"):
        return {}
    if context.vector_stores is None or context.knowledge is None:
        raise ServiceUnavailable("The knowledge base is not available on this server.")
    if named is not None:
        stores = [await context.vector_stores.get(state["app_id"], i, param="vector_store_ids") for i in named]
        return {store.id: store.content_version for store in stores}
    try:
        store = await context.vector_stores.get(state["app_id"], state["app_default_store"])
    except APIError:
        log.warning("the default vector store of app %s is gone", state["app_id"])
        return {}
    return {store.id: store.content_version}


def plan_cache(state: ChatState, context: ChatContext, turn: list[BaseMessage], route: ModelRoute) -> dict[str, Any]:
    """Whether the cache applies to the request: decided in ``preprocess``, so that a request it does not apply to
    never enters ``lookup_cache`` (a graph node costs time even when it does nothing)."""
    question = _question(turn)
    if context.cache is None or question is None or not _cacheable(state, route, context.cache_max_temperature):
        return {"cache": "off", "question": question}
    return {"cache": "lookup", "question": question}


def after_memory(state: ChatState) -> str:
    """The next node after ``load_memory``: the cache when it applies, else retrieval when there are stores."""
    return "lookup_cache" if state.get("cache") == "lookup" else _towards_model(state)


def after_cache(state: ChatState) -> str:
    """The next node after ``lookup_cache``: ``persist`` on a hit."""
    return "persist" if state.get("cache") == "hit" else _towards_model(state)


def _towards_model(state: ChatState) -> str:
    return "retrieve_context" if state.get("stores") else "call_model"


async def lookup_cache(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Answer from the cache when an earlier answer fits (exact text first, then a verified paraphrase)."""
    context = runtime.context
    cache = context.cache
    question = state.get("question")
    if cache is None or state.get("cache") != "lookup" or not question:
        return {"cache": "off"}
    scope = chat_scope(
        app_id=state["app_id"],
        model=state["model_name"],
        params=state.get("params") or {},
        system=[message.text for message in state["system"]],
        context=[_turn(message) for message in [*state.get("history", []), *state["messages"][:-1]]],
        stores=state.get("stores") or {},
    )
    vector = None
    try:
        hit = await cache.lookup_exact(scope, question)
        if hit is None and context.embeddings is not None and cache.semantic(question):
            vector = await context.embeddings.aembed_query(question)
            hit = await cache.lookup_similar(scope, question, vector)
    except Exception:  # a cache that fails must not fail the request
        log.warning("the semantic cache failed; answering without it", exc_info=True)
        return {"cache": "off", "question_vector": vector}
    if hit is None:
        return {"cache": "miss", "cache_scope": scope, "question_vector": vector}
    stream = bool(state.get("stream"))
    if stream:
        runtime.stream_writer({"info": {"cache": "hit"}})  # before the text: the response's headers say it
    await prepare(context.output_filters, state)
    choice = Choice(OutputStage.for_answer(context.output_filters, state))
    await serve_text(choice, hit.answer.text, stream=stream, write=runtime.stream_writer)
    answer = choice.answer(state["response_id"])
    return {
        **output_verdicts(state, [choice.stage]),
        "cache": "hit",
        "cache_tier": hit.tier,
        "cache_scope": scope,
        "answer": answer,
        "more_answers": [],
        "completion_tokens": context.models.get(state["model_name"], app_id=state.get("app_id")).tokens.count_text(
            answer.text
        ),
        "cost": 0.0,
        "finish_reason": answer.response_metadata["finish_reason"],
        "citations": hit.answer.citations,
        "latency_ms": (time.perf_counter() - state["started_at"]) * 1000,
    }


async def retrieve_context(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Ground the prompt in the stores' most relevant chunks that fit the context window, numbered for citing."""
    stores = state.get("stores") or {}
    if not stores:
        return {}
    context = runtime.context
    question = state.get("question") or _last_user_text(state["prompt"])
    if not question:
        return {}
    vector = state.get("question_vector")
    try:
        if vector is None and context.embeddings is not None:
            vector = await context.embeddings.aembed_query(question)
        hits = await context.knowledge.search(
            list(stores),
            question,
            vector=vector,
            versions=stores,
            k=context.retrieval_top_k,
            min_score=context.retrieval_min_score,
        )
    except APIError:
        raise
    except Exception as exc:
        log.warning("knowledge search failed", exc_info=True)
        raise ServiceUnavailable(
            f"The knowledge base is unavailable, so the answer cannot be grounded in {', '.join(stores)}; "
            "retry later."
        ) from exc
    keep, screened = await screen_passages(state, context, [hit.chunk.text for hit in hits])
    hits = [hit for hit, kept in zip(hits, keep) if kept]
    chat = context.models.get(state["model_name"], app_id=state.get("app_id"))
    room = chat.route.context_window - chat.max_tokens_for(state.get("params") or {}) - state["prompt_tokens"]
    passages: list[str] = []
    citations: list[dict[str, Any]] = []
    for hit in hits:
        passage = f"[{len(passages) + 1}] {hit.chunk.filename}\n{hit.chunk.text}"
        cost = chat.tokens.count_text(passage) + 2
        if cost > room:
            break
        room -= cost
        passages.append(passage)
        citations.append(
            {
                "file_id": hit.chunk.file_id,
                "filename": hit.chunk.filename,
                "chunk": hit.chunk.index,
                "score": round(float(hit.score), 4),
                "quote": hit.chunk.text,
            }
        )
    if passages:
        grounding = load_prompt("grounded_answer").format(passages="\n\n".join(passages))
    else:
        grounding = load_prompt("no_passages")
    system = [SystemMessage(content="\n\n".join([*(m.text for m in state["system"]), grounding]))]
    prompt = [*system, *state["prompt"][len(state["system"]) :]]
    return {
        **screened,
        "prompt": prompt,
        "citations": citations,
        "prompt_tokens": state["prompt_tokens"] + chat.tokens.count_text(grounding) + 4,
        "question_vector": vector,
    }


async def remember_answer(state: ChatState, context: ChatContext) -> None:
    """Store a fresh answer that ended normally in the cache, in the background when the context can (the client
    does not wait for it; a failure is logged: the client has its answer)."""
    if state.get("cache") != "miss" or context.cache is None:
        return
    answer = state["answer"]
    if state.get("finish_reason") != "stop" or answer.tool_calls or state.get("more_answers") or not answer.text:
        return
    if context.spawn is not None:
        context.spawn(_store(state, context))
    else:
        await _store(state, context)


async def _store(state: ChatState, context: ChatContext) -> None:
    answer = state["answer"]
    try:
        await context.cache.store(
            state["cache_scope"],
            state["app_id"],
            state["question"],
            state.get("question_vector"),
            CachedAnswer(
                text=answer.text,
                model=state["model_name"],
                completion_tokens=state.get("completion_tokens") or 0,
                citations=state.get("citations") or [],
                question=state["question"],
            ),
        )
    except Exception:
        log.warning("could not store the answer in the semantic cache", exc_info=True)


def _question(turn: list[BaseMessage]) -> str | None:
    """The turn's question: its last message when that is a user's text (no images, files or audio)."""
    last = turn[-1]
    if last.type != "human":
        return None
    if isinstance(last.content, list) and any(
        not isinstance(part, dict) or part.get("type") != "text" for part in last.content
    ):
        return None
    return last.text.strip() or None


def _cacheable(state: ChatState, route: ModelRoute, max_temperature: float) -> bool:
    if not state.get("use_cache", True):
        return False
    params = state.get("params") or {}
    if (params.get("n") or 1) > 1 or params.get("logprobs"):
        return False
    temperature = params.get("temperature")
    if temperature is None:
        temperature = route.defaults.get("temperature", 1.0)
    return float(temperature) <= max_temperature


def _turn(message: BaseMessage) -> tuple[str, str]:
    calls = getattr(message, "tool_calls", None) or []
    return message.type, message.text + "".join(f"\n{c['name']}({c.get('args')})" for c in calls)


def _last_user_text(messages: list[BaseMessage]) -> str | None:
    return next((m.text.strip() for m in reversed(messages) if m.type == "human" and m.text.strip()), None)
