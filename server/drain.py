"""Draining before a stop, so that a rolling restart fails no request.

On SIGTERM a replica first says it is no longer ready (``/readyz`` answers 503 ``draining``) and goes on serving for
``drain_seconds``: time for a load balancer that follows readiness (Kubernetes' endpoints, an nginx upstream kept in
step with ``/readyz``, HAProxy's health checks) to stop sending it requests while it still accepts them. Only then
does uvicorn's own shutdown begin: it stops accepting connections and gives the requests in flight the shutdown
grace period (``server/shutdown.py``). Responses sent while draining carry ``Connection: close``, so that a client
or proxy holding a kept-alive connection to this replica opens its next one elsewhere.

A second SIGTERM, or SIGINT (Ctrl-C), skips the rest of the drain. With ``drain_seconds`` 0 (the default: a single
server, or Kubernetes, whose ``preStop`` pause does the waiting) readiness still turns false at once, and the
shutdown begins at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

from server.shutdown import uvicorn_server

log = logging.getLogger(__name__)


class Drain:
    """Whether this process is draining, and the signal handler that starts it (``install``)."""

    def __init__(self) -> None:
        self.draining = False
        self._timer: asyncio.TimerHandle | None = None

    def install(self, seconds: float) -> None:
        """Take SIGTERM and SIGINT over from the uvicorn server running this app (``capture_signals`` puts its own
        handlers back when it ends). Without one (a server in a thread) nothing is installed."""
        server = uvicorn_server()
        if server is None:
            return
        loop = asyncio.get_running_loop()
        stop_now = server.handle_exit

        def on_signal(signum: int, frame: FrameType | None) -> None:
            first = not self.draining
            self.draining = True
            if not first or signum != signal.SIGTERM or seconds <= 0:
                if self._timer is not None:
                    loop.call_soon_threadsafe(self._timer.cancel)
                stop_now(signum, frame)
                return
            log.info("draining: /readyz answers 503; the server stops accepting connections in %.1f s", seconds)
            loop.call_soon_threadsafe(self._stop_later, loop, seconds, stop_now, signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _stop_later(self, loop: asyncio.AbstractEventLoop, seconds: float, stop_now, signum: int) -> None:
        self._timer = loop.call_later(seconds, stop_now, signum, None)
