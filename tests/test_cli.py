"""`genai serve` as a user runs it: starts the local model, answers chat, stops the model with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from chains.local_model import free_port
from tests.conftest import MODEL_PATH, ROOT

pytestmark = pytest.mark.slow


def test_genai_serve_runs_and_stops_the_local_model(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "GENAI_DATA_DIR": str(tmp_path / "data"),
        "GENAI_LOCAL_MODEL_PATH": str(MODEL_PATH),
        "GENAI_LOCAL_MODEL_CONTEXT": "1024",
    }
    env.pop("GENAI_MODEL_ROUTES", None)
    env.pop("GENAI_ADMIN_KEY", None)
    genai = [sys.executable, "-m", "server"]
    run = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "check": True}
    subprocess.run([*genai, "apps", "create", "demo", "--rpm", "100"], **run)
    key = subprocess.run([*genai, "keys", "create", "--app", "demo"], **run).stdout.strip()
    assert key.startswith("sk-") and len(key) >= 46
    listed = subprocess.run([*genai, "keys", "list"], **run).stdout
    assert key[:12] in listed and key not in listed
    process = subprocess.Popen(
        [*genai, "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "genai serve did not become ready"
            time.sleep(0.3)
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-limit-requests"] == "100"
        assert (tmp_path / "data" / "genai.db").exists()
        assert (tmp_path / "data" / "logs" / "llama-server.log").exists()
        children = set(_llama_servers(parent=process.pid))
        assert children, "the local model server should be running"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    output = process.stdout.read().decode()
    assert "Admin key (shown once" in output  # first start with no admin key configured
    assert re.search(r"Admin key \(shown once.*\n\s+sk-[A-Za-z0-9_-]{43}\n", output)
    still_running = children & set(_llama_servers())
    assert not still_running, "the local model server must stop with the platform"


def _llama_servers(parent: int | None = None) -> list[str]:
    command = ["pgrep", "-f", "chains.llama_server"] + (["-P", str(parent)] if parent else [])
    return subprocess.run(command, capture_output=True, text=True).stdout.split()
