"""The database stops answering under a live server (PostgreSQL behind a TCP relay the test closes and opens
again: every connection through it cut, new ones refused): requests get 503 saying the database is unavailable,
never 500; /readyz says why; both recover by themselves when it is back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from chains.model_routes import ModelRoute
from tests.postgres import fresh_postgres_database
from tests.test_errors import assert_error

pytestmark = pytest.mark.slow  # PostgreSQL


class Relay:
    """A TCP relay from a loopback port to PostgreSQL; ``stop`` cuts every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(): close alone does not
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def relayed_database() -> Iterator[tuple[str, Relay]]:
    with fresh_postgres_database() as url:
        relay = Relay(("127.0.0.1", 5432))
        relay.start()
        try:
            yield url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"), relay
        finally:
            relay.stop()


def test_a_database_outage_is_503_and_recovers(live_server, mock_upstream, relayed_database):
    url, relay = relayed_database
    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)], database_url=url
    )
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    with server.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        server.services.auth.forget()  # the key must be looked up in the database again
        relay.stop()
        for _ in range(2):
            error = assert_error(http.post("/v1/chat/completions", json=body), 503, code="service_unavailable")
            assert error["message"] == "The database is unavailable right now; please retry later."
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
        relay.start()
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.get("/readyz").json()["checks"]["database"] == "ok"


def test_conversation_turns_are_stored_across_a_database_outage(live_server, mock_upstream, relayed_database):
    """The writer keeps its connection while busy (storage/engine.py): the connection the outage broke is replaced,
    a turn during the outage is a 503 that stored nothing, and the turns after it are stored once each."""
    url, relay = relayed_database
    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)], database_url=url
    )
    with server.http() as http:
        first = http.post(
            "/v1/chat/completions",
            json={"model": "mock", "messages": [{"role": "user", "content": "one"}], "conversation_id": "new"},
        )
        assert first.status_code == 200
        conversation = first.json()["conversation_id"]

        def turn(content: str):
            body = {
                "model": "mock",
                "messages": [{"role": "user", "content": content}],
                "conversation_id": conversation,
            }
            return http.post("/v1/chat/completions", json=body)

        assert turn("two").status_code == 200
        relay.stop()
        assert_error(turn("during the outage"), 503, code="service_unavailable")
        relay.start()
        assert turn("three").status_code == 200  # at once: the writer's broken connection was dropped
        time.sleep(1.5)  # idle longer than WRITER_IDLE_SECONDS: the next turn checks out a fresh connection
        assert turn("four").status_code == 200
        stored = [m["content"] for m in http.get(f"/v1/conversations/{conversation}").json()["messages"]]
    assert stored[::2] == ["one", "two", "three", "four"]
    assert len(stored) == 8
