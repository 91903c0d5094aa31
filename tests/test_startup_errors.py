"""What `genai` says when it cannot start: a setting that does not parse, a database or Redis that does not answer.
One line naming the setting (passwords hidden), exit status 1, no traceback unless `--debug`; `genai serve` waits
a bounded time for a database and Redis started at the same moment as itself."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from chains.local_model_process import free_port
from server.startup_errors import hide_password
from tests.conftest import ROOT, genai_serve, outside_env

pytestmark = pytest.mark.slow  # subprocesses


def genai(*args: str, **settings: str) -> subprocess.CompletedProcess:
    env = outside_env()
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"GENAI_MODEL_ROUTES": "not json"}, "error: the setting GENAI_MODEL_ROUTES is not valid: Expecting value"),
        ({"GENAI_PORT": "eighty"}, "error: invalid setting GENAI_PORT: Input should be a valid integer"),
        (
            {"GENAI_MODEL_ROUTES": '[{"name": "x"}]'},
            "error: invalid setting GENAI_MODEL_ROUTES: Value error, route `x` needs a `base_url` or `deployments` "
            "(at model_routes.0)",
        ),
    ],
    ids=["not_json", "not_a_number", "route_without_url"],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path, settings, expected):
    done = genai("apps", "list", GENAI_DATA_DIR=str(tmp_path), **settings)
    assert done.returncode == 1 and done.stdout == ""
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(expected) and "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path):
    done = genai("--debug", "apps", "list", GENAI_DATA_DIR=str(tmp_path), GENAI_MODEL_ROUTES="not json")
    assert done.returncode == 1 and "Traceback" in done.stderr and "SettingsError" in done.stderr


def test_an_unreachable_database_is_named_with_its_password_hidden(tmp_path):
    url = f"postgresql+asyncpg://bob:s3cret@127.0.0.1:{free_port()}/genai"
    done = genai("keys", "list", GENAI_DATA_DIR=str(tmp_path), GENAI_DATABASE_URL=url)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "s3cret" not in done.stderr
    assert f"error: cannot reach the database at {url.replace('s3cret', '***')} (GENAI_DATABASE_URL)" in done.stderr


def test_serve_gives_up_on_redis_after_its_wait(tmp_path):
    started = time.monotonic()
    done = genai(
        "serve", GENAI_DATA_DIR=str(tmp_path), GENAI_REDIS_URL=f"redis://:pw@127.0.0.1:{free_port()}/0",
        GENAI_STARTUP_WAIT_SECONDS="2", GENAI_MODEL_ROUTES='[{"name": "m", "base_url": "http://127.0.0.1:9/v1"}]',
    )  # fmt: skip
    assert done.returncode == 1 and time.monotonic() - started < 60
    assert "waiting: cannot reach Redis at redis://:***@127.0.0.1" in done.stderr
    assert "error: cannot reach Redis at" in done.stderr and "Traceback" not in done.stderr


def test_serve_waits_for_a_redis_that_starts_after_it(tmp_path, mock_upstream):
    port = free_port()
    env = outside_env()
    env.update(
        GENAI_DATA_DIR=str(tmp_path / "data"),
        GENAI_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        GENAI_STARTUP_WAIT_SECONDS="60",
        GENAI_MODEL_ROUTES=f'[{{"name": "mock", "base_url": "{mock_upstream}"}}]',
    )
    redis = None

    def redis_started_late(log: str) -> bool:
        nonlocal redis
        if redis is None and "waiting: cannot reach Redis" in log:
            redis = subprocess.Popen(
                ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        return redis is not None

    try:
        with genai_serve(env=env, log_path=tmp_path / "serve.log", ready=redis_started_late) as (_, base):
            assert httpx.get(f"{base}/readyz", timeout=10).json()["checks"]["redis"] == "ok"
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)


def test_hide_password():
    assert hide_password("postgresql+asyncpg://bob:pw@db:5432/x") == "postgresql+asyncpg://bob:***@db:5432/x"
    assert hide_password("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert hide_password("sqlite+aiosqlite:///data/genai.db") == "sqlite+aiosqlite:///data/genai.db"
