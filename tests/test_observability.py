"""Request ids, JSON logs without secrets, and Prometheus metrics (single process and several workers)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from chains.local_model import local_route
from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from server.app import create_app
from server.json_logs import JsonFormatter, RedactSecrets, redact
from tests.conftest import ADMIN_KEY, MODEL_PATH, ROOT, genai_serve, serve_metrics_dir

GENERATED_ID = re.compile(r"req_[0-9a-f]{32}")
FULL_KEY = "sk-" + "0123456789abcdef" * 4  # 64 hex characters
QUESTION = {"role": "user", "content": "What is the capital of France?"}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(v for n, l, v in samples(text) if n == name and labels.items() <= l.items())


def scrape(server) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# ---------------------------------------------------------------- request ids


def test_request_id_is_echoed_when_sane_and_generated_otherwise(server):
    with server.http() as http:
        assert http.get("/healthz", headers={"X-Request-ID": "client-42.a_b"}).headers["x-request-id"] == "client-42.a_b"
        assert GENERATED_ID.fullmatch(http.get("/healthz").headers["x-request-id"])
        for bad in ("has spaces", "x" * 129, "semi;colon", "new\\nline"):
            echoed = http.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
            assert GENERATED_ID.fullmatch(echoed), bad
        assert http.get("/healthz", headers={"X-Request-ID": "x" * 128}).headers["x-request-id"] == "x" * 128
        # Each request gets its own id.
        assert http.get("/healthz").headers["x-request-id"] != http.get("/healthz").headers["x-request-id"]


def test_request_id_is_on_error_responses(live_server, llama):
    server = live_server(max_body_bytes=4096)
    with server.http() as http:
        cases = {
            404: http.get("/v1/nothing-here", headers={"X-Request-ID": "r404"}),
            405: http.get("/v1/chat/completions", headers={"X-Request-ID": "r405"}),
            400: http.post("/v1/chat/completions", json={"messages": []}, headers={"X-Request-ID": "r400"}),
            413: http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 10_000}]},
                headers={"X-Request-ID": "r413"},
            ),
        }
        for status, response in cases.items():
            assert response.status_code == status, response.text
            assert response.headers["x-request-id"] == f"r{status}"
            assert "error" in response.json()
    with server.http(key="") as anonymous:
        response = anonymous.get("/v1/models")
        assert response.status_code == 401
        assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


def test_request_id_is_on_streaming_responses(server):
    body = {"messages": [QUESTION], "stream": True, "max_tokens": 8}
    with server.http() as http:
        with http.stream("POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": "stream-1"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-request-id"] == "stream-1"
            assert "data: [DONE]" in list(response.iter_lines())
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert GENERATED_ID.fullmatch(response.headers["x-request-id"])
            response.read()


# ---------------------------------------------------------------- JSON logs


class JsonLines(logging.Handler):
    """Collects what the platform's formatter and filter make of every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.addFilter(RedactSecrets())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def json_lines(caplog):
    caplog.set_level(logging.INFO)
    handler = JsonLines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def access_line(handler: JsonLines, request_id: str, timeout: float = 5.0) -> dict:
    """The access-log line of ``request_id`` (written after the response's last byte)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in handler.records() if r["logger"] == "genai.access" and r["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(found) == 1, handler.lines
    return found[0]


def test_access_log_is_json_with_request_id_and_no_full_key(server, json_lines):
    with server.http(key=FULL_KEY) as stranger:
        response = stranger.get("/v1/models", headers={"X-Request-ID": "log-401"})
        assert response.status_code == 401
    line = access_line(json_lines, "log-401")
    assert set(line) >= {"ts", "level", "logger", "message", "request_id", "method", "path", "route", "status", "duration_ms"}
    assert (line["level"], line["method"], line["path"], line["route"], line["status"]) == (
        "INFO", "GET", "/v1/models", "/v1/models", 401,
    )
    assert line["duration_ms"] >= 0

    with server.http() as http:
        response = http.post(
            "/v1/chat/completions", json={"messages": [QUESTION], "max_tokens": 8}, headers={"X-Request-ID": "log-200"}
        )
        assert response.status_code == 200
    line = access_line(json_lines, "log-200")
    assert (line["route"], line["status"], line["app"]) == ("/v1/chat/completions", 200, "tests")
    assert server.key.startswith(line["key_prefix"]) and len(line["key_prefix"]) < len(server.key) - 8

    assert json_lines.lines
    for text in json_lines.lines:
        json.loads(text)  # one JSON object per line
        assert "\n" not in text
        assert FULL_KEY not in text and server.key not in text and ADMIN_KEY not in text


def test_unhandled_errors_carry_the_request_id_in_response_and_logs(make_settings, json_lines, llama):
    app = create_app(make_settings())

    async def boom():
        raise RuntimeError(f"upstream said no to {FULL_KEY}")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "r500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "r500"
    assert response.json()["error"]["code"] == "internal_error"
    assert access_line(json_lines, "r500")["status"] == 500
    errors = [r for r in json_lines.records() if r["level"] == "ERROR" and r["request_id"] == "r500"]
    assert errors and "RuntimeError" in errors[0]["exc_info"]
    assert all(FULL_KEY not in line for line in json_lines.lines)


def test_formatter_redacts_keys_and_authorization_and_keeps_extras():
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "genai.test", logging.WARNING, __file__, 1, "calling with %s and headers %s", (FULL_KEY, {"Authorization": "Basic abc"}), None
    )
    record.upstream = {"authorization": f"Bearer {FULL_KEY}"}
    record.count = 3
    line = json.loads(formatter.format(record))
    text = json.dumps(line)
    assert FULL_KEY not in text and "Basic abc" not in text
    assert "sk-...cdef" in line["message"]
    assert line["count"] == 3
    assert line["request_id"] is None  # outside a request
    assert (line["level"], line["logger"]) == ("WARNING", "genai.test")

    try:
        raise RuntimeError(f"upstream refused {FULL_KEY}")
    except RuntimeError:
        record = logging.LogRecord("genai.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = json.loads(formatter.format(record))
    assert "RuntimeError" in line["exc_info"] and FULL_KEY not in line["exc_info"]

    assert redact("Authorization: Bearer secret-token") == "Authorization: ***"
    assert redact("sent bearer abc.def") == "sent bearer ***"
    assert redact("short sk-abc stays") == "short sk-abc stays"
    assert redact("key sk-KUqsnW_-p... was revoked") == "key sk-KUqsnW_-p... was revoked"  # a key prefix is fine
    assert redact("key sk-KUqsnW_-pCWfP3F83") == "key sk-...3F83"
    assert redact(f"[(b'authorization', b'Bearer {FULL_KEY}')]") == "[(b'authorization', b'***')]"


# ---------------------------------------------------------------- metrics


def test_metrics_count_requests_tokens_and_time_to_first_token(server):
    client = server.openai()
    plain = client.chat.completions.create(model="gemma-3-270m", messages=[QUESTION], max_tokens=8).usage
    chunks = list(
        client.chat.completions.create(
            model="gemma-3-270m", messages=[QUESTION], max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    usage = chunks[-1].usage
    httpx.get(f"{server.url}/v1/nothing", timeout=10)

    text = scrape(server)
    chat = {"method": "POST", "route": "/v1/chat/completions"}
    assert value(text, "genai_http_requests_total", status="200", **chat) == 2
    assert value(text, "genai_http_request_duration_seconds_count", **chat) == 2
    assert value(text, "genai_http_requests_total", route="unmatched", status="404") == 1
    assert value(text, "genai_time_to_first_token_seconds_count", model="gemma-3-270m") == 1
    assert 0 < value(text, "genai_time_to_first_token_seconds_sum", model="gemma-3-270m") < 60
    prompt = value(text, "genai_tokens_total", model="gemma-3-270m", direction="prompt")
    completion = value(text, "genai_tokens_total", model="gemma-3-270m", direction="completion")
    assert prompt == plain.prompt_tokens + usage.prompt_tokens > 0
    assert completion == plain.completion_tokens + usage.completion_tokens > 0
    assert value(text, "genai_model_errors_total") == 0


@pytest.fixture
def down_server(live_server, llama):
    routes = [
        local_route(llama.base_url, str(MODEL_PATH), llama.context_window),
        # free_port() returns a port that nothing listens on any more.
        ModelRoute(name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0),
    ]
    return live_server(model_routes=routes)


def test_metrics_count_model_errors_by_model_and_code(down_server):
    with down_server.http() as http:
        for stream in (False, True):
            response = http.post("/v1/chat/completions", json={"model": "down", "messages": [QUESTION], "stream": stream})
            assert response.status_code == 503
        assert http.post("/v1/chat/completions", json={"model": "nope", "messages": [QUESTION]}).status_code == 404
    text = scrape(down_server)
    assert value(text, "genai_model_errors_total", model="down", code="service_unavailable") == 2
    assert value(text, "genai_model_errors_total") == 2  # a client error (404) is not a model error
    assert value(text, "genai_http_requests_total", route="/v1/chat/completions", status="503") == 2


def test_metrics_count_rate_limit_rejections(server):
    key = server.create_key("limited", rpm=1)
    with server.http(key=key) as http:
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/models").status_code == 429
    text = scrape(server)
    assert value(text, "genai_rate_limited_total", limit="requests") == 1
    assert value(text, "genai_rate_limited_total", limit="tokens") == 0
    assert value(text, "genai_http_requests_total", route="/v1/models", status="429") == 1


def test_metrics_can_require_an_admin_key(live_server, llama):
    server = live_server(metrics_require_admin=True)
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    with server.http() as app_key:
        assert app_key.get("/metrics").status_code == 403
    with server.http(key=ADMIN_KEY) as admin:
        response = admin.get("/metrics")
        assert response.status_code == 200
        assert "genai_http_requests_total" in response.text


# ---------------------------------------------------------------- several workers

_WORKER = """
import sys
from server.gateway.prometheus_metrics import Metrics
first, second = Metrics(), Metrics()  # one app per worker, or several in one process: no duplicate metrics
first.observe_request("GET", "/healthz", 200, 0.01)
second.count_tokens("m", 5, 7)
"""

_RENDER = """
import sys
from server.gateway.prometheus_metrics import Metrics
metrics = Metrics()
assert metrics.multiprocess
sys.stdout.write(metrics.render()[0].decode())
"""


def test_multiprocess_metrics_sum_every_worker(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for _ in range(3):
        subprocess.run([sys.executable, "-c", _WORKER], cwd=ROOT, env=env, check=True, timeout=60)
    text = subprocess.run(
        [sys.executable, "-c", _RENDER], cwd=ROOT, env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert value(text, "genai_http_requests_total", method="GET", route="/healthz", status="200") == 3
    assert value(text, "genai_tokens_total", model="m", direction="prompt") == 15
    assert value(text, "genai_tokens_total", model="m", direction="completion") == 21


@pytest.mark.slow
def test_genai_serve_with_workers_logs_json_and_aggregates_metrics(tmp_path, llama):
    env = {
        **os.environ,
        "GENAI_DATA_DIR": str(tmp_path / "data"),
        "GENAI_LOCAL_MODEL_URL": llama.base_url,
        "GENAI_LOCAL_MODEL_PATH": str(MODEL_PATH),
        "GENAI_ADMIN_KEY": ADMIN_KEY,
    }
    for name in ("GENAI_MODEL_ROUTES", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    log_path = tmp_path / "serve.log"
    with genai_serve("--workers", "2", env=env, log_path=log_path, timeout=90) as (_, base):
        for i in range(20):
            # A new connection each time, so both workers serve some.
            assert httpx.get(f"{base}/healthz", headers={"X-Request-ID": f"multi-{i}"}, timeout=10).status_code == 200
        counts = set()
        for _ in range(4):
            text = httpx.get(f"{base}/metrics", timeout=10).text
            counts.add(value(text, "genai_http_requests_total", route="/healthz", status="200"))
        assert min(counts) >= 21  # the readiness poll's hits plus 20, whichever worker answers /metrics
        metrics_dir = serve_metrics_dir(log_path)
        assert len(list(metrics_dir.glob("counter_*.db"))) >= 1
        assert not (tmp_path / "data" / "prometheus").exists()  # not in the data dir, which replicas may share
    assert not metrics_dir.exists()  # removed at exit
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r["logger"] == "genai.access" and str(r["request_id"]).startswith("multi-")]
    assert len(access) == 20
    assert all(r["route"] == "/healthz" and r["status"] == 200 for r in access)
    assert any(r["logger"].startswith("uvicorn") for r in records), "uvicorn's own lines go through the JSON formatter"
    assert ADMIN_KEY not in log_path.read_text()


def test_a_client_that_leaves_before_the_answer_is_logged_as_499(live_server, mock_upstream, json_lines):
    """Not as a 500: the platform did nothing wrong (a body cut short, the connection closed)."""
    import socket

    from chains.model_routes import ModelRoute

    server = live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream)])
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: left-early\r\n"
            + f"Authorization: Bearer {server.key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":"
        )
        time.sleep(0.3)
    line = access_line(json_lines, "left-early")
    assert line["status"] == 499
