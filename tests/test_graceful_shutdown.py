"""SIGTERM to a real ``genai serve`` with streams running (GENAI_SHUTDOWN_GRACE_SECONDS=4, on a scripted upstream that
streams a chunk every half second): a stream that ends within the grace period ends normally; the streams still
running a second before it ends get, on ``/v1/chat/completions``, ``data: {"error": {... "server_shutting_down"}}``
and ``data: [DONE]``, and on LangServe's ``/chat/stream`` an ``error`` event (status 503) and ``end``, each in a
complete body; each has a failed usage record; and the process exits soon after, without uvicorn having to cancel
anything."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from chains.model_routes import ModelRoute
from errors import APIError
from server.shutdown import RunningChats
from tests.conftest import ADMIN_KEY, genai_serve, outside_env, serve_app_key
from tests.controlled_upstream import ControlledUpstream, controlled_upstream
from tests.scripted_upstream import ScriptedUpstream, fault_route, serve_scripted_upstream

GRACE = 4.0  # GENAI_SHUTDOWN_GRACE_SECONDS: the streams still running are stopped a second before it ends
LONG = " ".join(["word"] * 120)  # answered in about 123 chunks: a minute at a chunk every half second


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as url:
        yield url


@dataclass
class Reader:
    """A streamed request read in a thread: each SSE line with when it arrived, and whether the body ended cleanly."""

    name: str
    request: dict
    lines: list[tuple[float, str]] = field(default_factory=list)
    status: int = 0
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)  # the first content has arrived
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, base: str, key: str) -> Reader:
        threading.Thread(target=self._read, args=(base, key), daemon=True).start()
        return self

    def _read(self, base: str, key: str) -> None:
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
                with client.stream("POST", **self.request) as response:
                    self.status = response.status_code
                    for line in response.iter_lines():
                        self.lines.append((time.monotonic(), line))
                        if '"content":"' in line and '"content":""' not in line:
                            self.started.set()
        except BaseException as exc:  # a cut body: httpx.RemoteProtocolError
            self.error = exc
        finally:
            self.started.set()
            self.done.set()

    def data(self) -> list[tuple[float, str, str]]:
        """(arrival, event name, data) of each data line."""
        found, name = [], "message"
        for moment, line in self.lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                found.append((moment, name, line[5:].strip()))
            elif not line:
                name = "message"
        return found


@pytest.fixture(scope="module")
def stuck() -> Iterator[ControlledUpstream]:
    """A model that takes a minute for a plain (not streamed) answer."""
    with controlled_upstream("stuck") as upstream:
        upstream.delay = 60
        yield upstream


def serve_env(data_dir: Path, upstream: str, stuck: ControlledUpstream) -> dict[str, str]:
    env = outside_env()
    routes = [
        fault_route("slow", upstream, delay=0.5, timeout=120),
        fault_route("quick", upstream, delay=0.05, timeout=120),
        ModelRoute(name="stuck", base_url=stuck.url, first_byte_timeout=120, timeout=120, max_retries=0),
    ]
    env.update(
        GENAI_DATA_DIR=str(data_dir),
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_MODEL_ROUTES=json.dumps([route.model_dump(mode="json") for route in routes]),
        GENAI_CACHE_ENABLED="false",
        GENAI_SHUTDOWN_GRACE_SECONDS=str(GRACE),
    )
    return env


def logged_at(log: str, message: str) -> float:
    """The time (epoch seconds) of the first JSON log line whose message starts with ``message``."""
    for line in log.splitlines():
        if line.startswith("{") and (entry := json.loads(line))["message"].startswith(message):
            return dt.datetime.fromisoformat(entry["ts"]).timestamp()
    raise AssertionError(f"not logged: {message}")


def usage_rows(data_dir: Path) -> dict[str, tuple[str, bool]]:
    """response id -> (status, stream) of every usage record, read from the SQLite file after the server exited."""
    with sqlite3.connect(data_dir / "genai.db") as db:
        return {row[0]: (row[1], bool(row[2])) for row in db.execute("SELECT response_id, status, stream FROM usage")}


def test_sigterm_ends_running_streams_with_an_error_event_and_a_usage_record(tmp_path, upstream, stuck):
    data_dir = (tmp_path / "data").resolve()
    log_path = tmp_path / "serve.log"
    with genai_serve(env=serve_env(data_dir, upstream, stuck), log_path=log_path) as (serve, base):
        key = serve_app_key(base, "shutdown")
        plain: dict[str, httpx.Response] = {}

        def ask_plain() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
                body = {"model": "stuck", "messages": [{"role": "user", "content": "hi"}]}
                plain["response"] = client.post("/v1/chat/completions", json=body)

        plain_thread = threading.Thread(target=ask_plain, daemon=True)
        plain_thread.start()
        v1 = Reader(
            "v1",
            {
                "url": "/v1/chat/completions",
                "json": {"model": "slow", "stream": True, "messages": [{"role": "user", "content": LONG}]},
            },
        ).run(base, key)
        langserve = Reader(
            "langserve",
            {
                "url": "/chat/stream",
                "json": {"input": {"messages": [{"type": "human", "content": LONG}]}},
                "headers": {"X-Model": "slow"},
            },
        ).run(base, key)
        for reader in (v1, langserve):
            assert reader.started.wait(30), reader
        # 13 chunks, one every 0.05 s: it ends well within the grace period
        quick = Reader(
            "quick",
            {
                "url": "/v1/chat/completions",
                "json": {"model": "quick", "stream": True, "messages": [{"role": "user", "content": "one two " * 5}]},
            },
        ).run(base, key)
        assert quick.started.wait(30)

        signalled, signalled_at = time.monotonic(), time.time()
        os.kill(serve.pid, signal.SIGTERM)
        for reader in (v1, langserve, quick):
            assert reader.done.wait(GRACE + 10), f"{reader.name} did not end"
        plain_thread.join(GRACE + 10)
        exit_status = serve.wait(timeout=GRACE + 30)
        exited = time.monotonic() - signalled
    log = log_path.read_text()
    finished = logged_at(log, "Finished server process") - signalled_at

    # The quick stream ended as usual, before the stop.
    assert quick.error is None and quick.status == 200
    quick_data = quick.data()
    assert quick_data[-1][2] == "[DONE]" and json.loads(quick_data[-2][2])["choices"][0]["finish_reason"] == "stop"
    assert quick_data[-1][0] - signalled < GRACE - 1

    # /v1/chat/completions: content, then OpenAI's error event, then [DONE]; the body complete.
    assert v1.error is None and v1.status == 200, v1.error
    v1_data = v1.data()
    assert v1_data[-1][2] == "[DONE]"
    error = json.loads(v1_data[-2][2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    assert "shutting down" in error["message"] and "retry" in error["message"]
    chunks = [json.loads(data) for _, _, data in v1_data[:-2]]
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) >= 2
    error_after = v1_data[-2][0] - signalled
    # stopped a second before the grace period ends (uvicorn notices the signal within 0.1 s; the watcher as fast)
    assert GRACE - 1 - 0.5 < error_after < GRACE + 0.5, error_after

    # LangServe's /chat/stream: data, then the error event with its status and the error, then end.
    assert langserve.error is None and langserve.status == 200, langserve.error
    names = [name for _, name, _ in langserve.data()]
    assert names[0] == "metadata" and names[-1] == "error" and set(names[1:-1]) == {"data"}
    ending = [line for _, line in langserve.lines if line][-2:]
    assert ending[-1] == "event: end"
    langserve_error = json.loads(langserve.data()[-1][2])
    assert langserve_error["status_code"] == 503 and langserve_error["error"]["code"] == "server_shutting_down"
    assert GRACE - 1 - 0.5 < langserve.data()[-1][0] - signalled < GRACE + 0.5

    # uvicorn finished without cancelling a task, the process exited cleanly, and the stop is logged.
    assert exit_status == 0, (exit_status, log)
    assert finished < GRACE + 1, finished
    assert "timeout graceful shutdown exceeded" not in log
    assert "ending 3 chat requests still running" in log

    # A plain request still waiting for its model: the same 503, as a response.
    assert plain["response"].status_code == 503
    assert plain["response"].json()["error"]["code"] == "server_shutting_down"

    # The usage records: the two stopped streams failed with server_shutting_down, the quick one is ok.
    rows = usage_rows(data_dir)
    v1_id = chunks[0]["id"]
    langserve_id = json.loads(langserve.data()[1][2])["id"]
    quick_id = json.loads(quick_data[0][2])["id"]
    assert rows[v1_id] == ("server_shutting_down", True)
    assert rows[langserve_id] == ("server_shutting_down", True)
    assert rows[quick_id] == ("ok", True)
    assert sorted(status for status in rows.values()) == sorted(
        [("server_shutting_down", True), ("server_shutting_down", True), ("ok", True), ("server_shutting_down", False)]
    )
    print(
        f"error event {error_after:.2f} s after SIGTERM (grace {GRACE:g} s); uvicorn finished after {finished:.2f} s; "
        f"exit status {exit_status} after {exited:.2f} s"
    )


# ---------------------------------------------------------------- the guard itself, without a server


async def ticking(closed: list[str], count: int = 1000, every: float = 0.01):
    try:
        for index in range(count):
            await asyncio.sleep(every)
            yield index
    finally:
        closed.append("closed")


async def test_stop_ends_a_guarded_stream_where_it_waits_and_refuses_new_ones():
    streams, closed, received = RunningChats(), [], []

    async def consume() -> None:
        async for item in streams.guard(ticking(closed)):
            received.append(item)

    task = asyncio.create_task(consume())
    while len(received) < 3:
        await asyncio.sleep(0.01)
    assert len(streams) == 1 and streams.stop() == 1
    with pytest.raises(APIError) as raised:
        await task
    assert raised.value.status_code == 503 and raised.value.code == "server_shutting_down"
    assert closed == ["closed"] and len(streams) == 0  # the interrupted generator ran its cleanup
    with pytest.raises(APIError):  # a stream that would start now
        await anext(streams.guard(ticking([])))


async def test_a_guarded_stream_runs_to_its_end_and_its_consumer_can_be_cancelled():
    streams, closed = RunningChats(), []
    assert [item async for item in streams.guard(ticking(closed, count=5, every=0))] == [0, 1, 2, 3, 4]
    assert closed == ["closed"] and len(streams) == 0

    closed.clear()

    async def consume() -> None:
        async for _ in streams.guard(ticking(closed, every=10)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["closed"] and len(streams) == 0 and not streams.stopped


async def test_begin_stops_streams_a_second_before_the_grace_period_ends():
    streams = RunningChats()
    streams.watch(default_grace=1.5)  # no uvicorn server in this thread's signal handlers: the setting's grace
    assert streams.grace == 1.5
    started = time.monotonic()
    streams.begin()
    while not streams.stopped:
        await asyncio.sleep(0.01)
    assert 0.7 < time.monotonic() - started < 1.2  # 1.5 - min(1, 1.5 / 2)
    streams.close()


@pytest.mark.parametrize(("stop", "kept"), [(signal.SIGTERM, 5), (signal.SIGKILL, 0)])
def test_buffered_usage_records_are_written_on_a_graceful_stop_and_lost_in_a_crash(tmp_path, mock_upstream, stop, kept):
    """Usage records of stateless requests wait in the writer's buffer (a 60 s flush interval here): SIGTERM writes
    them before the process exits; SIGKILL loses them, as the README says a crash does."""
    data_dir = (tmp_path / "data").resolve()
    env = outside_env()
    env.update(
        GENAI_DATA_DIR=str(data_dir),
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_MODEL_ROUTES=json.dumps([{"name": "mock", "base_url": mock_upstream, "max_retries": 0}]),
        GENAI_CACHE_ENABLED="false",
        GENAI_USAGE_FLUSH_SECONDS="60",
    )
    with genai_serve(env=env, log_path=tmp_path / "serve.log") as (serve, base):
        key = serve_app_key(base, "buffered")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for n in range(5):
                body = {"model": "mock", "messages": [{"role": "user", "content": f"question {n}"}]}
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert usage_rows(data_dir) == {}  # still in the buffer
        os.killpg(serve.pid, stop)
        serve.wait(timeout=30)
    assert len(usage_rows(data_dir)) == kept


def test_sigterm_drains_first_not_ready_still_serving_then_stops(tmp_path, upstream, stuck):
    """GENAI_DRAIN_SECONDS=3: after SIGTERM /readyz answers 503 draining at once, requests are still served (with
    ``Connection: close``) and a stream that began before runs to its end; after the drain the port is closed."""
    env = {**serve_env((tmp_path / "data").resolve(), upstream, stuck), "GENAI_DRAIN_SECONDS": "3"}
    log_path = tmp_path / "serve.log"
    with genai_serve(env=env, log_path=log_path) as (serve, base):
        key = serve_app_key(base, "drain")
        words = "one two three four five six"  # six chunks, one every half second: ends within the drain
        stream = Reader(
            "stream",
            {
                "url": "/v1/chat/completions",
                "json": {"model": "slow", "stream": True, "messages": [{"role": "user", "content": words}]},
            },
        ).run(base, key)
        assert stream.started.wait(30)
        signalled = time.monotonic()
        os.kill(serve.pid, signal.SIGTERM)
        time.sleep(0.3)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json() == {"status": "draining", "checks": {}}
            assert client.get("/healthz").status_code == 200  # alive: a liveness probe must not restart it
            body = {"model": "quick", "messages": [{"role": "user", "content": "still serving"}]}
            served = client.post("/v1/chat/completions", json=body)
            assert served.status_code == 200 and served.headers["connection"] == "close"
            assert time.monotonic() - signalled < 2.5  # all of that within the drain
        assert stream.done.wait(30)
        exit_status = serve.wait(timeout=30)
        stopped = time.monotonic() - signalled
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=5)
    assert stream.error is None and stream.status == 200
    data = stream.data()
    assert data[-1][2] == "[DONE]" and json.loads(data[-2][2])["choices"][0]["finish_reason"] == "stop"
    assert exit_status == 0 and 3.0 <= stopped < 3.0 + GRACE + 5, stopped
    log = log_path.read_text()
    assert logged_at(log, "Shutting down") - logged_at(log, "draining:") >= 2.9


def test_a_second_sigterm_skips_the_drain(tmp_path, upstream, stuck):
    env = {**serve_env((tmp_path / "data").resolve(), upstream, stuck), "GENAI_DRAIN_SECONDS": "60"}
    with genai_serve(env=env, log_path=tmp_path / "serve.log") as (serve, base):
        signalled = time.monotonic()
        os.kill(serve.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503
        os.kill(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 15


async def test_a_listener_that_refuses_handshakes_still_hands_out_what_was_queued():
    """The end of a drain (server/drain.py): a connection queued before is accepted; a new one gets no handshake
    (its SYN is dropped: the client's kernel would retry and then find the port closed), not a reset after its
    request was sent."""
    from types import SimpleNamespace

    from server.drain import refuse_handshakes

    accepted = asyncio.Event()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    listener = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=2)  # in the queue, not yet accepted
    assert refuse_handshakes(SimpleNamespace(servers=[listener])) == 1
    await asyncio.wait_for(accepted.wait(), 5)
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 0.5)
    queued.close()
    listener.close()
    await listener.wait_closed()
