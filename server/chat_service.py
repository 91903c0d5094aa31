"""The one chat service that every entry point uses: ``/v1/chat/completions``, LangServe's ``/chat``, evaluation runs.

For each request it mints the response id (the trace's run id, so feedback and
traces meet), runs the chat graph plain or streamed, and keeps the books the
same way whichever door the request came through:

* a usage record for a request that fails (a successful one is written by the
  graph's ``persist`` node, in the same transaction as its turn);
* the tokens really used, charged to the key's rate limit after the answer
  (in the background: the next request of the key sees them, this one does not
  wait for them);
* the metrics: time to first token, tokens by model, model errors.

Entry points translate their input into a ``ChatCall`` and the ``ChatResult``
(or the ``ChatStream``'s text) into their output; nothing else.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_core.messages import BaseMessage
from langgraph.graph.state import CompiledStateGraph

from errors import APIError, InternalError
from graphs.chat import ChatContext, ChatInput
from graphs.chat.answers import reply_of
from server.background import BackgroundWork
from server.failures import as_api_error
from server.gateway.prometheus_metrics import ChatRecorder, Metrics
from server.gateway.rate_limits import RateLimiter
from server.gateway.request_context import current_request_id
from server.shutdown import RunningChats
from storage.idempotency import IdempotencyKeys, fingerprint
from storage.tenants import Caller
from storage.transcripts import TurnRecord

log = logging.getLogger(__name__)


@dataclass
class ChatCall:
    """One chat request, whichever entry point it came through."""

    caller: Caller
    messages: list[BaseMessage]
    model: str | None = None
    # An existing conversation's id, "new" to start one, or None for a stateless call.
    conversation_id: str | None = None
    # OpenAI's generation parameters (``max_tokens``, ``temperature``, ``stop``, ...); None means unset.
    params: dict[str, Any] = field(default_factory=dict)
    user: str | None = None
    # The vector stores to ground the answer in (None: the app's default store, if it has one).
    vector_store_ids: list[str] | None = None
    # False: neither answered from the semantic cache nor stored in it.
    use_cache: bool = True
    # True: keep the request's messages and answer (a stateless request's; a conversation keeps its turns anyway).
    store: bool = False
    # The run id of the entry point's own trace run, when it has one (LangServe); the service mints one otherwise.
    run_id: uuid.UUID | None = None
    # The client's key for this request (its ``Idempotency-Key`` header, or its own request id) and that header's
    # name: a retry with the same key gets the stored reply instead of a second turn (storage.idempotency).
    idempotency_key: str | None = None
    idempotency_header: str = "Idempotency-Key"

    def fingerprint(self) -> str:
        """What tells a retry of this request from another request that reuses its idempotency key."""
        return fingerprint(
            {
                "model": self.model,
                "messages": [message.model_dump(exclude={"id"}) for message in self.messages],
                "conversation_id": self.conversation_id,
                "params": self.params,
                "user": self.user,
                "vector_store_ids": self.vector_store_ids,
                "store": self.store,
            }
        )


@dataclass(frozen=True)
class ChatChoice:
    """One of the answer's choices (one unless the request asked for ``n``)."""

    text: str
    finish_reason: str
    # OpenAI's shape: [{"id", "type": "function", "function": {"name", "arguments"}}]
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChatResult:
    response_id: str
    model: str
    choices: list[ChatChoice]
    prompt_tokens: int
    completion_tokens: int
    conversation_id: str | None = None
    cost: float = 0.0
    # Answered from the semantic cache; the knowledge chunks the answer was grounded in.
    cached: bool = False
    citations: list[dict[str, Any]] = field(default_factory=list)
    # What the safety checks found (graphs.chat.safety): the input verdict, redactions, moderation.
    safety: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    # The route's deployment that answered; the reply stored for an earlier request with the same idempotency key.
    deployment: str | None = None
    replayed: bool = False

    @classmethod
    def of(cls, reply: dict[str, Any], *, replayed: bool = False) -> ChatResult:
        """The result a reply (``graphs.chat.answers.reply_of``) describes."""
        return cls(
            response_id=reply["response_id"],
            model=reply["model"],
            choices=[ChatChoice(**choice) for choice in reply["choices"]],
            prompt_tokens=reply["prompt_tokens"],
            completion_tokens=reply["completion_tokens"],
            conversation_id=reply.get("conversation_id"),
            cost=reply.get("cost", 0.0),
            cached=reply.get("cached", False),
            citations=reply.get("citations") or [],
            safety=reply.get("safety") or {},
            created=reply["created"],
            deployment=reply.get("deployment"),
            replayed=replayed,
        )

    @property
    def first(self) -> ChatChoice:
        """The first choice: the one a conversation keeps, and all there is for most requests."""
        return self.choices[0]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def response_id_for(run_id: uuid.UUID) -> str:
    return f"chatcmpl-{run_id.hex}"


def trace_config(caller: Caller) -> dict[str, Any]:
    """LangSmith tags and metadata naming the app and key (never the key itself)."""
    return {
        "tags": [f"app:{caller.app_name}", f"key:{caller.key_prefix}"],
        "metadata": {"app": caller.app_name, "app_id": caller.app_id, "key_prefix": caller.key_prefix},
    }


class ChatService(BackgroundWork):
    work_name = "background chat bookkeeping"

    def __init__(
        self,
        graph: CompiledStateGraph,
        context: ChatContext,
        limiter: RateLimiter,
        metrics: Metrics,
        idempotency: IdempotencyKeys,
        tuned_models: TunedModelRoutes | None = None,
    ) -> None:
        self.graph = graph
        # Registers an app's tuned model (``ft:...``) as a route before a request that names it.
        self.tuned_models = tuned_models
        self.context = context
        self.limiter = limiter
        self.metrics = metrics
        self.idempotency = idempotency
        BackgroundWork.__init__(self)
        # The requests running now: ended with a 503 when the server shuts down (server/shutdown.py).
        self.running = RunningChats()
        if context.spawn is None:  # the graph's after-the-answer work joins the service's own
            context.spawn = self.spawn

    async def complete(self, call: ChatCall, config: dict[str, Any] | None = None) -> ChatResult:
        """Answer ``call`` in one piece."""
        await self._resolve_model(call)
        run = _Run(self, call, config, stream=False)
        if (replay := await run.claim()) is not None:
            return replay
        try:
            state = await self.running.call(self.graph.ainvoke(run.state, run.config, context=self.context))
        except Exception as exc:
            raise await run.failed(exc) from exc
        except BaseException:  # cancelled: the client left, or the server stops
            run.abandoned()
            raise
        return run.succeeded(state)

    async def stream(self, call: ChatCall, config: dict[str, Any] | None = None) -> ChatStream:
        """Answer ``call`` as a stream, started: what fails before the answer's first text raises here."""
        await self._resolve_model(call)
        run = _Run(self, call, config, stream=True)
        if (replay := await run.claim()) is not None:
            stream = ChatStream(run, _replayed_events(replay), replay=replay)
        else:
            events = self.graph.astream(run.state, run.config, context=self.context, stream_mode=["custom", "updates"])
            stream = ChatStream(run, self.running.guard(events))
        await stream.start()
        return stream

    async def check(self, call: ChatCall) -> None:
        """The checks an entry point must make before it commits to a streamed response: the model route and the
        conversation are the caller's. ``preprocess`` makes them again inside the graph; a failure is recorded."""
        try:
            await self._resolve_model(call)
            self.context.models.get(call.model, allowed=call.caller.allowed_models, app_id=call.caller.app_id)
            if call.conversation_id and call.conversation_id != "new":
                await self.context.store.check_conversation(
                    call.conversation_id, app_id=call.caller.app_id, user=call.user
                )
        except APIError as error:
            raise await _Run(self, call, None, stream=False).failed(error) from None

    async def _resolve_model(self, call: ChatCall) -> None:
        """The app's default model for a call that names none; an app's tuned model registered as a route."""
        if call.model is None and call.caller.default_model:
            call.model = call.caller.default_model
        if self.tuned_models is not None and call.model and call.model.startswith("ft:") and call.caller.app_id:
            await self.tuned_models.ensure(call.caller.app_id, call.model)


class TunedModelRoutes(Protocol):
    async def ensure(self, app_id: str, name: str) -> None:
        """Register ``app_id``'s tuned model ``name`` as a route (or forget it when it was deleted)."""


class _Run:
    """One request's run: its graph input and config, its metrics recorder, and its books."""

    def __init__(self, service: ChatService, call: ChatCall, config: dict[str, Any] | None, *, stream: bool) -> None:
        self.service = service
        self.call = call
        self.stream = stream
        self.started_at = time.perf_counter()
        caller = call.caller
        context = service.context
        self.recorder: ChatRecorder = service.metrics.chat(
            call.model or service.context.models.default, self.started_at
        )
        trace = trace_config(caller)
        base = dict(config or {})
        run_config: dict[str, Any] = {
            **base,
            "tags": list(dict.fromkeys([*(base.get("tags") or []), *trace["tags"]])),
            "metadata": {
                **(base.get("metadata") or {}),
                **trace["metadata"],
                "user": call.user,
                "request_id": current_request_id(),
            },
        }
        if call.run_id is None:  # this run is the trace's root, and its id the response's
            run_id = uuid.uuid4()
            run_config.update(run_id=run_id, run_name="chat")
        else:  # a child of the entry point's run, which has the response's id
            run_id = call.run_id
            run_config.pop("run_id", None)
        self.response_id = response_id_for(run_id)
        self.config = run_config
        self.state: ChatInput = {
            "messages": call.messages,
            "model": call.model,
            "conversation_id": call.conversation_id,
            "params": call.params,
            "stream": stream,
            "response_id": self.response_id,
            "user": call.user,
            "started_at": self.started_at,
            "app_id": caller.app_id,
            "key_prefix": caller.key_prefix,
            "app_system_prompt": caller.system_prompt,
            "allowed_models": list(caller.allowed_models) if caller.allowed_models is not None else None,
            "vector_store_ids": call.vector_store_ids,
            "app_default_store": caller.default_vector_store_id,
            "use_cache": call.use_cache and caller.cache_enabled,
            "store": call.store,
            "guard_mode": caller.guard_mode or context.guard_mode,
            "moderation_mode": caller.moderation_mode or context.moderation_mode,
            "pii_policy": caller.pii_policy if caller.pii_policy is not None else context.pii_policy,
            "idempotency_key": self.idempotency_key,
        }
        self.claimed = False

    @property
    def idempotency_key(self) -> str | None:
        """The key as stored: scoped by the header it came in, so a request id never meets an Idempotency-Key."""
        if self.call.idempotency_key is None:
            return None
        return f"{self.call.idempotency_header.lower()}:{self.call.idempotency_key}"

    async def claim(self) -> ChatResult | None:
        """Claim the request's idempotency key; the stored result when the request was answered before."""
        if self.idempotency_key is None:
            return None
        keys = self.service.idempotency
        try:
            reply = await keys.claim(
                self.call.caller.app_id, self.idempotency_key, self.call.fingerprint(), self.response_id,
                header=self.call.idempotency_header,
            )  # fmt: skip
        except Exception as exc:
            raise await self.failed(exc) from exc
        if reply is None:
            self.claimed = True
            return None
        return ChatResult.of(reply, replayed=True)

    def abandoned(self) -> None:
        """The run was cancelled: give its idempotency key back (in the background: the task is being cancelled)."""
        if self.claimed:
            self.claimed = False
            self.service.spawn(self._release())

    async def _release(self) -> None:
        if self.idempotency_key is not None:
            await self.service.idempotency.release(self.call.caller.app_id, self.idempotency_key, self.response_id)

    def first_token(self, info: dict[str, Any]) -> None:
        self.recorder.first_token(info)

    def succeeded(self, state: dict[str, Any]) -> ChatResult:
        self.recorder.finished(state)
        result = ChatResult.of(reply_of(state))
        if not result.cached and (result.total_tokens or result.cost):  # a cached answer spends no model capacity
            self.service.spawn(
                self.service.limiter.spend(self.call.caller, tokens=result.total_tokens, cost=result.cost)
            )
        return result

    async def failed(self, exc: Exception, info: dict[str, Any] | None = None) -> APIError:
        """Record the failure (metrics and a usage record), give the idempotency key back (the request left no turn
        behind: a retry runs afresh), and return the error the client gets."""
        error = as_api_error(exc)
        if isinstance(error, InternalError) and not isinstance(exc, InternalError):
            log.error("chat request failed", exc_info=exc)
        self.recorder.failed(error, info)
        caller = self.call.caller
        try:
            await self.service.context.store.record_turn(
                TurnRecord.failure(
                    response_id=self.response_id,
                    app_id=caller.app_id,
                    key_prefix=caller.key_prefix,
                    user=self.call.user,
                    model=(info or {}).get("model_name")
                    or self.call.model
                    or self.service.context.models.default
                    or "",
                    latency_ms=(time.perf_counter() - self.started_at) * 1000,
                    stream=self.stream,
                    error=error,
                    safety=getattr(error, "safety", None),
                    deployment=(info or {}).get("deployment"),
                )
            )
        except Exception:  # the client must still learn what went wrong first
            log.exception("could not record the failed request %s", self.response_id)
        if self.claimed:
            self.claimed = False
            try:
                await self._release()
            except Exception:  # the claim expires by itself (storage.idempotency.CLAIM_SECONDS)
                log.exception("could not release the idempotency key of %s", self.response_id)
        return error


@dataclass(frozen=True)
class StreamPart:
    """A piece of a streamed answer's choice ``index``: text (as the output stage released it, with the model's
    logprobs for it when asked and unfiltered), or tool-call deltas in OpenAI's shape (``index``, ``id``,
    ``function``)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None
    index: int = 0


class ChatStream:
    """A started streamed run. Iterate it for the answer's ``StreamPart``s.

    ``info`` holds what the run has settled so far (response id, model, conversation id once
    ``start`` returns); ``result`` is set when the iteration ends. An ``APIError`` raised while
    iterating has been recorded already: the entry point only reports it in its own format.
    """

    def __init__(self, run: _Run, events: AsyncIterator[tuple[str, Any]], *, replay: ChatResult | None = None) -> None:
        self._run = run
        self._events = events
        self._buffered: list[StreamPart] = []
        self._replay = replay
        self.info: dict[str, Any] = {"response_id": run.response_id, "model_name": run.recorder.model}
        self.result: ChatResult | None = None

    async def start(self) -> None:
        """Run up to the answer's first text (or its end)."""
        try:
            async for mode, chunk in self._events:
                if (part := self._absorb(mode, chunk)) is not None:
                    self._buffered.append(part)
                    break
        except Exception as exc:
            await self._events.aclose()
            raise await self._run.failed(exc, self.info) from exc
        except BaseException:
            await self._events.aclose()
            self._run.abandoned()
            raise

    def _absorb(self, mode: str, chunk: Any) -> StreamPart | None:
        """Take one graph event in; the part of the answer it carries, if any."""
        if mode == "custom":
            if "info" in chunk:  # what the run settled before its text (a cache hit), for the response's headers
                self.info.update(chunk["info"])
                return None
            self._run.first_token(self.info)
            return StreamPart(
                chunk.get("delta", ""), chunk.get("tool_calls"), chunk.get("logprobs"), chunk.get("index", 0)
            )
        for update in chunk.values():
            if update:
                self.info.update(update)
        return None

    async def __aiter__(self) -> AsyncIterator[StreamPart]:
        try:
            for part in self._buffered:
                yield part
            self._buffered.clear()
            async for mode, chunk in self._events:
                if (part := self._absorb(mode, chunk)) is not None:
                    yield part
        except Exception as exc:
            raise await self._run.failed(exc, self.info) from exc
        except BaseException:
            self._run.abandoned()
            raise
        finally:
            await self._events.aclose()
        self.result = self._replay or self._run.succeeded(self.info)


async def _replayed_events(result: ChatResult) -> AsyncIterator[tuple[str, Any]]:
    """A stored reply as the chat graph's stream events: what the run settled, then each choice whole."""
    yield (
        "custom",
        {
            "info": {
                "response_id": result.response_id,
                "model_name": result.model,
                "conversation_id": result.conversation_id,
                "deployment": result.deployment,
                "cache": "hit" if result.cached else "miss",
                "replayed": True,
            }
        },
    )
    for index, choice in enumerate(result.choices):
        if choice.tool_calls:
            yield (
                "custom",
                {"index": index, "tool_calls": [{"index": i, **call} for i, call in enumerate(choice.tool_calls)]},
            )
        if choice.text:
            yield "custom", {"index": index, "delta": choice.text}
