"""Hostile connections against a real `genai serve` (on the mock upstream), through raw sockets: oversized and too
many headers get 431 and a closed connection; headers trickled a byte at a time are cut off at the header deadline,
counted from the request's start; a body shorter than its Content-Length gets 408 at the body deadline; connections
above the per-worker cap get 503 in OpenAI's error shape; and a few hundred half-sent requests leave the server
answering everyone else at once. Limits: server/gateway/connection_limits.py."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from chains.model_routes import ModelRoute
from tests.conftest import ADMIN_KEY, genai_serve, outside_env

pytestmark = pytest.mark.slow  # subprocesses

TIMEOUT = 2.0  # the header and body deadlines of the `quick` server, in seconds
MARGIN = 3.0  # generous: a loaded machine may be late, never early
CAP = 300  # the `capped` server's connections per worker


@contextmanager
def serving(tmp_path_factory, mock_upstream: str, **settings: str) -> Iterator[tuple[str, int]]:
    """`genai serve` on the mock upstream with ``settings``; yields (base URL, port)."""
    data_dir = tmp_path_factory.mktemp("hostile")
    env = outside_env()
    route = ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)
    env.update(
        GENAI_DATA_DIR=str(data_dir / "data"),
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_MODEL_ROUTES=json.dumps([route.model_dump(mode="json")]),
        **settings,
    )
    with genai_serve(env=env, log_path=data_dir / "serve.log") as (_, base):
        yield base, int(base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def quick(tmp_path_factory, mock_upstream) -> Iterator[tuple[str, int]]:
    """Default header limits (32 KiB, 100 fields), 2 s header and body deadlines."""
    with serving(
        tmp_path_factory,
        mock_upstream,
        GENAI_HEADER_TIMEOUT_SECONDS=str(TIMEOUT),
        GENAI_BODY_IDLE_TIMEOUT_SECONDS=str(TIMEOUT),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def capped(tmp_path_factory, mock_upstream) -> Iterator[tuple[str, int]]:
    """Default deadlines (10 s for headers: idle attackers stay for the whole test), at most CAP connections."""
    with serving(tmp_path_factory, mock_upstream, GENAI_MAX_CONNECTIONS=str(CAP)) as server:
        yield server


# ---------------------------------------------------------------- raw HTTP/1.1 over a socket


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (an error if it does not within ``within``
    seconds); and the seconds that took."""
    started = time.monotonic()
    data = b""
    while True:
        left = within - (time.monotonic() - started)
        assert left > 0, f"the connection is still open after {within} s; received {data[:200]!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {name.lower(): value for name, value in headers.items()}, body


def refusal(response: bytes, status: int, code: str) -> dict:
    """The ``error`` of a refusal: ``status``, OpenAI's shape with ``code``, and ``connection: close``."""
    got, headers, body = parse(response)
    assert got == status, response[:300]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def get_healthz(sock: socket.socket) -> tuple[int, bytes]:
    """One GET /healthz on a kept-alive connection: (status, body)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    status, headers, body = parse(data)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, body


def healthy(base: str) -> None:
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


# ---------------------------------------------------------------- header limits


def test_oversized_headers_get_431_and_the_connection_closes(quick):
    base, port = quick
    with connect(port) as sock:
        try:  # the server answers at 32 KiB, and drains the rest so that the answer is read, not reset
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        except OSError:
            pass
        response, _ = read_until_closed(sock, within=10)
    error = refusal(response, 431, "request_header_fields_too_large")
    assert "32768 bytes" in error["message"] and error["type"] == "invalid_request_error"

    with connect(port) as sock:  # many fields of ordinary size, adding up to more than the limit
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Pad: %s\r\n" % (b"p" * 500) * 80 + b"\r\n")
        refusal(read_until_closed(sock, within=10)[0], 431, "request_header_fields_too_large")

    with connect(port) as sock:  # the request line is part of the limit: a long URL is 414
        sock.sendall(b"GET /healthz?q=" + b"q" * 40_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
        refusal(read_until_closed(sock, within=10)[0], 414, "uri_too_long")
    healthy(base)


def test_too_many_headers_get_431_and_headers_within_the_limits_are_served(quick):
    base, port = quick
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)))
        error = refusal(read_until_closed(sock, within=10)[0], 431, "request_header_fields_too_large")
    assert "limit is 100" in error["message"]

    # 95 fields (httpx adds 5) and about 31 KiB: just within both limits.
    fields = {f"x-h{i}": "v" * 340 for i in range(90)}
    assert httpx.get(f"{base}/healthz", headers=fields, timeout=10).status_code == 200


# ---------------------------------------------------------------- deadlines


@pytest.mark.parametrize("kept_alive", [False, True], ids=["fresh", "kept_alive"])
def test_headers_trickled_a_byte_every_100_ms_are_cut_off_at_the_header_deadline(quick, kept_alive):
    _, port = quick
    request = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 1000 + b"\r\n\r\n"
    with connect(port) as sock:
        if kept_alive:  # a request served on the connection first: the next one's deadline starts with its first byte
            assert get_healthz(sock)[0] == 200
        started = time.monotonic()
        sock.setblocking(False)
        for byte in request:  # 1,000 bytes at 10 a second: 100 s, far beyond the deadline
            try:
                sock.send(bytes([byte]))
            except OSError:  # reset while sending: cut off
                break
            if select.select([sock], [], [], 0.1)[0]:  # the server answered or closed
                break
            assert time.monotonic() - started < TIMEOUT + MARGIN, "the slow headers are still being accepted"
        sock.setblocking(True)
        response, _ = read_until_closed(sock, within=MARGIN)
        elapsed = time.monotonic() - started
    assert TIMEOUT - 0.2 <= elapsed < TIMEOUT + MARGIN  # from the start, not reset by every byte
    refusal(response, 408, "request_timeout")


def test_headers_sent_slowly_but_within_the_deadline_are_served(quick):
    _, port = quick
    with connect(port) as sock:
        for part in (b"GET /healthz HT", b"TP/1.1\r\nHost: te", b"st\r\nConnection: close\r\n\r\n"):
            sock.sendall(part)
            time.sleep(0.3)
        assert parse(read_until_closed(sock, within=10)[0])[0] == 200


def test_an_idle_connection_is_closed_at_the_header_deadline(quick):
    _, port = quick
    with connect(port) as sock:
        response, elapsed = read_until_closed(sock, within=TIMEOUT + MARGIN)
    assert response == b"" and elapsed >= TIMEOUT - 0.2  # closed without an answer: it asked nothing


def test_a_body_shorter_than_its_content_length_gets_408_at_the_body_deadline(quick):
    base, port = quick
    with connect(port) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": "mock", "messages": ['
        )
        response, elapsed = read_until_closed(sock, within=TIMEOUT + MARGIN)
    assert elapsed >= TIMEOUT - 0.2
    error = refusal(response, 408, "request_timeout")
    assert "stopped arriving" in error["message"]

    # A body arriving slowly but steadily (a chunk every 0.5 s, under the deadline) is read to its end.
    body = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    with connect(port) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-unknown\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), len(body) // 4 + 1):
            time.sleep(0.5)
            sock.sendall(body[start : start + len(body) // 4 + 1])
        assert parse(read_until_closed(sock, within=10)[0])[0] == 401  # read whole, then refused for its key
    healthy(base)


# ---------------------------------------------------------------- the connection cap, and an attack


def test_connections_above_the_cap_get_503_in_openai_shape(capped):
    base, port = capped
    with ExitStack() as idle:
        for _ in range(CAP - 1):
            idle.enter_context(connect(port))
        deadline = time.monotonic() + 10
        while True:  # the CAP-th connection is served (retried while the server lets go of earlier tests' sockets)
            if get_healthz(idle.enter_context(connect(port)))[0] == 200:
                break
            assert time.monotonic() < deadline, "the CAP-th connection was refused"
        with connect(port) as above:  # one more, with the CAP-th still open: refused
            above.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            response, _ = read_until_closed(above, within=10)
    error = refusal(response, 503, "service_unavailable")
    assert error["type"] == "server_error" and f"limit of {CAP} open connections" in error["message"]
    assert parse(response)[1]["retry-after"] == "1"

    deadline = time.monotonic() + 10  # the idle ones closed: ordinary requests are served again
    while httpx.get(f"{base}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "still refused after the idle connections closed"
        time.sleep(0.1)


def test_the_server_answers_promptly_during_an_attack_of_half_sent_requests(capped):
    base, port = capped
    attackers = []
    with ExitStack() as attack:
        for i in range(250):
            sock = attack.enter_context(connect(port))
            attackers.append(sock)
            if i % 2:  # headers that stop midway
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            else:  # a body that stops midway
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 100000\r\n\r\n{"model": '
                )
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(20):
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - started < 1.0  # milliseconds when idle; generous on a loaded machine
        # Meanwhile the attack went on: not one of its connections was answered or closed.
        poll = select.poll()
        for sock in attackers:
            poll.register(sock, select.POLLIN)
        assert poll.poll(0) == []
