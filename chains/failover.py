"""Which deployment answers a chat call, and what happens when it fails.

A call goes to the route's deployment with the fewest requests in flight whose
circuit breaker is closed. When the attempt fails on the deployment's side
(cannot connect, times out, 429, 5xx, a response that is not JSON, an error
event before any text) and nothing has reached the client yet, it is tried
again: at once on another deployment, or on the same after an exponential
backoff with jitter, honouring a short ``Retry-After`` (a long one takes the
deployment out of the rotation for that long). When the route's retries or its
time limit are spent, the route's ``fallbacks`` are tried in order, each with
its own retries; a fallback whose context window the prompt does not fit is
skipped. Failures that are the request's own (400, 422) are not retried.

Once the first byte of an answer has reached the client nothing is retried:
the client would see the answer twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import openai

from chains.model_routes import ChatModel, ModelRegistry, Upstream, translate_upstream_error
from errors import APIError, ServiceUnavailable

T = TypeVar("T")

# The longest Retry-After of an upstream the platform waits out itself before retrying; a longer one takes the
# deployment out of the rotation, and goes to the client when nothing else can answer.
MAX_RETRY_AFTER_SECONDS = 2.0

Fault = Literal["deployment", "busy", "context", "time_limit", "request"]


def fault_of(exc: BaseException) -> Fault:
    """Whose failure ``exc`` is: the deployment's (retry elsewhere, counts against its breaker), an overloaded
    deployment's (retry, does not count), a prompt too long for the route (try a bigger fallback), the route's time
    limit spent (go to the fallbacks), or the request's own (no retry)."""
    if isinstance(exc, APIError):
        return "request"
    if isinstance(exc, TimeoutError):
        return "time_limit"
    if isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError)):
        return "deployment"  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "busy"
        if status == 400 and "context" in str(exc.message).lower():
            return "context"
        if status in (400, 422) or (status < 500 and status not in (401, 403, 404, 408, 409)):
            return "request"
        return "deployment"  # 5xx; 401/403/404: the deployment is misconfigured, not the request
    if isinstance(exc, openai.APIError):  # an error event in a stream
        return "deployment"
    return "request"


def retry_after(exc: BaseException) -> float | None:
    """The upstream's Retry-After in seconds, when it sent one."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    try:
        return max(float(exc.response.headers.get("retry-after", "")), 0.0)
    except ValueError:
        return None


def backoff(chat: ChatModel, retry: int) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...) on the same deployment: doubling, with jitter."""
    route = chat.route
    return min(route.retry_backoff * 2 ** (retry - 1), route.retry_backoff_max) * random.uniform(0.5, 1.0)


async def pick(chat: ChatModel, tried: set[Upstream]) -> Upstream | None:
    """The deployment to try next: not yet tried if possible, then the fewest requests in flight (ties in
    turn); one whose breaker lets it through. None when every deployment is paused or its breaker open."""
    now = time.monotonic()
    ready = [upstream for upstream in chat.upstreams if upstream.paused_until <= now]
    start = next(chat.turns) % len(ready) if ready else 0
    rotated = ready[start:] + ready[:start]
    for upstream in sorted(rotated, key=lambda u: (u in tried, u.in_flight)):
        if await upstream.breaker.allows():
            return upstream
    return None


async def call_with_failover(
    registry: ModelRegistry,
    first: ChatModel,
    attempt: Callable[[ChatModel, Upstream], Awaitable[T]],
    *,
    delivered: Callable[[], bool],
    fits: Callable[[ChatModel], bool],
) -> tuple[T, ChatModel, Upstream]:
    """Run ``attempt`` on ``first``'s deployments, then its fallbacks', until one succeeds.

    ``delivered()`` says whether the client has received any of the answer (then a failure is final);
    ``fits(chat)`` whether the prompt fits a fallback route. Returns the result with the route and deployment that
    served it; raises the API error of the last failure.
    """
    events = registry.events
    started = time.monotonic()
    attempts = 0
    last: tuple[BaseException, ChatModel] | None = None
    tried_routes: list[str] = []
    for chat in [first, *registry.fallbacks(first)]:
        if chat is not first:
            if not fits(chat):
                continue
            if events is not None:
                events.fell_back(first.route.name, chat.route.name, _reason(last[0]) if last else "unavailable")
        tried_routes.append(chat.route.name)
        route = chat.route
        deadline = time.monotonic() + route.timeout
        tried: set[Upstream] = set()
        previous: Upstream | None = None
        for retry in range(route.max_retries + 1):
            upstream = await pick(chat, tried)
            if upstream is None:
                break
            if retry and upstream is previous and last is not None:
                asked = retry_after(last[0])
                wait = asked if asked is not None else backoff(chat, retry)
                if wait >= deadline - time.monotonic():
                    await upstream.breaker.record(None)
                    break
                await asyncio.sleep(wait)
            if retry and events is not None and last is not None:
                events.retried(route.name, upstream.name, _reason(last[0]))
            tried.add(upstream)
            attempts += 1
            upstream.in_flight += 1
            outcome: bool | None = None
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    result = await attempt(chat, upstream)
                outcome = True
                return result, chat, upstream
            except Exception as exc:
                fault = fault_of(exc)
                outcome = False if fault in ("deployment", "time_limit") else None
                if delivered() or fault == "request":
                    raise _final(exc, chat, attempts, started) from exc
                last = (exc, chat)
                if fault == "busy" and (asked := retry_after(exc)) is not None and asked > MAX_RETRY_AFTER_SECONDS:
                    upstream.paused_until = time.monotonic() + asked
                if fault in ("context", "time_limit"):
                    break
            finally:
                upstream.in_flight -= 1
                await upstream.breaker.record(outcome)
            previous = upstream
    if last is None:
        raise _all_unavailable(first, [first, *registry.fallbacks(first)])
    exc, chat = last
    error = _final(exc, chat, attempts, started)
    if len(tried_routes) > 1:
        error.message = f"{error.message} Routes tried: {', '.join(tried_routes)}."
    raise error from exc


def _final(exc: BaseException, chat: ChatModel, attempts: int, started: float) -> APIError:
    error = translate_upstream_error(exc, chat.route, attempts=attempts, elapsed=time.monotonic() - started)
    if error is None:
        raise exc
    return error


def _all_unavailable(first: ChatModel, candidates: list[ChatModel]) -> ServiceUnavailable:
    """Nothing could be tried: every deployment's breaker is open, or it asked for a pause."""
    now = time.monotonic()
    waits = [
        max(upstream.breaker.retry_after(), upstream.paused_until - now)
        for chat in candidates
        for upstream in chat.upstreams
    ]
    wait = max(1, round(min(waits, default=1)))
    return ServiceUnavailable(
        f"The model `{first.route.name}` is unavailable: its deployments failed repeatedly or asked for a pause, "
        f"and are not tried again for {wait} s.",
        headers={"retry-after": str(wait)},
    )


def _reason(exc: BaseException) -> str:
    """A metric label for why an attempt failed."""
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, openai.APIResponseValidationError):
        return "invalid_response"
    return "error"


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the event loop's clock (``asyncio.timeout_at`` takes loop time)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
