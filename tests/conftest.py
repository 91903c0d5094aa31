"""Shared fixtures: the real llama.cpp model server, Redis, PostgreSQL, and live app servers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from sqlalchemy import select, text

from chains.local_model import local_route
from chains.local_model_process import LocalModelServer, free_port
from server.app import create_app
from server.settings import Settings
from storage import ConversationStore, Database
from storage.tables import Base
from tests.chroma_server import chroma_server_url  # noqa: F401  (a session fixture: one `chroma run` for the tests that need it)
from tests.postgres import fresh_postgres_database

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
REDIS_URL = os.environ.get("GENAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ADMIN_KEY = "sk-admin-0123456789abcdef0123456789abcdef"


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
    with fresh_postgres_database() as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that runs the real local model (its fixtures need ``llama``) is slow: `-m "not slow"` skips it."""
    for item in items:
        if "llama" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings in a fresh data directory; on the embedded defaults (the session's real model) unless the
    overrides name model routes."""

    def make(**overrides) -> Settings:
        # The semantic cache is off unless a test turns it on: a repeated question must reach the model elsewhere.
        values: dict = {"data_dir": tmp_path / "data", "admin_key": ADMIN_KEY, "cache_enabled": False}
        if "model_routes" not in overrides:
            if "llama" not in request.fixturenames:  # asked for at run time, after collection marked tests slow
                pytest.fail("this test runs the real local model: let one of its fixtures take `llama`")
            llama = request.getfixturevalue("llama")
            values.update(
                local_model_url=llama.base_url, local_model_path=MODEL_PATH, local_model_context=llama.context_window
            )
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

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the work the server does after its answers (token charges, cache stores) is done."""
        deadline = time.monotonic() + timeout
        while self.services.chat.busy:
            if time.monotonic() > deadline:
                raise TimeoutError("the server's background work did not finish")
            time.sleep(0.005)

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
        thread's own (the server's engine belongs to its loop). The usage records the server buffers are written
        first."""
        self.flush_writes()

        async def read() -> list[dict]:
            db = Database(self.services.db.url)
            try:
                async with db.engine.connect() as conn:
                    return [dict(row._mapping) for row in (await conn.execute(select(table))).all()]
            finally:
                await db.close()

        return asyncio.run(read())

    def flush_writes(self) -> None:
        """Write the usage records the server's writer buffers (storage/writer.py), in the server's loop."""
        writer = self.services.db.writer
        if (loop := writer.loop) is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(writer.flush(), loop).result(timeout=30)

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
def server(live_server, llama) -> LiveServer:
    """A live server on the embedded defaults (SQL memory)."""
    return live_server()


@pytest.fixture
def kb_server(live_server, mock_upstream) -> LiveServer:
    """A live server for the knowledge base's tests: its chat route is the mock upstream (no llama.cpp); Chroma is
    embedded in its data dir and the embeddings are the real local model."""
    from chains.model_routes import ModelRoute

    return live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)])


@pytest.fixture
def greedy_server(live_server, llama) -> LiveServer:
    """A live server whose local route answers greedily (temperature 0, a fixed seed) by default: for tests that
    assert an answer's text through entry points that send no generation parameters (LangServe's /chat)."""
    route = local_route(llama.base_url, str(MODEL_PATH), llama.context_window)
    deterministic = route.model_copy(update={"defaults": {**route.defaults, "temperature": 0.0, "seed": 1234}})
    return live_server(model_routes=[deterministic])


@pytest.fixture
def redis_server(live_server, redis_url, llama) -> LiveServer:
    """A live server with Redis memory."""
    return live_server(redis_url=redis_url)


def table_cell(table: str, row: str, column: str) -> str:
    """A cell of a table the CLI printed (columns aligned under their header; empty cells are blank): the word
    under ``column`` in the line that starts with ``row``."""
    lines = table.splitlines()
    line = next(line for line in lines if line.startswith(row))
    cell = line[lines[0].index(column) :].split()
    return cell[0] if cell else ""


def clear_of_window_edge(seconds: float = 5.0) -> None:
    """Wait out the end of the current epoch minute when fewer than ``seconds`` are left.

    In-process counters live in windows aligned to the minute; a sliding window that slides between two
    requests of a test would (correctly) free part of the budget and make exact counts flaky.
    """
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def outside_env() -> dict[str, str]:
    """This process's environment without its GENAI_ settings and metrics directory: what a ``genai serve`` that a
    test starts gets before the test's own settings."""
    return {name: value for name, value in os.environ.items() if not name.startswith(("GENAI_", "PROMETHEUS_"))}


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
    stops it as Ctrl-C would (SIGINT to its process group; SIGKILL after 30 s). No fine-tuning worker is started
    unless ``env`` sets ``GENAI_START_WORKER`` (tests of jobs and of the process tree do), and one worker process
    unless ``env`` sets ``GENAI_WORKERS`` or ``args`` ``--workers``.
    """
    env = {"GENAI_START_WORKER": "false", **env}
    if "--workers" not in args:  # one worker unless a test asks: with Redis, genai serve would start one per core
        env.setdefault("GENAI_WORKERS", "1")
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
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=30)
        except ProcessLookupError:  # the test stopped it already
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def serve_metrics_dir(log_path: Path) -> Path:
    """The multiprocess metrics directory of a ``genai serve --workers N`` (a temporary one: its log names it)."""
    found = re.search(r"metrics of the \d+ workers in (\S+?)\"", log_path.read_text())
    assert found, "genai serve logged no metrics directory"
    return Path(found.group(1))


def serve_app_key(base: str, app: str) -> str:
    """An API key of a new app ``app`` on a running ``genai serve`` (made with the admin key)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
        admin.post("/admin/apps", json={"name": app}).raise_for_status()
        created = admin.post("/admin/keys", json={"app": app})
        created.raise_for_status()
        return created.json()["key"]


# ---------------------------------------------------------------- the browser tests' chromium (Debian's, via Playwright)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags chromium keeps dialling Google's hosts, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
# Where the browser tests save their screenshots, to look at.
BROWSER_SCREENSHOTS = ROOT / ".cache" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs it (scripts/ensure-services)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# ---------------------------------------------------------------- the store on both engines; two turns of a chat


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """The URL of a real database for one test: a SQLite file of its own, or the session's PostgreSQL database.

    A test that only makes sense on one engine pins it: ``@pytest.mark.parametrize("db_url", ["postgresql"],
    indirect=True)``.
    """
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """The database at ``db_url`` at the newest schema revision and with no rows (on PostgreSQL every table is
    emptied, as the session's tests share that database)."""
    database = Database(db_url)
    await database.upgrade_schema()
    if not database.is_sqlite:
        tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        async with database.engine.begin() as conn:
            await conn.execute(text("SET LOCAL lock_timeout = '10s'"))  # fail, rather than hang, on a leftover lock
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> ConversationStore:
    return ConversationStore(db)


def two_turns(client: openai.OpenAI, first: str, second: str, **kwargs):
    """Two turns of one conversation through the openai SDK: ``first`` starts it (conversation_id "new"), ``second``
    continues it; ``kwargs`` go to both requests.

    Checks that the first answer names a new conversation and the second the same one; returns
    (first completion, second completion, conversation id).
    """

    def turn(content: str, conversation_id: str):
        return client.chat.completions.create(
            model="gemma-3-270m",
            messages=[{"role": "user", "content": content}],
            extra_body={"conversation_id": conversation_id},
            **kwargs,
        )

    opening = turn(first, "new")
    conversation_id = opening.model_extra["conversation_id"]
    assert conversation_id.startswith("conv_")
    follow_up = turn(second, conversation_id)
    assert follow_up.model_extra["conversation_id"] == conversation_id
    return opening, follow_up, conversation_id
