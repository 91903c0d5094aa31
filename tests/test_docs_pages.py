"""/docs (Swagger UI) and /redoc work offline: their JavaScript, CSS and favicon are served by the platform from the
files vendored in server/static/vendor/ (scripts/vendor-web-assets), and nothing on them is loaded from another origin.
Rendered in a real browser (Debian's chromium, driven by Playwright); screenshots in .cache/screenshots/."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from chains.model_routes import ModelRoute
from server.openapi import REDOC, SWAGGER_UI
from server.settings import Settings
from tests.conftest import ADMIN_KEY, ROOT, LiveServer
from tests.conftest import BROWSER_SCREENSHOTS as SCREENSHOTS

CHAT_COMPLETIONS = "/v1/chat/completions"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mock_upstream) -> Iterator[LiveServer]:
    """One live server for the module, on the mock upstream (the pages need no model)."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("docs") / "data",
        admin_key=ADMIN_KEY,
        cache_enabled=False,
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)],
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


def _summary(platform: LiveServer, path: str, method: str) -> str:
    """The operation's summary in /openapi.json: the title both pages show for it."""
    return httpx.get(f"{platform.url}/openapi.json").json()["paths"][path][method]["summary"]


class Visit:
    """A page opened on ``url``, recording every request it made, every one that failed, its errors and its Content
    Security Policy violations. A request for another origin that gets as far as the network is aborted (and
    recorded): the test machine may be online."""

    def __init__(self, browser, url: str, origin: str) -> None:
        self.origin = origin
        self.context = browser.new_context()
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.left: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("requestfailed", lambda request: self.failed.append(f"{request.url}: {request.failure}"))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.goto(url)

    def _own(self, url: str) -> bool:
        return url.startswith((self.origin + "/", f"blob:{self.origin}/", "data:"))

    def _route(self, route) -> None:
        if self._own(route.request.url):
            route.continue_()
        else:
            self.left.append(route.request.url)
            route.abort()

    def assert_offline(self) -> None:
        """No request left the platform's origin (none reached the network, none was even asked for), none failed,
        and the page logged no error (a Content Security Policy violation would be one)."""
        assert self.left == [], f"requests that left {self.origin}: {self.left}"
        outside = [url for url in self.requests if not self._own(url)]
        assert outside == [], f"requests for other origins: {outside}"
        assert self.failed == [], self.failed
        assert self.errors == [], self.errors

    def close(self) -> None:
        self.context.close()


@pytest.mark.slow  # a browser
def test_docs_renders_the_operations_from_the_platforms_own_assets(platform, browser):
    visit = Visit(browser, f"{platform.url}/docs", platform.url)
    try:
        page = visit.page
        path = page.locator(f'.opblock-summary-path[data-path="{CHAT_COMPLETIONS}"]').first
        path.wait_for(timeout=30_000)
        assert path.is_visible()
        operation = page.locator(".opblock-post", has=path).first
        assert _summary(platform, CHAT_COMPLETIONS, "post") in operation.inner_text()
        assert page.locator(".opblock").count() > 20  # every route, not just the first
        page.wait_for_load_state("networkidle")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "docs.png"))
        visit.assert_offline()
        assert f"{platform.url}{SWAGGER_UI}/swagger-ui-bundle.js" in visit.requests
        assert f"{platform.url}/openapi.json" in visit.requests
    finally:
        visit.close()


@pytest.mark.slow  # a browser
def test_redoc_renders_the_operations_from_the_platforms_own_assets(platform, browser):
    visit = Visit(browser, f"{platform.url}/redoc", platform.url)
    try:
        page = visit.page
        summary = _summary(platform, CHAT_COMPLETIONS, "post")
        heading = page.locator("h2", has_text=summary).first
        heading.wait_for(timeout=30_000)
        assert heading.is_visible()
        assert page.get_by_role("menuitem").count() > 20 or page.locator("li[data-item-id]").count() > 20
        page.wait_for_load_state("networkidle")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "redoc.png"))
        visit.assert_offline()
        assert f"{platform.url}{REDOC}/redoc.standalone.js" in visit.requests
    finally:
        visit.close()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_pages_reference_only_their_own_origin(platform, path):
    response = httpx.get(f"{platform.url}{path}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    references = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""url:\s*["']([^"']+)["']""", html
    )
    assert references, html
    for reference in references:
        assert reference.startswith("/") and not reference.startswith("//"), reference
    assert "http://" not in html and "https://" not in html and "fonts.googleapis" not in html
    assert "validatorUrl" not in html or '"validatorUrl": null' in html


ASSETS = [
    (f"{SWAGGER_UI}/swagger-ui-bundle.js", ("text/javascript", "application/javascript")),
    (f"{SWAGGER_UI}/swagger-ui.css", ("text/css",)),
    (f"{SWAGGER_UI}/favicon-32x32.png", ("image/png",)),
    (f"{SWAGGER_UI}/LICENSE", ("text/plain", "application/octet-stream")),
    (f"{SWAGGER_UI}/swagger-ui-bundle.js.LICENSE.txt", ("text/plain",)),
    (f"{REDOC}/redoc.standalone.js", ("text/javascript", "application/javascript")),
    (f"{REDOC}/LICENSE", ("text/plain", "application/octet-stream")),
    (f"{REDOC}/redoc.standalone.js.LICENSE.txt", ("text/plain",)),
]


@pytest.mark.parametrize(("path", "types"), ASSETS)
def test_the_assets_are_served_with_their_content_types(platform, path, types):
    response = httpx.get(f"{platform.url}{path}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] in types
    local = ROOT / "server" / "static" / path.removeprefix("/static/")
    assert response.content == local.read_bytes()


def test_unknown_static_files_are_404_and_paths_cannot_escape(platform):
    assert httpx.get(f"{platform.url}/static/vendor/nothing.js").status_code == 404
    escape = httpx.get(f"{platform.url}/static/%2e%2e/app.py")
    assert escape.status_code == 404 and b"create_app" not in escape.content


def test_the_vendored_files_match_their_pinned_sha256():
    """`scripts/vendor-web-assets --check` (no network): the committed files are the npm packages' own."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "vendor-web-assets"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "match their pinned sha256" in result.stdout
