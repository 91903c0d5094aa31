"""CORS for browser apps of other origins (server/gateway/cors.py): allowed origins per app and platform-wide,
preflights answered before authentication, CORS headers on answers (errors and streams too) for the calling app's
origins only, never credentials. With raw HTTP, and in a real browser (Debian's chromium, driven by Playwright) from
pages served on other loopback ports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from chains.model_routes import ModelRoute
from server.gateway.cors import ALLOWED_HEADERS, EXPOSED_HEADERS, check_origin
from server.settings import Settings
from storage import Database
from storage.tenants import TenantStore
from tests.conftest import ADMIN_KEY, ROOT, LiveServer, outside_env, table_cell
from tests.test_errors import assert_error

PLATFORM_WIDE = "https://console.example.com"  # GENAI_CORS_ORIGINS of the module's server
SPA = "http://127.0.0.1:5173"  # the origin of the "spa" app's frontend
ELSEWHERE = "https://evil.example"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mock_upstream) -> Iterator[LiveServer]:
    """One live server for the module, on the mock upstream, with one platform-wide origin and an app "spa" whose
    pages come from SPA. Its caches (keys, the apps' origins) live 1 s rather than 5 s, to keep the test short."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("cors") / "data",
        admin_key=ADMIN_KEY,
        cache_enabled=False,
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)],
        cors_origins=[PLATFORM_WIDE],
    )
    server = LiveServer(settings)
    server.app.state.cors.cache_seconds = 1.0
    server.services.auth.cache_seconds = 1.0
    server.start()
    with server.http(key=ADMIN_KEY) as admin:
        admin.post("/admin/apps", json={"name": "spa", "cors_origins": [SPA]}).raise_for_status()
    server.spa_key = server.create_key("spa")
    yield server
    server.stop()


@pytest.fixture
def admin(platform) -> Iterator[httpx.Client]:
    with platform.http(key=ADMIN_KEY) as client:
        yield client


def preflight(platform: LiveServer, origin: str, method: str = "POST", headers: str = "authorization, content-type"):
    return httpx.options(
        f"{platform.url}/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def get_models(platform: LiveServer, origin: str | None, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if origin is not None:
        headers["Origin"] = origin
    return httpx.get(f"{platform.url}/v1/models", headers=headers)


def assert_no_credentials(response: httpx.Response) -> None:
    assert "access-control-allow-credentials" not in response.headers


def assert_cors(response: httpx.Response, allowed: str) -> None:
    """The answer is readable by a page of ``allowed`` (an origin or *), with the platform's headers exposed."""
    assert response.headers.get("access-control-allow-origin") == allowed, dict(response.headers)
    exposed = {name.strip() for name in response.headers["access-control-expose-headers"].split(",")}
    assert set(EXPOSED_HEADERS) <= exposed
    assert "Origin" in response.headers["vary"]
    assert_no_credentials(response)


def assert_not_cors(response: httpx.Response) -> None:
    assert not [name for name in response.headers if name.startswith("access-control-")], dict(response.headers)


# ---------------------------------------------------------------------------------------------------------------
# Preflights


def test_a_preflight_from_an_apps_origin_is_answered_before_any_key(platform):
    response = preflight(platform, SPA, headers="authorization, content-type, idempotency-key, x-stainless-os")
    assert response.status_code == 204 and response.content == b""
    assert response.headers["access-control-allow-origin"] == SPA
    assert {"POST", "GET", "DELETE", "PATCH"} <= {
        m.strip() for m in response.headers["access-control-allow-methods"].split(",")
    }
    allowed = {name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")}
    assert {name.lower() for name in ALLOWED_HEADERS} <= allowed
    assert "x-stainless-os" in allowed  # what the openai JS SDK adds: asked for, so allowed
    assert int(response.headers["access-control-max-age"]) > 0
    assert {"Origin", "Access-Control-Request-Headers"} <= {v.strip() for v in response.headers["vary"].split(",")}
    assert response.headers["x-request-id"].startswith("req_")
    assert_no_credentials(response)


def test_a_preflight_from_a_platform_wide_origin_is_allowed(platform):
    response = preflight(platform, PLATFORM_WIDE)
    assert response.status_code == 204 and response.headers["access-control-allow-origin"] == PLATFORM_WIDE


@pytest.mark.parametrize("origin", [ELSEWHERE, "http://127.0.0.1:5174", "https://127.0.0.1:5173", "null"])
def test_a_preflight_from_another_origin_is_refused(platform, origin):
    response = preflight(platform, origin)
    error = assert_error(response, 403, code="cors_not_allowed")
    assert origin in error["message"] and "cors_origins" in error["message"]
    assert_not_cors(response)


def test_a_preflight_for_a_method_the_api_has_not_is_refused(platform):
    response = preflight(platform, SPA, method="PUT")
    assert_error(response, 403, code="cors_not_allowed")
    assert_not_cors(response)


def test_an_options_request_that_is_not_a_preflight_is_the_apps_business(platform):
    """Without Access-Control-Request-Method an OPTIONS request is not a preflight: the routes answer it."""
    response = httpx.options(f"{platform.url}/v1/models", headers={"Origin": SPA})
    assert response.status_code == 405


# ---------------------------------------------------------------------------------------------------------------
# Answers


def test_answers_are_readable_from_the_origins_of_the_calling_app_only(platform):
    assert_cors(get_models(platform, SPA, platform.spa_key), SPA)
    # The "tests" app allows no origin of its own: the page of SPA may not read answers to its keys.
    other = get_models(platform, SPA, platform.key)
    assert other.status_code == 200 and "Origin" in other.headers["vary"]
    assert_not_cors(other)
    # An origin of no app.
    assert_not_cors(get_models(platform, ELSEWHERE, platform.spa_key))
    # The platform-wide origins may read the answers to every app's keys, and to admin keys (only they may).
    assert_cors(get_models(platform, PLATFORM_WIDE, platform.key), PLATFORM_WIDE)
    admin_apps = httpx.get(
        f"{platform.url}/admin/apps", headers={"Authorization": f"Bearer {ADMIN_KEY}", "Origin": PLATFORM_WIDE}
    )
    assert admin_apps.status_code == 200
    assert_cors(admin_apps, PLATFORM_WIDE)
    assert_not_cors(
        httpx.get(f"{platform.url}/admin/apps", headers={"Authorization": f"Bearer {ADMIN_KEY}", "Origin": SPA})
    )


def test_requests_without_an_origin_get_no_cors_headers(platform):
    response = get_models(platform, None, platform.spa_key)
    assert response.status_code == 200
    assert_not_cors(response)
    assert "vary" not in response.headers


def test_errors_carry_the_cors_headers(platform):
    # No key, and a wrong key: the app is unknown, so the origin counts if any app (or the platform) allows it.
    no_key = httpx.get(f"{platform.url}/v1/models", headers={"Origin": SPA})
    assert_error(no_key, 401)
    assert_cors(no_key, SPA)
    wrong = get_models(platform, SPA, "sk-wrong-key-0123456789")
    assert_error(wrong, 401, code="invalid_api_key")
    assert_cors(wrong, SPA)
    assert_not_cors(get_models(platform, ELSEWHERE, "sk-wrong-key-0123456789"))
    headers = {"Authorization": f"Bearer {platform.spa_key}", "Origin": SPA}
    # A bad request, an unknown model, an unknown URL, a body too large.
    bad = httpx.post(f"{platform.url}/v1/chat/completions", headers=headers, json={"model": "mock", "messages": []})
    assert_error(bad, 400, param="messages")
    assert_cors(bad, SPA)
    unknown = httpx.post(
        f"{platform.url}/v1/chat/completions",
        headers=headers,
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert_error(unknown, 404, code="model_not_found")
    assert_cors(unknown, SPA)
    assert_cors(httpx.get(f"{platform.url}/v1/nothing-here", headers=headers), SPA)
    too_large = httpx.post(f"{platform.url}/v1/chat/completions", headers=headers, content=b"x" * (2 * 1024 * 1024))
    assert_error(too_large, 413)
    assert_cors(too_large, SPA)


def test_a_rate_limited_answer_is_readable_with_its_retry_after(platform):
    key = platform.create_key("spa", rpm=1)
    assert get_models(platform, SPA, key).status_code == 200
    limited = get_models(platform, SPA, key)
    assert_error(limited, 429, code="rate_limit_exceeded")
    assert_cors(limited, SPA)
    assert int(limited.headers["retry-after"]) >= 1 and "x-ratelimit-remaining-requests" in limited.headers


def test_a_stream_carries_the_cors_headers(platform):
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {platform.spa_key}", "Origin": SPA}
    with httpx.stream("POST", f"{platform.url}/v1/chat/completions", headers=headers, json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert_cors(response, SPA)
        text = "".join(response.iter_text())
    assert "data: [DONE]" in text


def test_a_wildcard_allows_every_origin_without_credentials(platform, admin):
    admin.post("/admin/apps", json={"name": "anyone", "cors_origins": ["*"]}).raise_for_status()
    try:
        key = platform.create_key("anyone")
        response = preflight(platform, ELSEWHERE)
        assert response.status_code == 204 and response.headers["access-control-allow-origin"] == "*"
        assert_no_credentials(response)
        assert_cors(get_models(platform, ELSEWHERE, key), "*")
        # An origin the app lists by name gets itself back; other apps' keys still get nothing for ELSEWHERE.
        assert_cors(get_models(platform, PLATFORM_WIDE, key), PLATFORM_WIDE)
        assert_not_cors(get_models(platform, ELSEWHERE, platform.spa_key))
    finally:  # the module's other tests expect no app to allow every origin
        admin.patch("/admin/apps/anyone", json={"cors_origins": None}).raise_for_status()
    assert preflight(platform, ELSEWHERE).status_code == 403


# ---------------------------------------------------------------------------------------------------------------
# Changes of an app's origins


def test_a_change_through_the_admin_api_applies_at_once(platform, admin):
    origin = "http://localhost:3000"
    created = admin.post("/admin/apps", json={"name": "mutable"})
    assert created.json()["cors_origins"] is None
    key = platform.create_key("mutable")
    assert preflight(platform, origin).status_code == 403
    patched = admin.patch("/admin/apps/mutable", json={"cors_origins": [origin, "http://LOCALHOST:3000"]})
    assert patched.status_code == 200 and patched.json()["cors_origins"] == [origin]  # normalised, once
    assert preflight(platform, origin).status_code == 204
    assert_cors(get_models(platform, origin, key), origin)
    assert admin.patch("/admin/apps/mutable", json={"cors_origins": []}).json()["cors_origins"] is None
    assert preflight(platform, origin).status_code == 403
    assert_not_cors(get_models(platform, origin, key))


def test_a_change_made_elsewhere_is_seen_within_the_cache_time(platform, admin):
    """Another worker, or `genai apps update`, changes the database: this process sees it once its caches expire."""
    origin = "https://elsewhere.example"
    admin.post("/admin/apps", json={"name": "remote"}).raise_for_status()
    key = platform.create_key("remote")
    assert preflight(platform, origin).status_code == 403
    assert_not_cors(get_models(platform, origin, key))

    async def change() -> None:
        db = Database(platform.services.db.url)
        try:
            await TenantStore(db).update_app("remote", cors_origins=[origin])
        finally:
            await db.close()

    asyncio.run(change())
    deadline = 3.0  # the module's caches live 1 s
    waited = 0.0
    while preflight(platform, origin).status_code != 204:
        assert waited < deadline, "the new origin was not seen"
        threading.Event().wait(0.1)
        waited += 0.1
    while get_models(platform, origin, key).headers.get("access-control-allow-origin") != origin:
        assert waited < deadline, "the new origin was not seen on answers"
        threading.Event().wait(0.1)
        waited += 0.1


# ---------------------------------------------------------------------------------------------------------------
# Validation: admin API, settings, CLI


@pytest.mark.parametrize(
    ("origins", "param"),
    [
        (["https://app.example.com/"], "cors_origins[0]"),
        (["https://ok.example", "https://app.example.com/path"], "cors_origins[1]"),
        (["app.example.com"], "cors_origins[0]"),
        (["ftp://app.example.com"], "cors_origins[0]"),
        (["https://app.example.com?x=1"], "cors_origins[0]"),
        (["https://user@app.example.com"], "cors_origins[0]"),
        (["https://*.example.com"], "cors_origins[0]"),
        (["null"], "cors_origins[0]"),
        (["https://"], "cors_origins[0]"),
        ([42], "cors_origins[0]"),
        ("https://app.example.com", "cors_origins"),
        (["https://a.example"] * 101, "cors_origins"),
    ],
)
def test_the_admin_api_refuses_what_is_not_an_origin(admin, origins, param):
    error = assert_error(admin.post("/admin/apps", json={"name": "invalid", "cors_origins": origins}), 400, param=param)
    assert "origin" in error["message"] or "list" in error["message"] or "100" in error["message"]
    assert admin.get("/admin/apps/invalid").status_code == 404
    assert_error(admin.patch("/admin/apps/spa", json={"cors_origins": origins}), 400, param=param)
    assert admin.get("/admin/apps/spa").json()["cors_origins"] == [SPA]


def test_the_admin_api_normalises_origins(admin):
    created = admin.post(
        "/admin/apps",
        json={"name": "normal", "cors_origins": ["HTTPS://App.Example.com:443", "http://[0::1]:8080", "*"]},
    )
    assert created.status_code == 200, created.text
    assert created.json()["cors_origins"] == ["https://app.example.com", "http://[::1]:8080", "*"]
    assert admin.get("/admin/apps/normal").json()["cors_origins"] == created.json()["cors_origins"]
    admin.patch("/admin/apps/normal", json={"cors_origins": None}).raise_for_status()


def test_the_platform_wide_setting_takes_json_or_commas(monkeypatch):
    monkeypatch.setenv("GENAI_CORS_ORIGINS", '["https://a.example", "http://127.0.0.1:5173"]')
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "http://127.0.0.1:5173"]
    monkeypatch.setenv("GENAI_CORS_ORIGINS", " https://A.example:443 , http://127.0.0.1:5173,https://a.example")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "http://127.0.0.1:5173"]
    monkeypatch.setenv("GENAI_CORS_ORIGINS", "*")
    assert Settings(_env_file=None).cors_origins == ["*"]
    monkeypatch.setenv("GENAI_CORS_ORIGINS", "")
    assert Settings(_env_file=None).cors_origins == []
    monkeypatch.delenv("GENAI_CORS_ORIGINS")
    assert Settings(_env_file=None).cors_origins == []


@pytest.mark.slow  # subprocesses
def test_a_bad_platform_wide_origin_stops_the_cli_with_one_line(tmp_path):
    env = outside_env()
    env.update(GENAI_DATA_DIR=str(tmp_path / "data"), GENAI_CORS_ORIGINS="https://app.example.com/")
    result = subprocess.run(
        [sys.executable, "-m", "server", "apps", "list"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "GENAI_CORS_ORIGINS" in result.stderr and "'https://app.example.com'" in result.stderr
    assert "Traceback" not in result.stderr


def test_origins_are_checked_as_browsers_send_them():
    assert check_origin("HTTP://LocalHost:80") == "http://localhost"
    assert check_origin("https://bücher.example") == "https://xn--bcher-kva.example"
    assert check_origin(" * ") == "*"
    for bad in ("https://a.example:99999", "https://a b.example", "https://a.example#", "mailto:a@b.example"):
        with pytest.raises(ValueError):
            check_origin(bad)


@pytest.mark.slow  # subprocesses
def test_the_cli_sets_and_clears_an_apps_origins(tmp_path):
    env = outside_env()
    env.update(GENAI_DATA_DIR=str(tmp_path / "data"), GENAI_ADMIN_KEY=ADMIN_KEY, GENAI_DEFAULT_MODEL="x")

    def genai(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )

    created = genai("apps", "create", "web", "--cors-origin", "https://App.example.com", "--cors-origin", SPA)
    assert created.returncode == 0, created.stderr
    assert table_cell(genai("apps", "list").stdout, "web", "CORS_ORIGINS") == f"https://app.example.com,{SPA}"
    updated = genai("apps", "update", "web", "--cors-origin", "*")
    assert updated.returncode == 0, updated.stderr
    assert "cors origins *" in updated.stdout
    cleared = genai("apps", "update", "web", "--no-cors-origins")
    assert cleared.returncode == 0 and "cors origins none" in cleared.stdout
    bad = genai("apps", "update", "web", "--cors-origin", "https://app.example.com/path")
    assert bad.returncode == 2 and "--cors-origin" in bad.stderr and "'https://app.example.com'" in bad.stderr
    assert genai("apps", "update", "web", "--cors-origin", SPA, "--no-cors-origins").returncode == 2

    async def stored() -> list[str] | None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'genai.db'}")
        try:
            return (await TenantStore(db).get_app("web")).cors_origins
        finally:
            await db.close()

    assert asyncio.run(stored()) is None


# ---------------------------------------------------------------------------------------------------------------
# In the browser: pages served from other loopback ports


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"<!doctype html><meta charset=utf-8><title>a browser app</title><p>a browser app</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def static_site() -> Iterator[str]:
    """A tiny web server for a browser app's page, on a free loopback port; its origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def sites(platform) -> Iterator[tuple[str, str, str]]:
    """Two browser apps' sites: one whose origin the app "browser-app" allows, one no app allows; and that app's key."""
    with static_site() as allowed, static_site() as refused:
        with platform.http(key=ADMIN_KEY) as admin:
            admin.post("/admin/apps", json={"name": "browser-app", "cors_origins": [allowed]}).raise_for_status()
        yield allowed, refused, platform.create_key("browser-app")


# What a browser app's page does: fetch() with its key; the status, the headers it may read and the body, or the
# error fetch() threw.
FETCH = """async ([url, key, body]) => {
    const init = {headers: {Authorization: `Bearer ${key}`}};
    if (body) {
        init.method = "POST";
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
    }
    try {
        const response = await fetch(url, init);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const chunks = [];
        for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            chunks.push(decoder.decode(value, {stream: true}));
        }
        return {
            status: response.status,
            body: chunks.join(""),
            requestId: response.headers.get("x-request-id"),
            cache: response.headers.get("x-cache"),
            retryAfter: response.headers.get("retry-after"),
        };
    } catch (error) {
        return {error: `${error.name}: ${error.message}`};
    }
}"""


@contextmanager
def page_of(browser, origin: str):
    """A page of ``origin``, with the messages of its console."""
    context = browser.new_context()
    page = context.new_page()
    page.console = []
    page.on("console", lambda message: page.console.append(message.text))
    page.goto(origin + "/")
    try:
        yield page
    finally:
        context.close()


@pytest.mark.slow  # a browser
def test_a_page_of_an_allowed_origin_reads_the_answers(platform, browser, sites):
    allowed, _, key = sites
    with page_of(browser, allowed) as page:
        models = page.evaluate(FETCH, [f"{platform.url}/v1/models", key, None])
        assert models["status"] == 200, models
        assert "mock" in [model["id"] for model in json.loads(models["body"])["data"]]
        assert models["requestId"].startswith("req_")  # exposed
        # Its errors too: a wrong key's 401, in OpenAI's shape.
        wrong = page.evaluate(FETCH, [f"{platform.url}/v1/models", "sk-not-a-key-000000", None])
        assert wrong["status"] == 401 and json.loads(wrong["body"])["error"]["code"] == "invalid_api_key"


@pytest.mark.slow  # a browser
def test_a_page_of_another_origin_gets_a_cors_error(platform, browser, sites):
    _, refused, key = sites
    with page_of(browser, refused) as page:
        result = page.evaluate(FETCH, [f"{platform.url}/v1/models", key, None])
        assert result == {"error": "TypeError: Failed to fetch"}
        page.wait_for_timeout(200)
        assert any("CORS policy" in message for message in page.console), page.console


@pytest.mark.slow  # a browser
def test_an_allowed_page_cannot_read_answers_to_another_apps_key(platform, browser, sites):
    allowed, _, _ = sites
    with page_of(browser, allowed) as page:
        result = page.evaluate(FETCH, [f"{platform.url}/v1/models", platform.key, None])
        assert result == {"error": "TypeError: Failed to fetch"}


@pytest.mark.slow  # a browser
def test_a_streamed_chat_answer_across_origins(platform, browser, sites):
    allowed, _, key = sites
    body = {"model": "mock", "messages": [{"role": "user", "content": "Hello"}], "stream": True}
    with page_of(browser, allowed) as page:
        result = page.evaluate(FETCH, [f"{platform.url}/v1/chat/completions", key, body])
    assert result["status"] == 200, result
    events = [line[len("data: ") :] for line in result["body"].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or "" for event in events[:-1] for choice in json.loads(event)["choices"]
    )
    assert text == "Mock reply."
    assert result["cache"] == "miss" and result["requestId"].startswith("req_")


@pytest.mark.slow  # a browser
def test_a_rate_limited_page_reads_the_wait(platform, browser, sites):
    allowed, _, _ = sites
    key = platform.create_key("browser-app", rpm=1)
    with page_of(browser, allowed) as page:
        assert page.evaluate(FETCH, [f"{platform.url}/v1/models", key, None])["status"] == 200
        limited = page.evaluate(FETCH, [f"{platform.url}/v1/models", key, None])
    assert limited["status"] == 429 and int(limited["retryAfter"]) >= 1
