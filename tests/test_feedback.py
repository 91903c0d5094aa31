"""POST/GET /v1/feedback over a live server (the mock upstream as the model): ratings of an app's own answers,
replaced on a second rating, filtered on the way out; other apps' answers and bad scores refused."""

from __future__ import annotations

import pytest

from chains.model_routes import ModelRoute
from storage.tables import Feedback, Usage
from tests.conftest import ADMIN_KEY
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
