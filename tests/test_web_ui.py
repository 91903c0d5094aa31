"""The web chat UI at / in a real browser (Debian's chromium, driven by Playwright), against one live server for the
module on the local model: a person enters a key, chats with streamed answers, finds the conversation again after a
reload, renames and deletes it, rates an answer, grounds an answer in an uploaded document and reads its sources,
generates an image, meets the errors (bad key, rate limit, model down, rejected file), uses it on a phone-sized
screen and by keyboard alone, and axe-core finds no serious or critical accessibility violation.

Every test saves screenshots in its tmp_path and in .cache/screenshots/web-ui/ to look at."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from chains.local_model import local_route
from chains.model_routes import ModelRoute
from server.settings import Settings
from tests.conftest import ADMIN_KEY, BROWSER_SCREENSHOTS, MODEL_PATH, ROOT, LiveServer, clear_of_window_edge
from tests.scripted_upstream import fault_model, scripted_route, serve_scripted_upstream

SCREENSHOTS = BROWSER_SCREENSHOTS / "web-ui"
AXE = "/ui/vendor/axe-core-4.14.1/axe.min.js"
QUESTION = "What is the capital of France?"
FILLER = "The archive also holds letters about trade, weather and harvests that have nothing to do with engines. "
DOCUMENT = f"{FILLER * 4}\n\nThe Zorblax reactor runs at exactly 4711 kelvin.\n\n{FILLER * 4}"
GROUNDED_QUESTION = "At what temperature does the Zorblax reactor run?"
PHONE = {"width": 390, "height": 844}


# ---------------------------------------------------------------- the server, the browser, a page


@pytest.fixture(scope="module")
def ui_server(llama, tmp_path_factory) -> Iterator[LiveServer]:
    """One live server for the module: the local model (the default route), a scripted model (answers echo the
    question: Markdown a test writes), a slow one (to stop), one that is down, and an image model on the tests'
    image server."""
    from tests.image_server import image_route, serve_image_server

    with ExitStack() as stack:
        scripted = stack.enter_context(serve_scripted_upstream())
        images = stack.enter_context(serve_image_server())
        slow = scripted_route("scripted-slow", scripted).model_copy(update={"model": fault_model(delay=0.3)})
        down = ModelRoute(name="offline", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=3)
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path_factory.mktemp("web-ui") / "data",
            admin_key=ADMIN_KEY,
            cache_enabled=False,
            model_routes=[
                local_route(llama.base_url, str(MODEL_PATH), llama.context_window),
                scripted_route("scripted", scripted),
                slow,
                down,
                image_route("sketcher", images),
            ],
        )
        server = LiveServer(settings).start()
        stack.callback(server.stop)
        yield server


class UI:
    """A fresh browser context (its own localStorage) on the UI, recording uncaught errors, Content Security Policy
    violations and requests that tried to leave the server."""

    def __init__(self, browser, server: LiveServer, shots: Path, **context_options) -> None:
        self.server = server
        self.shots = shots
        self.context = browser.new_context(**context_options)
        self.context.route("**/*", self._only_the_server)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.left: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: (
                self.errors.append(f"{message.text} at {message.location}")
                if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text
                else None
            ),
        )

    def _only_the_server(self, route) -> None:
        if route.request.url.startswith(self.server.url):
            route.continue_()
        else:
            self.left.append(route.request.url)
            route.abort()

    def open(self, key: str | None = None, path: str = "/", wait: bool = True) -> UI:
        """Go to the UI and, when ``key`` is given, enter it in the key dialog as a person would (and ``wait`` until
        what the page shows at first has loaded)."""
        self.page.goto(f"{self.server.url}{path}")
        if key is not None:
            self.enter_key(key)
            if wait:
                self.ready()
        return self

    def ready(self) -> None:
        self.page.locator("body[data-ready=true]").wait_for(state="attached")

    def enter_key(self, key: str) -> None:
        dialog = self.page.locator("#key-dialog")
        dialog.wait_for()
        self.page.get_by_label("API key", exact=True).fill(key)
        self.page.get_by_role("button", name="Save key").click()

    def ask(self, text: str, *, model: str | None = None) -> str:
        """Type ``text`` in the message box and press Enter; the answer's text once it has finished streaming."""
        if model:
            self.chat_model.select_option(model)
        done = self.page.locator("#messages article.assistant:not(.streaming)").count()
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")
        return self.last_answer(done + 1)

    @property
    def chat_model(self):
        return self.page.locator("#panel-chat").get_by_label("Model", exact=True)

    def last_answer(self, count: int) -> str:
        answers = self.page.locator("#messages article.assistant:not(.streaming)")
        self.page.wait_for_function(
            "n => document.querySelectorAll('#messages article.assistant:not(.streaming)').length >= n", arg=count
        )
        return answers.nth(count - 1).locator(".content").inner_text().strip()

    def alert_text(self) -> str:
        self.page.locator("#alerts .alert").first.wait_for()
        return self.page.locator("#alerts").inner_text()

    def shot(self, name: str, full_page: bool = False) -> Path:
        self.page.wait_for_timeout(250)  # let transitions settle
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)
        return path

    def axe(self, label: str) -> list[dict]:
        """axe-core's serious and critical violations on the page as it is now."""
        if not self.page.evaluate("() => typeof window.axe === 'object'"):
            self.page.add_script_tag(url=AXE)  # the vendored file, from this origin: the page's CSP allows it
        result = self.page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
        found = [v for v in result if v["impact"] in ("serious", "critical")]
        for violation in found:
            print(label, violation["id"], violation["impact"], [n["target"] for n in violation["nodes"]][:5])
        return found

    def close(self) -> None:
        assert not self.errors, self.errors
        assert not self.left, f"the page tried to load from elsewhere: {self.left}"
        self.context.close()


@pytest.fixture
def ui(browser, ui_server, tmp_path) -> Iterator[callable]:
    """Open as many UIs as a test wants (``ui(**browser context options)``); each is checked and closed after it.
    The tests app starts each test without conversations (the server is the module's)."""
    with api(ui_server) as http:
        for conversation in http.get("/v1/conversations", params={"limit": 100}).json()["data"]:
            http.delete(f"/v1/conversations/{conversation['id']}")
    opened: list[UI] = []

    def make(**context_options) -> UI:
        made = UI(browser, ui_server, tmp_path, **context_options)
        opened.append(made)
        return made

    yield make
    for made in opened:
        made.close()


def api(server: LiveServer, key: str | None = None) -> httpx.Client:
    return server.http(key=key)


# ---------------------------------------------------------------- served as static files, offline


def test_vendored_libraries_match_their_pinned_npm_files():
    done = subprocess.run(
        [sys.executable, "scripts/vendor-ui-assets", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("marked-", "dompurify-", "highlightjs-cdn-assets-", "axe-core-"):
        [folder] = (ROOT / "server" / "ui" / "vendor").glob(f"{name}*")
        assert (folder / "LICENSE").is_file()


def test_the_page_and_its_files_are_served_with_a_strict_policy(live_server, mock_upstream):
    server = live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)])
    with httpx.Client(base_url=server.url) as http:  # no key: the page itself is open
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith(("/", "#")) for s in sources), sources
        for path in [s for s in sources if s.startswith("/ui/")] + ["/ui/js/main.js", "/ui/js/markdown.js"]:
            asset = http.get(path)
            assert asset.status_code == 200, path
            assert asset.headers["content-security-policy"] == policy
        assert http.get("/ui/js/main.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/ui/nothing-here.js").status_code == 404
        assert "/" not in http.get("/openapi.json").json()["paths"]
    # Every module the page loads names only files of its own.
    for script in (ROOT / "server" / "ui" / "js").glob("*.js"):
        for target in re.findall(r'^import .* from "([^"]+)";$', script.read_text(), flags=re.M):
            assert target.startswith("."), (script.name, target)
            assert (script.parent / target).resolve().is_file(), (script.name, target)


# ---------------------------------------------------------------- chatting


def test_a_message_gets_a_streamed_answer_and_the_conversation_is_there_after_a_reload(ui, ui_server):
    person = ui().open(key=ui_server.key)
    page = person.page
    page.get_by_role("heading", name="Start a conversation").wait_for()
    # The model picker offers the chat models: not the image model (the image tab's) nor the embedding model.
    assert person.chat_model.locator("option").all_inner_texts() == [
        "gemma-3-270m",
        "scripted",
        "scripted-slow",
        "offline",
    ]
    person.shot("chat-empty")
    with page.expect_request("**/v1/chat/completions") as sent:
        answer = person.ask(QUESTION)
    body = sent.value.post_data_json
    assert body["stream"] is True and body["conversation_id"] == "new" and body["model"] == "gemma-3-270m"
    assert sent.value.response().headers["content-type"].startswith("text/event-stream")
    assert answer, "no answer shown"
    person.shot("chat-answer")

    # The conversation is in the sidebar, under the question, and the server kept the turn as shown.
    item = page.locator("#conversation-list .conversation-open").first
    item.get_by_text(QUESTION).wait_for()
    assert item.get_attribute("aria-current") == "true"
    with api(ui_server) as http:
        [conversation] = http.get("/v1/conversations").json()["data"]
        stored = http.get(f"/v1/conversations/{conversation['id']}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert " ".join(stored[1]["content"].split()) == " ".join(answer.split())
    assert page.url.endswith(f"#{conversation['id']}")

    # A reload finds it: open again (the key stayed in the browser), in the list and on screen.
    page.reload()
    page.locator("#messages article.user").get_by_text(QUESTION).wait_for()
    assert page.locator("#conversation-list li").count() == 1
    assert page.locator("#conversation-title").inner_text() == QUESTION
    # A new chat, then back to the conversation from the sidebar.
    page.get_by_role("button", name="New chat").click()
    page.get_by_role("heading", name="Start a conversation").wait_for()
    page.locator("#conversation-list .conversation-open").first.click()
    page.locator("#messages article.assistant .thumbs").wait_for()
    person.shot("chat-reloaded")

    # The next message continues the same conversation.
    with page.expect_request("**/v1/chat/completions") as sent:
        person.ask("And of Italy?")
    assert sent.value.post_data_json["conversation_id"] == conversation["id"]
    with api(ui_server) as http:
        assert len(http.get(f"/v1/conversations/{conversation['id']}").json()["messages"]) == 4


def test_the_playground_link_opens_the_langserve_playground_with_the_key(ui, ui_server):
    person = ui().open(key=ui_server.key)
    with person.context.expect_page() as opened:
        person.page.get_by_role("link", name="Playground (LangServe, opens in a new tab)").click()
    playground = opened.value
    playground.wait_for_load_state()
    assert playground.url == f"{ui_server.url}/chat/playground/"
    # The playground reads the key from the cookie the README describes: the link set it.
    [cookie] = [c for c in person.context.cookies() if c["name"] == "genai_api_key"]
    assert cookie["value"] == ui_server.key and cookie["sameSite"] == "Strict"
    playground.get_by_placeholder("Send a message...").wait_for()


def rated(server: LiveServer, response_id: str) -> list[tuple[float, str | None]]:
    """The stored ratings of one answer: (score, comment)."""
    with api(server) as http:
        rows = http.get("/v1/feedback").json()["data"]
    return [(row["score"], row["comment"]) for row in rows if row["response_id"] == response_id]


def test_rating_an_answer_with_a_comment_is_stored(ui, ui_server):
    person = ui().open(key=ui_server.key)
    page = person.page
    person.ask(QUESTION)
    answer = page.locator("#messages article.assistant").last
    response_id = answer.get_attribute("data-response-id")
    assert response_id.startswith("chatcmpl-")
    answer.get_by_role("button", name="Bad answer").click()
    answer.get_by_text("Rating saved.").wait_for()
    assert answer.get_by_role("button", name="Bad answer").get_attribute("aria-pressed") == "true"
    assert rated(ui_server, response_id) == [(-1.0, None)]

    answer.get_by_label("What was good or wrong about it? (optional)").fill("It should name the city only.")
    answer.get_by_role("button", name="Send comment").click()
    answer.get_by_text("Thanks, your comment was saved.").wait_for()
    person.shot("feedback")
    assert rated(ui_server, response_id) == [(-1.0, "It should name the city only.")]
    # Thumbs up replaces the rating.
    answer.get_by_role("button", name="Good answer").click()
    page.wait_for_function(
        "() => document.querySelector('#messages article.assistant:last-of-type .thumb-up')"
        ".getAttribute('aria-pressed') === 'true'"
    )
    assert rated(ui_server, response_id) == [(1.0, "It should name the city only.")]  # the comment stays


def test_conversations_are_renamed_and_deleted_from_the_sidebar(ui, ui_server):
    with api(ui_server) as http:
        first = http.post("/v1/conversations", json={"title": "Holiday plans"}).json()
        second = http.post("/v1/conversations", json={"title": "Reactor notes"}).json()
    person = ui().open(key=ui_server.key)
    page = person.page
    page.get_by_role("button", name="Rename “Holiday plans”").click()
    title = page.get_by_label("New title")
    assert title.input_value() == "Holiday plans"
    title.fill("Trip to Lyon")
    title.press("Enter")
    page.locator("#conversation-list").get_by_text("Trip to Lyon").wait_for()
    with api(ui_server) as http:
        assert http.get(f"/v1/conversations/{first['id']}").json()["title"] == "Trip to Lyon"

    page.get_by_role("button", name="Delete “Reactor notes”").click()
    page.get_by_text("Delete “Reactor notes”? This cannot be undone.").wait_for()
    person.shot("sidebar-confirm-delete")
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_text("Conversation deleted.").wait_for()
    assert page.locator("#conversation-list li").all_inner_texts()[0].startswith("Trip to Lyon")
    assert page.locator("#conversation-list li").count() == 1
    with api(ui_server) as http:
        assert http.get(f"/v1/conversations/{second['id']}").status_code == 404
    person.shot("sidebar-after-delete")


def test_answers_render_markdown_with_highlighted_code_and_copy_buttons(ui, ui_server):
    person = ui(permissions=["clipboard-read", "clipboard-write"]).open(key=ui_server.key)
    page = person.page
    message = (
        "Here is **bold** and a [link](https://example.org).\n"
        "```python\ndef greet(name):\n    return f'Hello {name}'\n```\n"
        '<img src="x" onerror="window.hacked = 1"><script>window.hacked = 2</script>'
    )
    person.ask(message, model="scripted")
    answer = page.locator("#messages article.assistant").last
    assert answer.locator("strong").inner_text() == "bold"
    link = answer.get_by_role("link", name="link")
    assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"
    code = answer.locator("pre code.hljs")
    assert "def greet(name):" in code.inner_text()
    assert code.locator("span.hljs-keyword").count() >= 2  # def, return: highlighted
    # Sanitised: no handler, no script, nothing ran.
    assert answer.locator("script").count() == 0 and answer.locator("[onerror]").count() == 0
    assert page.evaluate("() => window.hacked") is None
    # Chromium reports the handler as blocked by the page's CSP when DOMPurify parses the answer in its inert
    # document (before removing it): the policy at work, not a fault of the page.
    person.errors = [e for e in person.errors if not ("inline event handler" in e and "/dompurify-" in e)]
    answer.get_by_role("button", name="Copy python code").click()
    answer.get_by_role("button", name="Copied").wait_for()
    assert "return f'Hello {name}'" in page.evaluate("() => navigator.clipboard.readText()")
    person.shot("markdown-code")


def test_the_stop_button_ends_a_slow_answer(ui, ui_server):
    person = ui().open(key=ui_server.key)
    page = person.page
    person.chat_model.select_option("scripted-slow")
    box = page.get_by_label("Message", exact=True)
    box.fill("Please count slowly: " + " ".join(str(n) for n in range(60)))
    box.press("Enter")
    answer = page.locator("#messages article.assistant").last
    answer.locator(".content").get_by_text("Scripted reply").wait_for()
    stop = page.get_by_role("button", name="Stop")
    assert stop.is_visible() and not page.get_by_role("button", name="Send").is_visible()
    person.shot("streaming")
    stop.click()
    answer.get_by_text("Stopped. This answer was not saved in the conversation.").wait_for()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert "59" not in answer.locator(".content").inner_text()  # cut short
    assert answer.locator(".thumbs").count() == 0  # nothing to rate: the answer was not saved
    person.shot("stopped")
    # Nothing was stored, so the next message starts the conversation afresh.
    with page.expect_request("**/v1/chat/completions") as sent:
        person.ask("Hello again", model="scripted")
    assert sent.value.post_data_json["conversation_id"] == "new"
    page.locator("#conversation-list").get_by_text("Hello again").wait_for()


# ---------------------------------------------------------------- knowledge


def test_an_uploaded_document_grounds_an_answer_with_its_sources(ui, ui_server, tmp_path):
    document = tmp_path / "reactor.txt"
    document.write_text(DOCUMENT)
    rejected = tmp_path / "engine.exe"
    rejected.write_bytes(b"MZ\x90\x00 not a document")
    person = ui().open(key=ui_server.key)
    page = person.page
    page.get_by_role("tab", name="Knowledge").click()
    with api(ui_server) as http:
        if not http.get("/v1/vector_stores").json()["data"]:
            page.get_by_role("heading", name="Upload documents").wait_for()
            person.shot("knowledge-empty")
    page.get_by_label("New collection").fill("Engines")
    page.get_by_role("button", name="Create").click()
    page.get_by_role("heading", name="Engines").wait_for()
    page.get_by_label("Add documents to “Engines”").set_input_files([str(document), str(rejected)])
    files = page.locator("#file-list")
    files.locator("li.status-completed .file-name").get_by_text("reactor.txt").wait_for(timeout=120_000)
    files.locator("li.status-rejected .file-name").get_by_text("engine.exe").wait_for()
    assert "The file was rejected" in person.alert_text()
    person.shot("knowledge-files")
    with api(ui_server) as http:
        [store] = [s for s in http.get("/v1/vector_stores").json()["data"] if s["name"] == "Engines"]
    assert store["file_counts"]["completed"] == 1

    page.get_by_role("button", name="Ask questions about it in the chat").click()
    assert page.get_by_label("Documents", exact=True).input_value() == store["id"]
    with page.expect_request("**/v1/chat/completions") as sent:
        person.ask(GROUNDED_QUESTION)
    assert sent.value.post_data_json["vector_store_ids"] == [store["id"]]
    answer = page.locator("#messages article.assistant").last
    source = answer.locator(".citations details").first
    assert "reactor.txt" in source.locator("summary").inner_text()
    assert re.search(r"chunk \d+", source.locator("summary").inner_text())
    assert not source.locator("blockquote").is_visible()
    source.locator("summary").click()
    assert "4711 kelvin" in source.locator("blockquote").inner_text()
    person.shot("cited-answer")
    # The sources are kept with the conversation: shown again after a reload.
    page.reload()
    page.locator("#messages .citations summary").first.get_by_text("reactor.txt").wait_for()


# ---------------------------------------------------------------- images


def test_an_image_is_generated_and_shown_in_the_gallery(ui, ui_server):
    person = ui().open(key=ui_server.key)
    page = person.page
    page.get_by_role("tab", name="Images").click()
    page.get_by_text("No images yet.").wait_for()
    assert page.locator("#panel-images").get_by_label("Model", exact=True).input_value() == "sketcher"
    assert page.locator("#image-size option").all_inner_texts() == ["256 × 256", "512 × 512", "1024 × 1024"]
    person.shot("images-empty")
    page.get_by_label("Describe the image").fill("A lighthouse on a cliff at dawn")
    page.get_by_label("Number of images").select_option("2")
    with page.expect_response("**/v1/images/generations") as generated:
        page.get_by_role("button", name="Generate").click()
    assert generated.value.status == 200, generated.value.text()
    gallery = page.locator("#gallery img")
    gallery.nth(1).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 256)"
    )
    assert gallery.count() == 2
    assert gallery.first.get_attribute("alt").startswith("A lighthouse on a cliff at dawn")
    with api(ui_server) as http:
        stored = http.get("/v1/images").json()["data"]
    assert [image["prompt"] for image in stored] == ["A lighthouse on a cliff at dawn"] * 2
    assert {gallery.nth(i).get_attribute("src") for i in range(2)} == {image["url"] for image in stored}
    person.shot("images-gallery")

    # A prompt the provider's safety system refuses: said so, nothing added.
    page.get_by_label("Describe the image").fill("[refuse] something it will not draw")
    page.get_by_role("button", name="Generate").click()
    assert "This image prompt was blocked by the content policy" in person.alert_text()
    assert gallery.count() == 2
    person.shot("images-blocked")


# ---------------------------------------------------------------- errors a person meets


def test_a_bad_key_is_refused_with_a_clear_message(ui, ui_server):
    person = ui().open()
    page = person.page
    person.shot("key-dialog")
    person.enter_key("sk-this-is-not-a-key-0123456789")
    page.locator("#key-error").get_by_text("Your API key was not accepted").wait_for()
    assert page.locator("#key-dialog").is_visible()
    person.shot("key-refused")
    person.enter_key(ui_server.key)
    page.locator("#key-dialog").wait_for(state="hidden")  # closed once the key is checked
    page.get_by_role("heading", name="Start a conversation").wait_for()
    # A key that stops working later (revoked, here: replaced in storage) brings the dialog back with the reason.
    page.evaluate("() => localStorage.setItem('genai.apiKey', 'sk-revoked-0123456789abcdef')")
    page.reload()
    page.locator("#key-error").get_by_text("Your API key was not accepted").wait_for()
    # "Forget this key" empties the browser's storage.
    with page.expect_navigation():
        page.get_by_role("button", name="Forget this key").click()
    page.locator("#key-dialog").wait_for()
    assert page.evaluate("() => localStorage.getItem('genai.apiKey')") is None
    assert page.get_by_role("button", name="Forget this key").is_hidden()


def test_a_rate_limit_says_how_long_to_wait(ui, ui_server):
    key = ui_server.create_key("rate-limited", rpm=1)
    clear_of_window_edge(10)
    person = ui().open(key=key, wait=False)  # checking the key is the one request of this minute
    text = person.alert_text()
    assert re.search(r"Too many requests: this key's rate limit is reached\. Try again in \d+ seconds\.", text), text
    person.shot("rate-limited")


def test_a_model_that_is_down_is_said_to_be_unavailable(ui, ui_server):
    person = ui().open(key=ui_server.key)
    page = person.page
    person.chat_model.select_option("offline")
    box = page.get_by_label("Message", exact=True)
    box.fill(QUESTION)
    box.press("Enter")
    assert "The model is not available right now" in person.alert_text()
    answer = page.locator("#messages article.assistant").last
    answer.get_by_text("The answer could not be completed.").wait_for()
    assert box.input_value() == QUESTION  # given back, to send again
    person.shot("model-down")


# ---------------------------------------------------------------- a phone, a keyboard, axe-core


def no_sideways_scroll(page, width: int = PHONE["width"]) -> list[str]:
    """What sticks out of the screen (``width`` wide) on the right: nothing, when the layout fits. (A mobile browser
    widens its layout viewport to the content, so ``window.innerWidth`` cannot tell.)"""
    return page.evaluate(
        """width => {
        const out = [...document.querySelectorAll('main *, header *')].filter(el => {
            const box = el.getBoundingClientRect();
            return box.width > 0 && box.height > 0 && box.right > width + 1
                && getComputedStyle(el).visibility !== 'hidden' && !el.closest('.visually-hidden, #sidebar');
        }).map(el => el.id || el.className || el.tagName);
        if (document.documentElement.scrollWidth > width) out.push('the page scrolls sideways');
        return out;
    }""",
        width,
    )


def test_a_phone_sized_screen(ui, ui_server):
    person = ui(viewport=PHONE, is_mobile=True, has_touch=True).open(key=ui_server.key)
    page = person.page
    sidebar = page.locator("#sidebar")
    assert not sidebar.is_visible()  # collapsed off the screen
    person.ask(QUESTION)
    assert no_sideways_scroll(page) == []
    person.shot("phone-chat")
    toggle = page.get_by_role("button", name="Conversations", exact=True)
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    page.locator("#conversation-list").get_by_text(QUESTION).wait_for()
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    assert sidebar.bounding_box()["width"] <= PHONE["width"]
    person.shot("phone-sidebar")
    page.get_by_role("button", name="New chat").click()
    page.wait_for_function("() => !document.getElementById('sidebar').classList.contains('open')")
    assert toggle.get_attribute("aria-expanded") == "false"
    for tab, name in (("Knowledge", "phone-knowledge"), ("Images", "phone-images")):
        page.get_by_role("tab", name=tab).click()
        assert no_sideways_scroll(page) == []
        person.shot(name)


def focused(page) -> str:
    """The focused element as a person would name it, and whether its focus is drawn."""
    return page.evaluate(
        """() => {
        const el = document.activeElement;
        const style = getComputedStyle(el);
        const name = el.getAttribute('aria-label') || (el.labels && el.labels[0] && el.labels[0].innerText)
            || el.innerText || el.id;
        const drawn = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
        return `${el.tagName.toLowerCase()}:${name.trim().split('\\n')[0]}${drawn ? '' : ' (NO VISIBLE FOCUS)'}`;
    }"""
    )


def test_the_main_flow_by_keyboard_alone(ui, ui_server):
    person = ui().open()
    page = person.page
    kb = page.keyboard
    # The key dialog has the focus: type, Enter.
    assert focused(page) == "input:API key"
    kb.type(ui_server.key)
    kb.press("Enter")
    person.ready()

    # The focus order from the top: the skip link, the tabs, the header's links, the sidebar.
    order = []
    for _ in range(6):
        kb.press("Tab")
        order.append(focused(page))
    assert order == [
        "a:Skip to the message box",
        "button:Chat",
        "a:Playground",
        "button:API key",
        "button:New chat",
        "div:Start a conversation",
    ], order
    assert page.get_by_role("link", name="Playground (LangServe, opens in a new tab)").is_visible()
    # Arrow keys move between the tabs.
    page.get_by_role("tab", name="Chat").focus()
    kb.press("ArrowRight")
    expect(page.locator("#panel-knowledge")).to_be_visible()
    assert focused(page) == "button:Knowledge"
    kb.press("ArrowLeft")
    expect(page.locator("#panel-chat")).to_be_visible()

    # The skip link goes to the message box; Shift+Enter adds a line, Enter sends.
    page.locator(".skip-link").focus()
    kb.press("Enter")
    assert focused(page) == "textarea:Message"
    kb.type("What is the capital of France?")
    kb.press("Shift+Enter")
    kb.type("Answer in one word.")
    assert page.get_by_label("Message", exact=True).input_value() == (
        "What is the capital of France?\nAnswer in one word."
    )
    kb.press("Enter")
    person.last_answer(1)
    assert focused(page) == "textarea:Message"

    # Back from the message box: the pickers, then the answer's thumbs.
    for expected in ("select:Documents", "select:Model", "button:Bad answer"):
        kb.press("Shift+Tab")
        assert focused(page) == expected
    person.shot("keyboard-focus")
    kb.press("Enter")
    page.locator("#messages").get_by_text("Rating saved.").wait_for()
    kb.press("Tab")
    assert focused(page) == "textarea:What was good or wrong about it? (optional)"
    kb.type("Two words, not one.")
    kb.press("Tab")
    assert focused(page) == "button:Send comment"
    kb.press("Enter")
    page.locator("#messages").get_by_text("Thanks, your comment was saved.").wait_for()
    response_id = page.locator("#messages article.assistant").last.get_attribute("data-response-id")
    assert rated(ui_server, response_id) == [(-1.0, "Two words, not one.")]
    # Escape stops a streaming answer.
    person.chat_model.select_option("scripted-slow")
    box = page.get_by_label("Message", exact=True)
    box.focus()
    kb.type("Count: " + " ".join(str(n) for n in range(40)))
    kb.press("Enter")
    page.get_by_role("button", name="Stop").wait_for()
    kb.press("Escape")
    page.get_by_text("Stopped. This answer was not saved in the conversation.").wait_for()


def test_axe_finds_no_serious_accessibility_violations(ui, ui_server, tmp_path):
    document = tmp_path / "reactor.txt"
    document.write_text(DOCUMENT)
    violations: dict[str, list] = {}
    for scheme in ("light", "dark"):
        person = ui(color_scheme=scheme).open()
        page = person.page
        violations[f"{scheme} key dialog"] = person.axe("key dialog")
        person.enter_key(ui_server.key)
        person.ready()
        person.ask(QUESTION)
        page.locator("#messages .thumbs").last.get_by_role("button", name="Good answer").click()
        page.locator("#messages").get_by_text("Rating saved.").wait_for()
        violations[f"{scheme} chat"] = person.axe("chat")
        person.shot(f"axe-chat-{scheme}")
        page.get_by_role("tab", name="Knowledge").click()
        if scheme == "light":
            page.get_by_label("New collection").fill("Handbook")
            page.get_by_role("button", name="Create").click()
            page.get_by_label("Add documents to “Handbook”").set_input_files(str(document))
        page.locator("#file-list li.status-completed").first.wait_for(timeout=120_000)
        violations[f"{scheme} knowledge"] = person.axe("knowledge")
        person.shot(f"axe-knowledge-{scheme}")
        page.get_by_role("tab", name="Images").click()
        page.locator("#gallery-empty, #gallery li").first.wait_for()
        violations[f"{scheme} images"] = person.axe("images")
        person.shot(f"axe-images-{scheme}")
    phone = ui(viewport=PHONE, is_mobile=True).open(key=ui_server.key)
    phone.page.get_by_role("button", name="Conversations", exact=True).click()
    violations["phone sidebar"] = phone.axe("phone sidebar")
    assert {where: [v["id"] for v in found] for where, found in violations.items() if found} == {}
