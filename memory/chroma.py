"""The Chroma client of the knowledge base: embedded by default, a Chroma server when a URL is configured.

The embedded ``PersistentClient`` keeps its SQLite and HNSW files open in one process: fine for a single worker, but
two processes writing the same directory corrupt it. With several workers or replicas, run ``chroma run`` once and
point every process at it with ``url``; ``genai serve --workers N`` does that itself with ``LocalChromaServer``.

chromadb is imported where it is used (it takes a second): ``genai serve`` supervises a Chroma server without it.
"""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from chains.local_model_process import free_port

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.config import Settings

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/api/v2/heartbeat"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def chroma_settings() -> Settings:
    """No telemetry (nothing leaves the machine) and no ``reset()`` (a production store is never wiped by a call)."""
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False)


def open_chroma(data_dir: Path, url: str | None = None) -> ClientAPI:
    """A client of the server at ``url`` (``http://host:port``), else an embedded store in ``data_dir/chroma``."""
    import chromadb

    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a Chroma server URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return chromadb.HttpClient(
            host=parts.hostname, port=port, ssl=parts.scheme == "https", settings=chroma_settings()
        )
    path = Path(data_dir) / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings())


class ChromaServerError(RuntimeError):
    """The local Chroma server could not be started; the message is for the operator, who needs no traceback."""


def cosine_collection(client: ClientAPI, name: str) -> Collection:
    """The collection ``name``, made when missing, in cosine space and without an embedding function: Chroma's
    default one downloads its model at run time, so callers always pass their own vectors."""
    return client.get_or_create_collection(name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)


def chroma_executable() -> Path:
    """The ``chroma`` command of this environment (installed with chromadb), else the first one on PATH."""
    beside = Path(sys.executable).parent / "chroma"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("chroma")
    if found:
        return Path(found)
    raise ChromaServerError(
        f"the `chroma` command was found neither next to {sys.executable} nor on PATH: install chromadb in this "
        "environment, or run a Chroma server yourself and set GENAI_CHROMA_URL"
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the child when this process dies, even by SIGKILL.

    ``chroma run`` is not our code, so it cannot watch its parent as our children do (``watch_parent``); Linux's
    ``PR_SET_PDEATHSIG`` does it for it. The signal follows the death of the *thread* that started the child, so it
    is only set from the main thread (which lives as long as the process); elsewhere, and off Linux, None.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come, so do not start at all
            os._exit(1)

    return preexec


class LocalChromaServer:
    """``chroma run`` on a free loopback port as a supervised child process; use as a context manager.

    ``start()`` returns once the server answers its heartbeat (or raises ``ChromaServerError``); ``stop()`` sends
    SIGTERM, waits, and SIGKILLs it after ``stop_timeout``. It lives in its own session, so a Ctrl-C in a terminal
    reaches only the platform, which stops its workers first and then this server.
    """

    def __init__(
        self,
        path: Path,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path).resolve()
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        executable = str(chroma_executable())
        return [executable, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self) -> LocalChromaServer:
        command = self.command()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
                output = self.log_path.open("ab")
            else:
                output = subprocess.DEVNULL
        except OSError as exc:
            raise ChromaServerError(f"cannot prepare the Chroma server's files: {exc}") from exc
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},  # plain log lines (the banner stays colourful)
                start_new_session=True,
                # The kernel stops it when this process dies, however it dies. Safe with threads: the child only
                # calls an already resolved C function before exec.
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )
        except OSError as exc:
            raise ChromaServerError(f"cannot run {command[0]}: {exc}") from exc
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # the child has its own descriptor
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        log.debug("Chroma server ready at %s (pid %d, data in %s)", self.url, self.process.pid, self.path)
        return self

    def wait_ready(self) -> None:
        """Poll the heartbeat until the server answers; fail early, with the last line it wrote, when it exits."""
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process is not None else None
                raise ChromaServerError(f"the Chroma server exited (code {code}) before it answered{self._said()}")
            try:
                status = self._heartbeat()
                if status == 200:
                    return
                last = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise ChromaServerError(
            f"the Chroma server at {self.url} did not answer within {self.startup_timeout:g} s ({last}){self._said()}"
        )

    def _heartbeat(self) -> int:
        """The status of ``GET /api/v2/heartbeat``: plain http.client, as loopback needs no proxy, and a poll every
        tenth of a second must not write a log line each (httpx logs every request)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", HEARTBEAT_PATH)
            return connection.getresponse().status
        finally:
            connection.close()

    def _said(self) -> str:
        """The last line the server wrote in this run, and where its log is: enough to act on, without a banner."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as file:
            file.seek(self._log_offset)
            text = ANSI_ESCAPE.sub("", file.read().decode(errors="replace"))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return (f": {lines[-1]}" if lines else "") + f" (log: {self.log_path})"

    def stop(self) -> None:
        """SIGTERM (Chroma shuts down cleanly on it), then SIGKILL when it lingers; only the process we started."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "the Chroma server (pid %d) did not stop within %g s: killing it", process.pid, self.stop_timeout
            )
            process.kill()
            process.wait()

    def __enter__(self) -> LocalChromaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
