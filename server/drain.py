"""Draining before a stop, so that a rolling restart fails no request.

On SIGTERM a replica first says it is no longer ready (``/readyz`` answers 503 ``draining``) and goes on serving for
``drain_seconds``: time for a load balancer that follows readiness (Kubernetes' endpoints, an nginx upstream kept in
step with ``/readyz``, HAProxy's health checks) to stop sending it requests while it still accepts them. Only then
does uvicorn's own shutdown begin: it stops accepting connections and gives the requests in flight the shutdown
grace period (``server/shutdown.py``). Responses sent while draining carry ``Connection: close``, so that a client
or proxy holding a kept-alive connection to this replica opens its next one elsewhere.

When the drain ends, the listening sockets first stop completing new TCP handshakes (a socket filter that drops
every incoming SYN, on Linux) and the server accepts what is already queued for ``ACCEPT_SECONDS``; only then does it
close them. Closing a listening socket resets the connections still in its queue: a load balancer that had
connected and sent a request there would see it fail, and may not retry a POST that reached a server. A dropped SYN
is retried by the client's kernel a second later, finds the port closed, and a balancer such as nginx passes the
request to another replica (a refused connection: nothing was sent).

A second SIGTERM, or SIGINT (Ctrl-C), skips the rest of the drain. With ``drain_seconds`` 0 (the default: a single
server, or nginx, which does not follow readiness) readiness still turns false at once, and the shutdown begins
after ``ACCEPT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import socket
import struct
import sys
from types import FrameType

import uvicorn

from server.shutdown import uvicorn_server

log = logging.getLogger(__name__)

ACCEPT_SECONDS = 0.2  # between refusing new handshakes and closing the listening sockets
SO_ATTACH_FILTER = 26  # Linux's <asm-generic/socket.h>
# A classic BPF program of one instruction, "return 0": the packet is dropped (struct sock_filter: code, jt, jf, k).
_DROP_ALL = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0
_DROP_ALL_PROGRAM = struct.pack("HP", 1, ctypes.addressof(_DROP_ALL))  # struct sock_fprog: len, filter


def refuse_handshakes(server: uvicorn.Server) -> int:
    """Make ``server``'s listening sockets drop incoming SYNs (Linux); how many sockets now do. Connections already
    queued are still accepted."""
    if not sys.platform.startswith("linux"):
        return 0
    done = 0
    for listener in getattr(server, "servers", None) or ():
        for sock in listener.sockets or ():
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_ALL_PROGRAM)
                done += 1
            except OSError as error:  # a kernel without socket filters: the queue is reset at close, as before
                log.warning("cannot make the listening socket refuse new connections: %s", error)
    return done


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

        def on_signal(signum: int, frame: FrameType | None) -> None:
            first = not self.draining
            self.draining = True
            if not first or signum != signal.SIGTERM:
                if self._timer is not None:
                    loop.call_soon_threadsafe(self._timer.cancel)
                server.handle_exit(signum, frame)
                return
            if seconds > 0:
                log.info("draining: /readyz answers 503; the server stops accepting connections in %.1f s", seconds)
            loop.call_soon_threadsafe(self._later, loop, seconds, self._close_listeners, server, signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _later(self, loop: asyncio.AbstractEventLoop, seconds: float, callback, *args) -> None:
        self._timer = loop.call_later(seconds, callback, *args)

    def _close_listeners(self, server: uvicorn.Server, signum: int) -> None:
        """The end of the drain: no new handshakes, what is queued accepted, then uvicorn's shutdown."""
        refuse_handshakes(server)
        self._later(asyncio.get_running_loop(), ACCEPT_SECONDS, server.handle_exit, signum, None)
