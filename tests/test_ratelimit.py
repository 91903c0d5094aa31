"""Per-key rate limits: requests and tokens per minute, OpenAI's headers, 429 with Retry-After.

Against the real model and real Redis; the limiter runs in process without Redis and in Redis with it,
and two `genai serve` workers against one Redis share one budget.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    ADMIN_KEY,
    MODEL_PATH,
    ROOT,
    clear_of_window_edge,
    genai_serve,
    outside_env,
    serve_metrics_dir,
)

USER = {"role": "user", "content": "What is the capital of France?"}
RESET = re.compile(r"^(?:(\d+)ms|(\d+)s|(\d+)m(\d+)s)$")
REQUEST_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def reset_seconds(value: str) -> float:
    """OpenAI's reset duration ("120ms", "59s", "1m0s") in seconds; fails on anything else."""
    match = RESET.match(value)
    assert match, f"bad reset format: {value!r}"
    ms, s, m, ms_s = match.groups()
    if ms is not None:
        return int(ms) / 1000
    if s is not None:
        return int(s)
    assert int(ms_s) < 60, value
    return int(m) * 60 + int(ms_s)


def assert_rate_limit_error(response: httpx.Response, kind: str) -> dict:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == kind
    assert f"on {kind} per minute" in error["message"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    return error


@pytest.fixture(params=["memory", "redis"])
def limited(request, live_server, llama):
    """A live server whose limiter counts in process ("memory") or in Redis ("redis")."""
    if request.param == "redis":
        return live_server(redis_url=request.getfixturevalue("redis_url"))
    return live_server()


def chat(client: httpx.Client, **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": [USER], "max_tokens": 4, **extra})


def test_headers_on_successful_responses(limited):
    key = limited.create_key("tests", rpm=50, tpm=100_000)
    clear_of_window_edge(10)
    with limited.http(key) as client:
        listed = client.get("/v1/models")
        assert listed.status_code == 200
        completion = chat(client)
        assert completion.status_code == 200, completion.text
        with client.stream(
            "POST", "/v1/chat/completions", json={"messages": [USER], "max_tokens": 4, "stream": True}
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            body = streamed.read().decode()
            assert body.rstrip().endswith("data: [DONE]")
        after_stream = client.get("/v1/models")

    responses = [listed, completion, streamed, after_stream]
    for response in responses:
        for name in REQUEST_HEADERS + TOKEN_HEADERS:
            assert name in response.headers, (name, dict(response.headers))
        assert response.headers["x-ratelimit-limit-requests"] == "50"
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        assert 0 <= reset_seconds(response.headers["x-ratelimit-reset-requests"]) <= 60
        assert 0 <= reset_seconds(response.headers["x-ratelimit-reset-tokens"]) <= 60
        assert "retry-after" not in response.headers
    # One request each, counted before it is served.
    assert [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses] == [49, 48, 47, 46]
    # A request window was opened by the first request: it resets within the minute, not at once.
    assert reset_seconds(listed.headers["x-ratelimit-reset-requests"]) > 0
    # Tokens are charged after the answer: the completion's usage shows in the next response's headers.
    used = completion.json()["usage"]["total_tokens"]
    assert used > 0
    tokens = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in responses]
    assert tokens[0] == tokens[1] == 100_000
    assert tokens[2] == 100_000 - used
    assert tokens[3] < tokens[2]  # the stream's tokens were charged too
    assert reset_seconds(after_stream.headers["x-ratelimit-reset-tokens"]) > 0


def test_keys_without_limits_get_no_headers(server):
    with server.http() as client:  # the tests app's key has no rpm or tpm
        response = client.get("/v1/models")
    assert response.status_code == 200
    assert not [name for name in response.headers if name.startswith("x-ratelimit-")]


def test_requests_per_minute(limited):
    key = limited.create_key("tests", rpm=3)
    other = limited.create_key("tests", rpm=3)
    clear_of_window_edge()
    with limited.http(key) as client:
        admitted = [client.get("/v1/models") for _ in range(3)]
        refused = client.get("/v1/models")
        refused_chat = chat(client)
    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in admitted] == ["2", "1", "0"]
    for response in (refused, refused_chat):
        error = assert_rate_limit_error(response, "requests")
        assert "limit 3" in error["message"]
        assert key not in error["message"]  # the key's prefix only
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        reset = reset_seconds(response.headers["x-ratelimit-reset-requests"])
        assert 0 < reset <= 60
        assert int(response.headers["retry-after"]) == max(int(-(-reset // 1)), 1)
        assert "x-request-id" in response.headers

    # Another key of the same app has a budget of its own.
    with limited.http(other) as client:
        assert [client.get("/v1/models").status_code for _ in range(3)] == [200, 200, 200]
        assert_rate_limit_error(client.get("/v1/models"), "requests")

    # The openai SDK raises its RateLimitError (no retries asked).
    sdk = limited.openai(key)
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.models.list()
    assert raised.value.status_code == 429
    assert raised.value.code == "rate_limit_exceeded"
    assert int(raised.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gemma-3-270m", messages=[USER], max_tokens=4)


def test_tokens_per_minute(limited):
    clear_of_window_edge()
    tpm = 20
    key = limited.create_key("tests", tpm=tpm)
    other = limited.create_key("tests", tpm=tpm)
    clear_of_window_edge(15)
    used = 0
    with limited.http(key) as client:
        for _ in range(6):
            response = chat(client)
            if response.status_code != 200:
                break
            assert response.headers["x-ratelimit-limit-tokens"] == str(tpm)
            assert int(response.headers["x-ratelimit-remaining-tokens"]) == max(tpm - used, 0)
            assert "x-ratelimit-limit-requests" not in response.headers  # no rpm on this key
            used += response.json()["usage"]["total_tokens"]
        else:
            pytest.fail(f"still admitted after {used} tokens with a limit of {tpm}")
        assert used >= tpm  # admitted while budget was left
        error = assert_rate_limit_error(response, "tokens")
        assert f"limit {tpm}" in error["message"]
        assert response.headers["x-ratelimit-limit-tokens"] == str(tpm)
        assert response.headers["x-ratelimit-remaining-tokens"] == "0"
        assert 0 < reset_seconds(response.headers["x-ratelimit-reset-tokens"]) <= 60
        # Streaming is refused before it starts, with the same error.
        streamed = client.post("/v1/chat/completions", json={"messages": [USER], "max_tokens": 4, "stream": True})
        assert_rate_limit_error(streamed, "tokens")

    with pytest.raises(openai.RateLimitError):
        limited.openai(key).chat.completions.create(model="gemma-3-270m", messages=[USER], max_tokens=4)

    # Another key of the same app still has its whole budget.
    with limited.http(other) as client:
        fresh = chat(client)
    assert fresh.status_code == 200, fresh.text
    assert fresh.headers["x-ratelimit-remaining-tokens"] == str(tpm)


def test_limits_in_redis_are_shared_by_servers(live_server, redis_url, tmp_path, llama):
    """Two app instances on one database and one Redis (as replicas): one budget per key."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = live_server(redis_url=redis_url, database_url=database_url)
    second = live_server(redis_url=redis_url, database_url=database_url)
    key = first.create_key("tests", rpm=4)
    clear_of_window_edge()
    statuses = []
    for replica in (first, second, first, second, first, second):
        with replica.http(key) as client:
            statuses.append(client.get("/v1/models").status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_limits_in_process_are_per_server(live_server, tmp_path, llama):
    """Without Redis each process counts on its own (documented behaviour, not a shared budget)."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = live_server(database_url=database_url)
    second = live_server(database_url=database_url)
    key = first.create_key("tests", rpm=2)
    clear_of_window_edge()
    with first.http(key) as a, second.http(key) as b:
        assert [a.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]
        assert [b.get("/v1/models").status_code for _ in range(2)] == [200, 200]


# ---------------------------------------------------------------- genai serve --workers 2


def _serve_env(data_dir: Path, redis_url: str, llama_url: str) -> dict[str, str]:
    env = outside_env()
    env.update(
        GENAI_DATA_DIR=str(data_dir),
        GENAI_REDIS_URL=redis_url,
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_LOCAL_MODEL_URL=llama_url,
        GENAI_LOCAL_MODEL_PATH=str(MODEL_PATH),
    )
    return env


def _served_by_pid(metrics_dir: Path, route: str) -> dict[int, int]:
    """Requests to ``route`` that each worker process counted, from its prometheus multiprocess files."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[int, int] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            metric, sample, labels, *_ = json.loads(key)
            if sample == "genai_http_requests_total" and labels.get("route") == route:
                counts[pid] = counts.get(pid, 0) + int(value)
    return counts


@pytest.mark.slow
def test_two_workers_share_one_budget_in_redis(tmp_path, redis_url, llama):
    limit = 10
    data_dir = tmp_path / "data"
    env = _serve_env(data_dir, redis_url, llama.base_url)
    genai = [sys.executable, "-m", "server"]
    run = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "check": True}
    subprocess.run([*genai, "apps", "create", "workers-demo"], **run)
    key = subprocess.run([*genai, "keys", "create", "--app", "workers-demo", "--rpm", str(limit)], **run).stdout.strip()
    assert key.startswith("sk-")

    log_path = tmp_path / "serve.log"
    both_workers_up = lambda log: log.count("Application startup complete") >= 2  # noqa: E731
    with genai_serve("--workers", "2", env=env, log_path=log_path, ready=both_workers_up, timeout=90) as (_, base):
        clear_of_window_edge()
        gate = threading.Barrier(2 * limit)

        def one_request(_: int) -> httpx.Response:
            gate.wait(timeout=30)
            # A new client, so a new connection: the kernel hands each to whichever worker accepts it.
            return httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(max_workers=2 * limit) as pool:
            responses = list(pool.map(one_request, range(2 * limit)))

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * limit + [429] * limit, [r.text for r in responses if r.status_code not in (200, 429)]
        for response in responses:
            assert response.headers["x-ratelimit-limit-requests"] == str(limit)
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "rate_limit_exceeded"
                assert int(response.headers["retry-after"]) >= 1
        remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200]
        assert min(remaining) == 0 and max(remaining) < limit  # each admitted request saw the shared count

        # Both workers served some of them (each worker writes its metrics to its own files).
        served = _served_by_pid(serve_metrics_dir(log_path), "/v1/models")
        assert sum(served.values()) == 2 * limit, served
        assert len(served) == 2, f"one worker served everything: {served}"
