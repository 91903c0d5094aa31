"""`genai serve` as a user runs it: starts the local model, answers chat, stops the model with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import MODEL_PATH, ROOT, genai_serve

pytestmark = pytest.mark.slow


def test_genai_serve_runs_and_stops_the_local_model(tmp_path):
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
    log_path = tmp_path / "serve.log"
    with genai_serve(env=env, log_path=log_path, ready_path="/readyz") as (process, base):
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
    output = log_path.read_text()
    assert "Admin key (shown once" in output  # first start with no admin key configured
    assert re.search(r"Admin key \(shown once.*\n\s+sk-[A-Za-z0-9_-]{43}\n", output)
    still_running = children & set(_llama_servers())
    assert not still_running, "the local model server must stop with the platform"


def _llama_servers(parent: int | None = None) -> list[str]:
    command = ["pgrep", "-f", "chains.llama_server"] + (["-P", str(parent)] if parent else [])
    return subprocess.run(command, capture_output=True, text=True).stdout.split()
