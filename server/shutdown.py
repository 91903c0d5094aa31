"""Chat requests still running when the server stops end with a 503 and their usage record, not a cut connection;
a stream with an error event and its end.

On SIGTERM or SIGINT uvicorn (``uvicorn.Server.shutdown``) stops accepting connections, waits up to its grace period
(``timeout_graceful_shutdown``, which ``genai serve`` sets from ``GENAI_SHUTDOWN_GRACE_SECONDS``) for the requests in
flight, then cancels those still running, and only after that runs the app's lifespan shutdown. A stream cancelled
there ends in a cut chunked body: no error event, no ``[DONE]``, no usage record. So the app watches for the start
of the shutdown itself (``RunningChats.watch``: uvicorn's ``should_exit``) and, ``STOP_MARGIN`` seconds before
uvicorn's deadline, ends every chat request still running with a 503 ``server_shutting_down``. The error is raised
inside the chat service's stream (``RunningChats.guard``) or call (``RunningChats.call``), so it takes the normal
failure path: a failed usage record, then the entry point's error (event, and the end of its stream). Streams that finish within the grace period are not
touched; one that would start after the stop gets the 503 before its response starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import uvicorn

from errors import APIError, ServiceUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_MARGIN = 1.0  # seconds before uvicorn's deadline at which the chat requests still running are ended (at most half)
POLL_SECONDS = 0.1  # how often the watcher looks at uvicorn's should_exit (uvicorn's own main loop ticks as often)
CANCEL_WAIT = 0.5  # seconds a stopped stream waits for the model call it interrupts to wind down


def shutting_down() -> APIError:
    return ServiceUnavailable("The server is shutting down; please retry the request.", code="server_shutting_down")


def uvicorn_server() -> uvicorn.Server | None:
    """The uvicorn server running this app, when it runs in a process's main thread: uvicorn installs its bound
    ``handle_exit`` as the SIGTERM handler while it serves (``Server.capture_signals``). None otherwise (a server in
    another thread, another ASGI server)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return server if isinstance(server, uvicorn.Server) else None


class RunningChats:
    """The chat requests (streamed or not) running in this process, and the one switch that ends them all
    (``stop``)."""

    def __init__(self) -> None:
        self._stops: set[asyncio.Future[None]] = set()  # one per running stream, set to end it
        self.stopped = False
        # uvicorn's grace period (None: it waits for requests without limit, and nothing is stopped early).
        self.grace: float | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._stops)

    async def call(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` (a non-streamed chat call), ended by ``stop`` with the 503 ``server_shutting_down``."""
        if self.stopped:
            work.close()
            raise shutting_down()
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stops.add(stop)
        try:
            return await _until_stopped(asyncio.ensure_future(work), stop)
        finally:
            self._stops.discard(stop)

    async def guard(self, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """``events``, ended by ``stop`` with the 503 ``server_shutting_down`` (raised where the stream waits for its
        next event; the step it interrupts is cancelled). Each step runs in a task of its own, all in one context, as
        LangChain steps a streamed runnable."""
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        context = contextvars.copy_context()
        step: asyncio.Task[T] | None = None
        self._stops.add(stop)
        try:
            while True:
                if self.stopped:
                    raise shutting_down()
                step = asyncio.create_task(_next(events), context=context)
                try:
                    item = await _until_stopped(step, stop)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            self._stops.discard(stop)
            if step is None or step.done():  # else the step still runs the generator: it cannot be closed here
                await events.aclose()

    def watch(self, default_grace: float | None) -> None:
        """Begin stopping chat requests when uvicorn begins to shut down. Called at the app's start (inside uvicorn's
        ``serve``); without a uvicorn server to watch, ``begin`` is left to whoever stops the server."""
        server = uvicorn_server()
        if server is None:
            self.grace = default_grace
            return
        self.grace = server.config.timeout_graceful_shutdown
        self._watcher = asyncio.get_running_loop().create_task(self._watch(server))

    async def _watch(self, server: uvicorn.Server) -> None:
        while not server.should_exit:
            await asyncio.sleep(POLL_SECONDS)
        self.begin()

    def begin(self) -> None:
        """The server has begun to shut down: the chat requests still running ``STOP_MARGIN`` seconds (at most half the
        grace period) before the grace period ends are stopped then."""
        if self._timer is not None or self.stopped:
            return
        if self.grace is None:
            log.info("shutting down: %d chat requests running, waited for without limit", len(self))
            return
        delay = max(self.grace - min(STOP_MARGIN, self.grace / 2), 0.0)
        log.info(
            "shutting down: %d chat requests running; those still running in %.1f s end with 503 server_shutting_down",
            len(self),
            delay,
        )
        self._timer = asyncio.get_running_loop().call_later(delay, self.stop)

    def stop(self) -> int:
        """End every running stream (and any that would start) with the 503; how many were running."""
        self.stopped = True
        running = [stop for stop in self._stops if not stop.done()]
        for stop in running:
            stop.set_result(None)
        if running:
            log.warning("the server is shutting down: ending %d chat requests still running", len(running))
        return len(running)

    def close(self) -> None:
        """At the app's shutdown: no more watching; whatever still runs is stopped."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self.stop()

    def grace_after_signal(self) -> float:
        """How long an SSE response of ``sse_starlette`` (LangServe's /chat streams) may run on after the shutdown
        signal before that library cancels it itself: past the point where ``stop`` ends it cleanly."""
        return float("inf") if self.grace is None else self.grace + STOP_MARGIN


async def _until_stopped(task: asyncio.Task[T], stop: asyncio.Future[None]) -> T:
    """``task``'s result; the 503 when ``stop`` comes first (the task is cancelled then, as when we are)."""
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled: the client left, or uvicorn's own deadline came
        await _wind_down(task)
        raise
    if not task.done():
        await _wind_down(task)
        raise shutting_down()
    return task.result()


async def _next(events: AsyncIterator[Any]) -> Any:
    return await events.__anext__()


async def _wind_down(step: asyncio.Task[Any]) -> None:
    step.add_done_callback(_retrieved)
    step.cancel()
    await asyncio.wait((step,), timeout=CANCEL_WAIT)


def _retrieved(step: asyncio.Task[Any]) -> None:
    if not step.cancelled():
        step.exception()  # what an interrupted step raised is of no interest: nobody waits for it any more
