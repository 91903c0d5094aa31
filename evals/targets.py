"""What an evaluation run talks to: the chat service in this process, or a running server over its HTTP API.

Both answer an example's messages with an ``Answer`` (the text, finish reason, tokens, citations, the safety verdict),
make a corpus into a vector store once per run, and can ask a model to judge. A request the platform blocks as a
content policy violation is an answer too (``blocked``): the safety evaluator counts it as flagged.

``evals`` never imports ``server``: the in-process target takes the chat service, the caller and a ``make_call``
(``ChatCall`` itself, in practice) from the CLI glue, and reads the result by duck typing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BLOCKED_CODE = "content_policy_violation"
POLL_SECONDS = 0.2


@dataclass
class Answer:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    citations: list[dict[str, Any]] = field(default_factory=list)
    safety: dict[str, Any] | None = None
    response_id: str | None = None
    model: str | None = None
    # The platform refused the input (content_policy_violation): an answer, not an error.
    blocked: bool = False
    # Any other failure: "<status> <code>: <message>".
    error: str | None = None
    latency_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Target(Protocol):
    """What the runner needs of a target."""

    description: str

    async def answer(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None,
        params: dict[str, Any],
        vector_store_ids: list[str] | None,
    ) -> Answer: ...

    async def ensure_store(self, corpus: str, directory: Path) -> str: ...

    async def aclose(self) -> None: ...


class ChatServiceLike(Protocol):
    async def complete(self, call: Any) -> Any: ...


StoreMaker = Callable[[str, Path], Awaitable[str]]


def _error_text(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "code", None)
    body = getattr(exc, "body", None)  # openai's APIStatusError: the response's error object
    message = body.get("message") if isinstance(body, dict) else None
    message = message or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    prefix = " ".join(str(part) for part in (status, code) if part)
    return f"{prefix}: {message}" if prefix else f"{type(exc).__name__}: {message}"


def _is_blocked(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == BLOCKED_CODE


def _blocked_answer(exc: BaseException) -> Answer:
    """A blocked input as an answer; the verdict says blocked (the error may carry the screening's own)."""
    safety = getattr(exc, "safety", None)  # errors.ContentPolicyViolation carries the screening's verdicts
    body = getattr(exc, "body", None)  # openai's APIStatusError: the error object of the response
    if not isinstance(safety, dict) and isinstance(body, dict):
        safety = body.get("safety") or (body.get("error") or {}).get("safety")
    safety = dict(safety) if isinstance(safety, dict) else {}
    safety["input"] = {**(safety.get("input") or {}), "flagged": True, "action": "blocked"}
    return Answer(finish_reason="blocked", blocked=True, safety=safety, error=None)


class ServiceTarget:
    """The chat service of this process: the same path ``/v1/chat/completions`` takes, without HTTP."""

    def __init__(
        self,
        chat_service: ChatServiceLike,
        caller: Any,
        ensure_store: StoreMaker | None = None,
        make_call: Callable[..., Any] | None = None,
        *,
        description: str = "graph",
        stream: bool = False,
    ) -> None:
        if make_call is None:
            raise TypeError(
                "ServiceTarget needs make_call (server.chat_service.ChatCall): evals does not import server"
            )
        self.chat = chat_service
        self.caller = caller
        self.make_call = make_call
        self._ensure_store = ensure_store
        self.description = description
        self.stream = stream  # answers streamed: what a streaming client gets, through the same output filters

    async def answer(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None,
        params: dict[str, Any],
        vector_store_ids: list[str] | None,
    ) -> Answer:
        from langchain_core.messages import convert_to_messages

        try:
            call = self.make_call(
                caller=self.caller,
                messages=convert_to_messages(messages),
                model=model,
                params=dict(params),
                vector_store_ids=vector_store_ids,
                use_cache=False,  # a cached answer would hide what the run measures
            )
            if self.stream:
                streamed = await self.chat.stream(call)
                text = "".join([part.text async for part in streamed if part.index == 0])
                result = streamed.result
            else:
                result = await self.chat.complete(call)
                text = result.choices[0].text
        except Exception as exc:  # noqa: BLE001 - a failed request is a row of the run, with its error
            return _blocked_answer(exc) if _is_blocked(exc) else Answer(error=_error_text(exc))
        first = result.choices[0]
        return Answer(
            text=text or "",
            finish_reason=first.finish_reason,
            prompt_tokens=int(result.prompt_tokens or 0),
            completion_tokens=int(result.completion_tokens or 0),
            citations=list(result.citations or []),
            safety=getattr(result, "safety", None),
            response_id=result.response_id,
            model=result.model,
        )

    async def ensure_store(self, corpus: str, directory: Path) -> str:
        if self._ensure_store is None:
            raise RuntimeError(f"this target cannot make vector stores (corpus {corpus!r})")
        return await self._ensure_store(corpus, directory)

    async def aclose(self) -> None:
        return None


class HttpTarget:
    """A running server, through the official ``openai`` SDK (platform fields in ``extra_body``, extension fields of
    the response from ``model_extra``)."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float = 300.0, max_retries: int = 2, stream: bool = False
    ) -> None:
        from openai import AsyncOpenAI

        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self.description = base_url
        self.stream = stream  # answers read as server-sent events, as a streaming client reads them
        self.client = AsyncOpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    async def answer(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None,
        params: dict[str, Any],
        vector_store_ids: list[str] | None,
    ) -> Answer:
        import openai

        extra_body: dict[str, Any] = {"cache": False}
        if vector_store_ids:
            extra_body["vector_store_ids"] = vector_store_ids
        known = {"temperature", "seed", "max_tokens", "top_p", "stop"}
        extra_body.update({k: v for k, v in params.items() if k not in known})
        request = {
            "model": model if model is not None else openai.omit,  # the server's default route
            "messages": messages,
            "extra_body": extra_body,
            **{k: v for k, v in params.items() if k in known},
        }
        try:
            if self.stream:
                return await self._streamed(request)
            completion = await self.client.chat.completions.create(**request)
        except openai.APIStatusError as exc:
            return _blocked_answer(exc) if _is_blocked(exc) else Answer(error=_error_text(exc))
        except openai.APIError as exc:  # connection and timeout errors
            return Answer(error=_error_text(exc))
        extra = completion.model_extra or {}
        choice = completion.choices[0]
        usage = completion.usage
        return Answer(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            citations=list(extra.get("citations") or []),
            safety=extra.get("safety"),
            response_id=completion.id,
            model=completion.model,
        )

    async def _streamed(self, request: dict[str, Any]) -> Answer:
        """One answer read from its stream: the text of choice 0, its finish reason, and the extension fields and
        usage of the last chunks."""
        stream = await self.client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        answer = Answer()
        async for chunk in stream:
            extra = chunk.model_extra or {}
            if extra.get("citations"):
                answer.citations = list(extra["citations"])
            if extra.get("safety"):
                answer.safety = extra["safety"]
            answer.response_id, answer.model = chunk.id, chunk.model
            if chunk.usage:
                answer.prompt_tokens, answer.completion_tokens = (
                    chunk.usage.prompt_tokens,
                    chunk.usage.completion_tokens,
                )
            for choice in chunk.choices:
                if choice.index == 0:
                    text.append(choice.delta.content or "")
                    answer.finish_reason = choice.finish_reason or answer.finish_reason
        answer.text = "".join(text)
        return answer

    async def ensure_store(self, corpus: str, directory: Path, *, timeout: float = 600.0) -> str:
        """The vector store of the corpus: one already made of the same content, else a new one, ingested."""
        from evals.datasets import corpus_files, store_name

        name = store_name(corpus, directory)
        files = corpus_files(directory)
        async for store in self.client.vector_stores.list(limit=100):
            counts = store.file_counts
            if store.name == name and counts.completed == len(files) and counts.failed == 0 and counts.in_progress == 0:
                return store.id
        uploaded = [
            (await self.client.files.create(file=(path.name, path.read_bytes()), purpose="assistants")).id
            for path in files
        ]
        store = await self.client.vector_stores.create(name=name, file_ids=uploaded)
        deadline = time.monotonic() + timeout
        while store.file_counts.in_progress:
            if time.monotonic() > deadline:
                raise TimeoutError(f"vector store {store.id} ({name}) still ingesting after {timeout:.0f} s")
            await asyncio.sleep(POLL_SECONDS)
            store = await self.client.vector_stores.retrieve(store.id)
        if store.file_counts.failed:
            raise RuntimeError(f"vector store {store.id} ({name}): {store.file_counts.failed} file(s) failed to ingest")
        return store.id

    async def aclose(self) -> None:
        await self.client.close()


def judge_with(target: Target, model: str | None) -> Callable[[list[dict[str, str]]], Awaitable[str]]:
    """A grader that asks ``model`` on ``target`` (temperature 0); an error becomes an exception."""

    async def grade(messages: list[dict[str, str]]) -> str:
        answer = await target.answer(messages, model=model, params={"temperature": 0}, vector_store_ids=None)
        if answer.error or answer.blocked:
            raise RuntimeError(f"the judge could not answer: {answer.error or 'blocked'}")
        return answer.text

    return grade
