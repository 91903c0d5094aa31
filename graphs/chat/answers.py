"""An answer's choices as they are made: from the model (plain or streamed) or from text the platform already has
(a cached answer), each through its own output stage, streamed as the chat graph's custom events."""

from __future__ import annotations

import re
import time
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableConfig

from chains.output_stage import OutputStage
from storage.message_records import openai_tool_call

_PIECE = re.compile(r"\s*\S+")


class Choice:
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


async def generate_choices(
    client: BaseChatModel,
    prompt: list[BaseMessage],
    config: RunnableConfig,
    kwargs: dict[str, Any],
    choices: list[Choice],
) -> None:
    # agenerate, not ainvoke: ainvoke keeps only the first of n choices. The config's fields go as ainvoke sends them.
    result = await client.agenerate(
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


async def stream_choices(
    client: BaseChatModel,
    prompt: list[BaseMessage],
    config: RunnableConfig,
    kwargs: dict[str, Any],
    choices: list[Choice],
    write,
) -> None:
    async for chunk in client.astream(prompt, config, **kwargs):
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
            write({"index": index, "tool_calls": [tool_call_delta(part) for part in chunk.tool_call_chunks]})
        delta = chunk.text if choice.started else chunk.text.lstrip()
        choice.started = choice.started or bool(delta)
        chunk_logprobs = (chunk.response_metadata.get("logprobs") or {}).get("content")
        if chunk_logprobs:
            choice.logprobs.extend(chunk_logprobs)
        if delta and (released := await choice.stage.feed(delta)):
            event: dict[str, Any] = {"index": index, "delta": released}
            if chunk_logprobs and choice.stage.passthrough:  # a rewritten text would not match the model's logprobs
                event["logprobs"] = {"content": chunk_logprobs}
            write(event)
    for index, choice in enumerate(choices):
        if released := await choice.stage.finish():
            write({"index": index, "delta": released})


def reply_of(state: dict[str, Any]) -> dict[str, Any]:
    """What the client is told of a finished answer, as JSON: the chat service's result, and what a retry with the
    same idempotency key is told again (stored with the turn)."""
    answers: list[AIMessage] = [state["answer"], *(state.get("more_answers") or [])]
    return {
        "response_id": state["response_id"],
        "model": state["model_name"],
        "deployment": state.get("deployment"),
        "choices": [
            {
                "text": answer.text,
                "finish_reason": (state.get("finish_reason") if index == 0 else None)
                or answer.response_metadata.get("finish_reason")
                or "stop",
                "tool_calls": [openai_tool_call(call) for call in answer.tool_calls],
                "logprobs": answer.response_metadata.get("logprobs"),
            }
            for index, answer in enumerate(answers)
        ],
        "prompt_tokens": int(state.get("prompt_tokens") or 0),
        "completion_tokens": int(state.get("completion_tokens") or 0),
        "conversation_id": state.get("conversation_id"),
        "cost": float(state.get("cost") or 0.0),
        "cached": state.get("cache") == "hit",
        "citations": state.get("citations") or [],
        "safety": state.get("safety") or {},
        "created": int(state.get("created") or time.time()),
    }


def tool_call_delta(part: dict[str, Any]) -> dict[str, Any]:
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


async def serve_text(choice: Choice, text: str, *, stream: bool, write) -> None:
    """An answer the platform has already (a cache hit), through the output stage; streamed word by word as a fresh
    answer would be, so that clients cannot tell the difference except by its speed."""
    choice.raw = AIMessage(content=text, response_metadata={"finish_reason": "stop"})
    if not stream:
        await choice.stage.feed(text)
        await choice.stage.finish()
        return
    for piece in _PIECE.findall(text):
        if released := await choice.stage.feed(piece):
            write({"index": 0, "delta": released})
        if choice.stage.blocked:
            break
    if released := await choice.stage.finish():
        write({"index": 0, "delta": released})
