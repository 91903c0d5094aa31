"""LangServe's chat playground in a real browser (Debian's chromium, driven by Playwright): the page renders its
chat, a person's message gets the model's streamed answer, and with X-Conversation-ID the turn lands in that
server-side conversation. A screenshot is saved in .cache/screenshots/ to look at."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.tables import Usage
from tests.conftest import BROWSER_SCREENSHOTS as SCREENSHOTS

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


def open_playground(browser, server, headers: dict[str, str] | None = None):
    """A page on /chat/playground/ with the key in the cookie the README tells people to set."""
    context = browser.new_context(extra_http_headers=headers or {})
    context.add_cookies([{"name": "genai_api_key", "value": server.key, "url": server.url}])
    page = context.new_page()
    page.goto(f"{server.url}/chat/playground/")
    # The page fetches the runnable's schemas and config after it renders its chat box; a message sent before they
    # arrive may go out malformed (a 400 from /chat/stream_log was seen once in CI).
    page.wait_for_load_state("networkidle")
    return page


MESSAGES = """() => [...document.querySelectorAll('div.mb-8.group')].reverse()
    .map(m => [m.querySelector('select').value, m.querySelector('textarea').value])"""


def ask(page, question: str) -> str:
    """Send ``question`` as a person would: type it, press Enter. The answer's text once its stream has ended."""
    box = page.get_by_placeholder("Send a message...")
    box.fill(question)
    # The stream has ended when its request finishes, or fails: the page may abort the fetch once it has
    # read LangServe's `end` event, before the body is closed.
    ended: list = []
    for event in ("requestfinished", "requestfailed"):
        page.on(event, lambda request: ended.append(request) if request.url.endswith("/chat/stream_log") else None)
    box.press("Enter")
    deadline = time.monotonic() + 60
    while not ended:
        assert time.monotonic() < deadline, "the answer's stream did not end within 60 s"
        page.wait_for_timeout(100)
    response = ended[0].response()
    assert response is not None and response.status == 200, (
        f"/chat/stream_log answered {response and response.status}: {response and response.text()!r}; "
        f"the page sent {ended[0].post_data!r}"
    )
    page.wait_for_function(f"() => ({MESSAGES})().length === 2 && ({MESSAGES})()[1][1].trim() !== ''")
    shown = page.evaluate(MESSAGES)
    assert [role for role, _ in shown] == ["human", "ai"] and shown[0][1] == question
    return shown[1][1].strip()


def test_the_playground_renders_its_chat_and_streams_an_answer(browser, server):
    page = open_playground(browser, server)
    # The page shows either its chat box or why it cannot ("The chat playground is only supported for ...").
    page.locator("textarea[placeholder='Send a message...'], :text('only supported')").first.wait_for()
    assert page.get_by_text("only supported").count() == 0, page.inner_text("body")
    answer = ask(page, QUESTION)
    assert answer, "no answer rendered"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "playground.png"))
    # The answer shown is the one the platform recorded for this app.
    with server.http() as http:
        usage = http.get("/v1/usage", params={"group_by": "model"}).json()["data"]
    assert [row["requests"] for row in usage] == [1]


def test_a_playground_turn_lands_in_the_conversation_of_x_conversation_id(browser, server):
    with server.http() as http:
        conversation_id = http.post("/v1/conversations", json={"title": "from the playground"}).json()["id"]
    page = open_playground(browser, server, headers={"X-Conversation-ID": conversation_id})
    answer = ask(page, QUESTION)
    with server.http() as http:
        stored = http.get(f"/v1/conversations/{conversation_id}").json()["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [("user", QUESTION), ("assistant", answer)]


THUMBS = "div.mb-8.group div.mt-2.flex.items-center span.mr-2 button"  # the answer's thumbs: up, then down


def test_the_playground_thumbs_rate_the_answer_in_the_feedback_store(browser, server):
    page = open_playground(browser, server)
    ask(page, QUESTION)
    thumbs = page.locator(THUMBS)
    thumbs.first.wait_for()
    assert thumbs.count() == 2

    def rate(button: int) -> dict:
        """Click a thumb; the body the page posted to /chat/feedback, once the platform answered it."""
        with page.expect_response(lambda r: r.url.endswith("/chat/feedback") and r.request.method == "POST") as sent:
            thumbs.nth(button).click()
        assert sent.value.status == 200, sent.value.text()
        return sent.value.request.post_data_json

    def stored() -> list[tuple[str, float]]:
        with server.http() as http:
            rows = http.get("/v1/feedback").json()["data"]
        return [(row["response_id"], row["score"]) for row in rows]

    # The page rates the answer's run (LangServe's run id, which the answer's response id is made of).
    first = rate(0)
    run_id = uuid.UUID(first["run_id"])
    response_id = f"chatcmpl-{run_id.hex}"
    assert first == {"run_id": str(run_id), "key": "correctness", "score": 1}
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API keeps an event loop running in this one
        usage = thread.submit(server.rows, Usage.__table__).result()
    assert [row["response_id"] for row in usage] == [response_id]  # the answer's own id
    assert stored() == [(response_id, 1.0)]
    page.locator(f"{THUMBS} svg.stroke-teal-500").wait_for()  # the page shows the thumb up as given
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "playground-feedback.png"))
    # Thumbs down replaces the rating: the playground sends 0 (LangSmith's "incorrect"), stored as given.
    assert rate(1) == {"run_id": str(run_id), "key": "correctness", "score": 0}
    assert stored() == [(response_id, 0.0)]
    page.locator(f"{THUMBS} svg.stroke-red-500").wait_for()
