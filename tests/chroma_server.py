"""A throwaway Chroma server (``chroma run``) for tests of the client/server mode of the knowledge base.

Tests import the fixture with ``from tests.chroma_server import chroma_server_url  # noqa: F401``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from chains.local_model_process import free_port

CHROMA = Path(sys.executable).parent / "chroma"


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll the heartbeat until the server answers; fail early with its log when it exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chroma run exited with code {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            response = httpx.get(f"{url}/api/v2/heartbeat", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"chroma at {url} not ready within {timeout:g} s (last: {last})")


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the server we started (by its pid), SIGKILL it when it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def chroma_server(timeout: float = 60.0) -> Iterator[str]:
    """``chroma run`` on a free port with its data in a temporary directory; yields its URL, stops it afterwards."""
    with tempfile.TemporaryDirectory(prefix="genai-chroma-") as tmp:
        port = free_port()
        log = Path(tmp) / "chroma.log"
        command = [str(CHROMA), "run", "--path", str(Path(tmp) / "data"), "--port", str(port), "--host", "127.0.0.1"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log, timeout)
            yield url
        finally:
            _stop(process)


@pytest.fixture(scope="session")
def chroma_server_url() -> Iterator[str]:
    """One Chroma server for the test session; its base URL."""
    with chroma_server() as url:
        yield url
