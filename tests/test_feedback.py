"""Feedback over a live server (the mock upstream as the model): POST/GET /v1/feedback (ratings of an app's own
answers, replaced on a second rating, filtered on the way out; other apps' answers and bad scores refused), the
LangServe playground's thumbs, `genai feedback export` as an evaluation dataset, and forwarding to LangSmith."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chains.model_routes import ModelRoute
from storage.tables import Feedback, Usage
from tests.conftest import ADMIN_KEY, ROOT
from tests.test_errors import assert_error


@pytest.fixture
def rated(live_server, mock_upstream):
    return live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)])


def answer(server, user: str | None = None, key: str | None = None) -> str:
    extra = {"user": user} if user else {}
    completion = server.openai(key=key).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], **extra
    )
    return completion.id


def test_an_answer_is_rated_and_a_second_rating_replaces_the_first(rated):
    response_id = answer(rated, user="u1")
    with rated.http() as http:
        first = http.post("/v1/feedback", json={"response_id": response_id, "score": -1, "comment": "wrong"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["object"] == "feedback" and body["id"].startswith("fb_")
        assert (body["response_id"], body["score"], body["comment"], body["correction"]) == (
            response_id, -1.0, "wrong", None,
        )  # fmt: skip
        assert (body["model"], body["user"]) == ("mock", "u1")
        second = http.post(
            "/v1/feedback", json={"response_id": response_id, "score": 0.75, "correction": "Hello to you."}
        ).json()
        assert second["id"] == body["id"] and second["score"] == 0.75 and second["comment"] is None
        assert second["correction"] == "Hello to you."
        listed = http.get("/v1/feedback").json()
    assert [item["id"] for item in listed["data"]] == [body["id"]] and listed["object"] == "list"
    [row] = rated.rows(Feedback.__table__)
    assert (row["score"], row["response_id"], row["key_prefix"]) == (0.75, response_id, rated.key[:12])


def test_streamed_and_langserve_answers_can_be_rated(rated):
    client = rated.openai()
    chunks = list(
        client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    with rated.http() as http:
        assert http.post("/v1/feedback", json={"response_id": chunks[0].id, "score": 1}).status_code == 200
        served = http.post(
            "/chat/invoke",
            json={"input": {"messages": [{"type": "human", "content": "hi"}]}},
            headers={"X-Model": "mock"},
        ).json()
        assert http.post("/v1/feedback", json={"response_id": served["output"]["id"], "score": 1}).status_code == 200


def test_filters(rated):
    good, bad = answer(rated, user="alice"), answer(rated, user="bob")
    with rated.http() as http:
        http.post("/v1/feedback", json={"response_id": good, "score": 1}).raise_for_status()
        http.post("/v1/feedback", json={"response_id": bad, "score": 0.1}).raise_for_status()

        def ids(**query) -> list[str]:
            response = http.get("/v1/feedback", params=query)
            assert response.status_code == 200, response.text
            return [item["response_id"] for item in response.json()["data"]]

        assert set(ids()) == {good, bad}
        assert ids(min_score=0.5) == [good] and ids(max_score=0.5) == [bad]
        assert ids(user="bob") == [bad] and ids(model="other") == []
        assert ids(start="2999-01-01") == [] and set(ids(end="2999-01-01")) == {good, bad}
        assert len(ids(limit=1)) == 1


@pytest.mark.parametrize(
    "body, param",
    [
        ({"response_id": "chatcmpl-unknown", "score": 1}, "response_id"),
        ({"score": 1}, "response_id"),
        ({"response_id": "x", "score": 2}, "score"),
        ({"response_id": "x", "score": -0.5}, "score"),
        ({"response_id": "x", "score": "1"}, "score"),
        ({"response_id": "x", "score": True}, "score"),
        ({"response_id": "x", "score": 1, "stars": 5}, "stars"),
    ],
    ids=["unknown_id", "no_id", "above_one", "negative_fraction", "string", "bool", "unknown_field"],
)
def test_bad_ratings_are_refused(rated, body, param):
    with rated.http() as http:
        response = http.post("/v1/feedback", json=body)
    error = assert_error(response, 404 if param == "response_id" and "response_id" in body else 400)
    assert error["param"] == param


def test_another_apps_answer_is_404_and_its_feedback_invisible(rated):
    response_id = answer(rated)
    other_key = rated.create_key("other-app")
    with rated.http(key=other_key) as other:
        assert_error(other.post("/v1/feedback", json={"response_id": response_id, "score": 1}), 404)
    with rated.http() as http:
        http.post("/v1/feedback", json={"response_id": response_id, "score": 1}).raise_for_status()
    with rated.http(key=other_key) as other:
        assert other.get("/v1/feedback").json()["data"] == []
    with rated.http(key=ADMIN_KEY) as admin:
        assert_error(admin.get("/v1/feedback"), 403)


def test_a_failed_request_cannot_be_rated(live_server):
    server = live_server(model_routes=[ModelRoute(name="down", base_url="http://127.0.0.1:9/v1", max_retries=0)])
    with server.http() as http:
        failed = http.post(
            "/v1/chat/completions", json={"model": "down", "messages": [{"role": "user", "content": "x"}]}
        )
        assert failed.status_code == 503
        [record] = server.rows(Usage.__table__)
        request_id = record["response_id"]
        assert_error(http.post("/v1/feedback", json={"response_id": request_id, "score": 1}), 404)


def run_export(server, *args: str) -> subprocess.CompletedProcess:
    """``genai feedback export ARGS`` on the server's database, as an operator runs it."""
    env = {**os.environ, "GENAI_DATABASE_URL": server.services.db.url, "GENAI_DATA_DIR": str(server.settings.data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "server", "feedback", "export", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def export(server, *args: str) -> tuple[list[dict], str]:
    """A successful export: its JSONL lines, parsed, and its stderr."""
    done = run_export(server, *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def test_rated_answers_export_as_an_evaluation_dataset(rated):
    client = rated.openai()
    stored = client.chat.completions.create(
        model="mock",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        store=True,
    )
    first = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "one"}], extra_body={"conversation_id": "new"}
    )
    conversation = first.model_extra["conversation_id"]
    second = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "two"}], extra_body={"conversation_id": conversation}
    )
    unstored = answer(rated)
    with rated.http() as http:
        for response_id, score, correction in (
            (stored.id, 1, None), (second.id, -1, "Two."), (unstored, 1, None),
        ):  # fmt: skip
            body = {"response_id": response_id, "score": score, "correction": correction}
            http.post("/v1/feedback", json=body).raise_for_status()
    listed, note = export(rated, "--since", "2020-01-01")
    assert sorted(example["id"] for example in listed) == sorted([stored.id, second.id])
    examples = sorted(listed, key=lambda example: example["id"] != stored.id)  # the stored request's first
    assert examples[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert examples[0]["reference"] is None and examples[0]["metadata"]["answer"] == "Mock reply."
    assert examples[0]["metadata"]["score"] == 1.0 and examples[0]["metadata"]["model"] == "mock"
    assert examples[1]["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "Mock reply."},
        {"role": "user", "content": "two"},
    ]  # fmt: skip
    assert examples[1]["reference"] == "Two."
    assert "exported 2 rated answers; left out 1" in note and "store: true" in note
    assert [e["id"] for e in export(rated, "--max-score", "0")[0]] == [second.id]
    assert export(rated, "--since", "2999-01-01")[0] == []
    rated.create_key("other")
    assert export(rated, "--app", "tests")[0] and export(rated, "--app", "other")[0] == []

    # As a fine-tuning file: the well-rated answer as it was, the corrected one with its correction.
    lines, note = export(rated, "--app", "tests", "--format", "fine-tune")
    assert sorted(lines, key=lambda line: len(line["messages"])) == [  # rated in the same second: either order
        {"messages": [*examples[0]["messages"], {"role": "assistant", "content": "Mock reply."}]},
        {"messages": [*examples[1]["messages"], {"role": "assistant", "content": "Two."}]},
    ]
    assert "0 rated answers left out: rated low and not corrected" in note
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    assert client.files.create(file=("rated.jsonl", data), purpose="fine-tune").purpose == "fine-tune"


def test_export_refuses_a_bad_date(rated):
    done = run_export(rated, "--since", "yesterday")
    assert done.returncode == 1 and "--since" in done.stderr and done.stdout == ""


def test_the_playgrounds_thumbs_land_in_the_feedback_store(rated):
    with rated.http() as http:
        served = http.post(
            "/chat/invoke",
            json={"input": {"messages": [{"type": "human", "content": "hi"}]}},
            headers={"X-Model": "mock"},
        ).json()
        run_id = served["metadata"]["run_id"]
        assert http.head("/chat/feedback").status_code == 200
        page = http.get("/chat/playground/")
        assert page.status_code == 200 and 'FEEDBACK_ENABLED = "true"' in page.text.replace("'", '"')
        thumbs = http.post("/chat/feedback", json={"run_id": run_id, "key": "score", "score": 0})
        assert thumbs.status_code == 200, thumbs.text
        assert thumbs.json()["run_id"] == run_id and thumbs.json()["score"] == 0
        [row] = http.get("/v1/feedback").json()["data"]
        assert row["response_id"] == served["output"]["id"] == f"chatcmpl-{uuid.UUID(run_id).hex}"
        assert row["score"] == 0
        assert_error(http.post("/chat/feedback", json={"run_id": str(uuid.uuid4()), "key": "s", "score": 1}), 404)
        assert_error(http.post("/chat/feedback", json={"run_id": run_id, "key": "s", "score": 3}), 400, param="score")
        assert_error(http.post("/chat/feedback", json={"run_id": run_id, "key": "s"}), 400, param="score")
        assert_error(http.post("/chat/feedback", json={"run_id": "nope", "key": "s", "score": 1}), 400)
    with rated.http(key="") as anonymous:
        assert_error(anonymous.post("/chat/feedback", json={"run_id": run_id, "key": "s", "score": 1}), 401)
        assert anonymous.head("/chat/feedback").status_code == 401


def test_ratings_are_forwarded_to_langsmith_when_tracing_is_on(rated):
    """The real LangSmith client, pointed at a loopback stand-in for LangSmith's API that records what it gets."""
    from langsmith import Client

    from server.feedback_forwarding import LangSmithFeedback

    with serve_recorder() as (url, received):
        rated.services.langsmith_feedback = LangSmithFeedback(
            Client(api_url=url, api_key="ls-test", auto_batch_tracing=False)
        )
        response_id = answer(rated)
        with rated.http() as http:
            body = {"response_id": response_id, "score": 0.5, "comment": "meh", "correction": "Better."}
            http.post("/v1/feedback", json=body).raise_for_status()
        rated.settle()
    sent_feedback = [body for path, body in received if path.endswith("/feedback")]
    assert len(sent_feedback) == 1, [path for path, _ in received]
    [sent] = sent_feedback
    assert sent["run_id"] == str(uuid.UUID(response_id.removeprefix("chatcmpl-")))
    assert (sent["key"], sent["score"], sent["comment"]) == ("user_score", 0.5, "meh")
    assert sent["correction"] == {"answer": "Better."} and sent["session_id"] == PROJECT[0]["id"]


PROJECT = [
    {
        "id": str(uuid.uuid4()),
        "name": "default",
        "start_time": "2026-11-27T00:00:00",
        "tenant_id": str(uuid.uuid4()),
        "reference_dataset_id": None,
    }
]


@contextmanager
def serve_recorder():
    """A loopback HTTP server answering every request with ``{}`` and recording (path, JSON body)."""
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                received.append((self.path, json.loads(raw or b"{}")))
            except ValueError:
                received.append((self.path, {}))
            payload = json.dumps(PROJECT if self.path.startswith("/sessions") else {}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", received
    finally:
        httpd.shutdown()
