"""Shared fixtures: the real llama.cpp model server, Redis, PostgreSQL, and live app servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from chains.local_model_process import LocalModelServer, free_port
from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
REDIS_URL = os.environ.get("GENAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ADMIN_KEY = "sk-admin-0123456789abcdef0123456789abcdef"
POSTGRES_ADMIN_URL = os.environ.get("GENAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def llama() -> Iterator[LocalModelServer]:
    """One llama.cpp server with the Gemma model for the whole test session."""
    server = LocalModelServer(MODEL_PATH, context_window=2048, threads=2, log_path=ROOT / ".cache" / "llama-test.log")
    with server:
        yield server


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[str]:
    """A fast OpenAI-compatible upstream with a fixed reply (``tests.mock_upstream.REPLY``); its base URL."""
    from tests.mock_upstream import serve_mock_upstream

    with serve_mock_upstream() as base_url:
        yield base_url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    client.flushdb()
    client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    import asyncpg

    name = f"genai_test_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def make_settings(tmp_path: Path, llama: LocalModelServer) -> Callable[..., Settings]:
    """Settings on the embedded defaults, in a fresh data directory, against the session's model."""

    def make(**overrides) -> Settings:
        values = {
            "data_dir": tmp_path / "data",
            "local_model_url": llama.base_url,
            "local_model_path": MODEL_PATH,
            "local_model_context": llama.context_window,
            "admin_key": ADMIN_KEY,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


class LiveServer:
    """The app under uvicorn in a thread, on a free loopback port, with one app ("tests") and its key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = ""
        self.app = create_app(settings)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self):
        return self.app.state.services

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.key = self.create_key("tests")
        return self

    def create_key(self, app: str, **limits) -> str:
        """A key for ``app`` (created when missing), through the admin API."""
        with self.http(key=ADMIN_KEY) as admin:
            if admin.get(f"/admin/apps/{app}").status_code == 404:
                admin.post("/admin/apps", json={"name": app}).raise_for_status()
            created = admin.post("/admin/keys", json={"app": app, **limits})
            created.raise_for_status()
            return created.json()["key"]

    def rows(self, table) -> list[dict]:
        """Every row of ``table`` (a SQLAlchemy table) in the server's database, read through an engine of this
        thread's own (the server's engine belongs to its loop)."""
        from sqlalchemy import select

        from storage import Database

        async def read() -> list[dict]:
            db = Database(self.services.db.url)
            try:
                async with db.engine.connect() as conn:
                    return [dict(row._mapping) for row in (await conn.execute(select(table))).all()]
            finally:
                await db.close()

        return asyncio.run(read())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def openai(self, key: str | None = None, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0, **kwargs)

    def http(self, key: str | None = None) -> httpx.Client:
        """A client sending ``key`` (the tests app's key by default; "" for none)."""
        key = self.key if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)


@pytest.fixture
def live_server(make_settings) -> Iterator[Callable[..., LiveServer]]:
    """Start as many live servers as a test wants; each stops at the end of the test."""
    started: list[LiveServer] = []

    def start(settings: Settings | None = None, **overrides) -> LiveServer:
        server = LiveServer(settings or make_settings(**overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(live_server) -> LiveServer:
    """A live server on the embedded defaults (SQL memory)."""
    return live_server()


@pytest.fixture
def redis_server(live_server, redis_url) -> LiveServer:
    """A live server with Redis memory."""
    return live_server(redis_url=redis_url)


@contextmanager
def genai_serve(
    *args: str,
    env: dict[str, str],
    log_path: Path,
    ready_path: str = "/healthz",
    ready: Callable[[str], bool] = lambda log: True,
    timeout: float = 120,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``genai serve --port P *args`` as a user runs it, in its own session, writing to ``log_path``.

    Yields (process, base URL) once ``ready_path`` answers 200 and ``ready(log text)`` holds; then
    stops it as Ctrl-C would (SIGINT to its process group; SIGKILL after 30 s).
    """
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, log_path.read_text()
            if ready(log_path.read_text()):
                try:
                    if httpx.get(f"{base}{ready_path}", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, "genai serve did not become ready:\n" + log_path.read_text()
            time.sleep(0.3)
        yield process, base
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
