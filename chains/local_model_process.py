"""The local model's process: llama-cpp-python's OpenAI-compatible server as a supervised child.

``LocalModelServer`` starts ``python -m chains.llama_server`` (the stock server
with the ``genai-qa`` chat format) on a free loopback port, waits until it
answers, and stops it with the platform, however the platform stops:

* Ctrl-C, SIGINT or SIGTERM to ``genai serve``: its ``finally`` stops the child
  (``genai serve`` turns SIGTERM into ``SystemExit`` so that ``finally`` runs);
* SIGKILL of ``genai serve``, or any death that skips ``finally``: the child
  watches its parent (``watch_parent``) and exits within a second of losing it.

Worker processes of ``genai serve --workers N`` watch their parent the same way.

The server keeps recent prompts' key-value states in RAM (``PROMPT_CACHE_BYTES``, ``--cache``; see
``chains.llama_server.lean_saved_states`` for why that is affordable), so that a conversation's next turn re-reads
only what is new even when other requests came in between.

With ``adapters_dir``, the server also answers tuned models (``ft:...:<id>``) with the LoRA adapter
``<adapters_dir>/<id>.gguf`` applied per request (see ``chains.llama_server``); adapters written there later are
served without a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from chains.local_model import CHAT_FORMAT, LOCAL_MODEL_NAME, ensure_local_model

log = logging.getLogger(__name__)


PARENT_PID_ENV = "GENAI_PARENT_PID"
PARENT_POLL_SECONDS = 0.5
# llama.cpp's RAM prompt cache: the key-value states of recent prompts (about 18 KB a token on Gemma 3 270M, so some
# 14,000 tokens: half a dozen long conversations), so that conversations whose turns interleave each find their prefix
# instead of re-reading their history. Measured with two interleaved conversations of ~250-token turns: prompt
# tokens reused 0% without, ~80% with it; time to first token ~2-5 s without, ~0.3-0.6 s with; the server's memory
# stayed under its size on top of ~0.5 GB. Saving a state costs ~50 ms at 2,000 tokens, after the answer.
PROMPT_CACHE_BYTES = 256 * 1024 * 1024


def watch_parent(parent_pid: int, on_orphaned: Callable[[], None]) -> threading.Thread:
    """Call ``on_orphaned`` once ``parent_pid`` is no longer this process's parent (it died, and the process was
    reparented). A daemon thread polling ``os.getppid()``: portable, and unlike Linux's ``PR_SET_PDEATHSIG``
    not tied to the lifetime of the parent's thread that started the child."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        on_orphaned()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def terminate_self() -> None:
    """SIGTERM to this process: servers shut down as they would when told to stop."""
    os.kill(os.getpid(), signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM a child the platform started, and SIGKILL it when it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalModelServer:
    """A llama.cpp server child process on loopback; use as a context manager."""

    def __init__(
        self,
        model_path: Path,
        *,
        context_window: int = 4096,
        threads: int = 2,
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 180.0,
        adapters_dir: Path | None = None,
        prompt_cache_bytes: int = PROMPT_CACHE_BYTES,
    ) -> None:
        self.model_path = Path(model_path)
        self.context_window = context_window
        self.threads = threads
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else None
        self.prompt_cache_bytes = prompt_cache_bytes  # 0: no prompt cache (only the previous request's prefix)
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        adapters = ["--adapters_dir", str(self.adapters_dir)] if self.adapters_dir is not None else []
        cache = ["--cache", "True", "--cache_type", "ram", "--cache_size", str(self.prompt_cache_bytes)]
        return [
            sys.executable, "-m", "chains.llama_server",
            "--model", str(self.model_path),
            "--model_alias", LOCAL_MODEL_NAME,
            "--chat_format", CHAT_FORMAT,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.context_window),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--verbose", "False",
            # The stock server cuts a streaming answer short when another request arrives;
            # a shared platform must queue them instead.
            "--interrupt_requests", "False",
            *adapters,
            *(cache if self.prompt_cache_bytes > 0 else []),
        ]  # fmt: skip

    def start(self) -> LocalModelServer:
        ensure_local_model(self.model_path)
        if self.adapters_dir is not None:
            self.adapters_dir.mkdir(parents=True, exist_ok=True)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid())},
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        self.wait_ready()
        log.info("local model %s ready at %s", LOCAL_MODEL_NAME, self.base_url)
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the local model server exited with code {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the local model server did not answer within {self.startup_timeout:g} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout=10)

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
