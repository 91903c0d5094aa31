"""GET /v1/usage: a usage record per request, summed by day, model or key for the caller's app; every app for admins.

What becomes a record (server/routes/chat.py): every request that reaches the chat graph. Successes are written
by the graph with their tokens; failures inside the graph (unknown conversation, a model that is down) are written
by ``record_failure`` with their status and zero tokens. A body rejected by validation before the graph
(``max_tokens: 0``, ``n: 2``) leaves no record.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import pytest

from chains.local_model import local_route
from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from tests.conftest import ADMIN_KEY, MODEL_PATH
from tests.test_errors import assert_error

pytestmark = pytest.mark.slow

USER = {"role": "user", "content": "What is the capital of France?"}
QUESTION = {"messages": [{"type": "human", "content": "What is the capital of France?"}]}


def chat(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": [USER], "max_tokens": 4, "temperature": 0, **body})


def stream_usage(client: httpx.Client, **body) -> dict:
    """Stream a completion; the usage from its last chunk."""
    payload = {"messages": [USER], "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}, **body}
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200
        lines = [line[5:] for line in response.iter_lines() if line.startswith("data:")]
    chunks = [json.loads(line) for line in lines if "[DONE]" not in line]
    assert "error" not in chunks[-1], chunks[-1]
    return chunks[-1]["usage"]


def report(client: httpx.Client, **params) -> dict:
    response = client.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["group_by"] == params.get("group_by", "day")
    return body


def by_group(body: dict) -> dict:
    return {row["group"]: row for row in body["data"]}


def totals(body: dict) -> tuple[int, int, int, int]:
    rows = body["data"]
    return (
        sum(r["requests"] for r in rows),
        sum(r["prompt_tokens"] for r in rows),
        sum(r["completion_tokens"] for r in rows),
        sum(r["failed_requests"] for r in rows),
    )


@pytest.fixture
def usage_server(live_server, llama):
    """Three model routes: gemma-3-270m and gemma-alias on the session's llama.cpp server, and "down" (nothing
    listens there) for a model failure."""
    route = local_route(base_url=llama.base_url, gguf_path=str(MODEL_PATH), context_window=llama.context_window)
    down = ModelRoute(name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout=5)
    return live_server(model_routes=[route, route.model_copy(update={"name": "gemma-alias"}), down])


def ok(model: str, usage: dict) -> tuple[str, int, int, bool]:
    """An expected successful record: (model, prompt tokens, completion tokens, ok)."""
    return (model, usage["prompt_tokens"], usage["completion_tokens"], True)


def counts(row: dict) -> tuple[int, int, int, int]:
    return (row["requests"], row["prompt_tokens"], row["completion_tokens"], row["failed_requests"])


@pytest.fixture
def traffic(usage_server):
    """A few requests from two keys of the "tests" app and one key of app "other"; what each should count."""
    server = usage_server
    key1, key2, other = server.key, server.create_key("tests"), server.create_key("other")
    started = int(time.time())
    expected = {"key1": [], "key2": [], "other": []}  # (model, prompt_tokens, completion_tokens, ok)
    with server.http(key=key1) as one, server.http(key=key2) as two, server.http(key=other) as three:
        first = chat(one, model="gemma-3-270m")
        assert first.status_code == 200, first.text
        expected["key1"].append(ok("gemma-3-270m", first.json()["usage"]))
        streamed = stream_usage(one, model="gemma-alias")
        expected["key1"].append(ok("gemma-alias", streamed))
        # Fails inside the graph: a record with its status and no tokens.
        assert_error(chat(one, model="gemma-3-270m", conversation_id="conv_missing"), 404, code="not_found")
        expected["key1"].append(("gemma-3-270m", 0, 0, False))
        # Rejected before the graph: no record.
        assert_error(chat(one, max_tokens=0), 400)
        assert_error(chat(one, temperature=5), 400)

        third = chat(two, model="gemma-3-270m", user="u1")
        assert third.status_code == 200, third.text
        expected["key2"].append(ok("gemma-3-270m", third.json()["usage"]))
        assert_error(chat(two, model="down"), 503, code="service_unavailable")
        expected["key2"].append(("down", 0, 0, False))
        # LangServe requests count too, for the key that made them.
        invoked = two.post("/chat/invoke", json={"input": QUESTION}, headers={"X-Model": "gemma-alias"})
        assert invoked.status_code == 200, invoked.text
        meta = invoked.json()["output"]["usage_metadata"]
        expected["key2"].append(("gemma-alias", meta["input_tokens"], meta["output_tokens"], True))

        fourth = chat(three, model="gemma-alias")
        assert fourth.status_code == 200, fourth.text
        expected["other"].append(ok("gemma-alias", fourth.json()["usage"]))
    for records in expected.values():
        assert all(p > 0 and c > 0 for _, p, c, ok in records if ok)
    return {
        "server": server,
        "keys": {"key1": key1, "key2": key2, "other": other},
        "expected": expected,
        "started": started,
        "finished": int(time.time()) + 1,
    }


def _sum(records, model: str | None = None) -> tuple[int, int, int, int]:
    """(requests, prompt tokens, completion tokens, failed requests) of the expected records, of one model or all."""
    chosen = [r for r in records if model is None or r[0] == model]
    return (len(chosen), sum(r[1] for r in chosen), sum(r[2] for r in chosen), sum(1 for r in chosen if not r[3]))


def test_app_usage_by_model_key_and_day(traffic):
    server, keys, expected = traffic["server"], traffic["keys"], traffic["expected"]
    mine = expected["key1"] + expected["key2"]
    with server.http(key=keys["key1"]) as client:
        models = by_group(report(client, group_by="model"))
        assert set(models) == {"gemma-3-270m", "gemma-alias", "down"}
        for model, row in models.items():
            assert counts(row) == _sum(mine, model=model), model
            assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
            assert row["cached_requests"] == 0

        by_key = by_group(report(client, group_by="key"))
        assert set(by_key) == {keys["key1"][:12], keys["key2"][:12]}  # never the other app's key
        for name in ("key1", "key2"):
            assert counts(by_key[keys[name][:12]]) == _sum(expected[name]), name

        days = report(client, group_by="day")
        today = dt.datetime.fromtimestamp(traffic["started"], dt.UTC).date().isoformat()
        assert [row["group"] for row in days["data"]] == [today]
        assert totals(days) == _sum(mine)
        assert totals(report(client)) == _sum(mine)  # day is the default grouping

    # The other app sees only its own.
    with server.http(key=keys["other"]) as client:
        assert by_group(report(client, group_by="key")).keys() == {keys["other"][:12]}
        assert totals(report(client, group_by="model")) == _sum(expected["other"])


def test_start_and_end_filter(traffic):
    server, keys, expected = traffic["server"], traffic["keys"], traffic["expected"]
    mine = _sum(expected["key1"] + expected["key2"])
    started, finished = traffic["started"], traffic["finished"]
    today = dt.datetime.fromtimestamp(started, dt.UTC).date()
    with server.http(key=keys["key2"]) as client:
        # Unix seconds.
        window = report(client, start=str(started), end=str(finished))
        assert (window["start"], window["end"]) == (started, finished)
        assert totals(window) == mine
        assert totals(report(client, start=str(finished), end=str(finished + 60))) == (0, 0, 0, 0)
        assert totals(report(client, start=str(started - 3600), end=str(started))) == (0, 0, 0, 0)
        assert totals(report(client, start="0")) == mine
        assert report(client, start="0")["start"] == 0
        # ISO dates and times (UTC unless a zone is given).
        tomorrow, yesterday = today + dt.timedelta(days=1), today - dt.timedelta(days=1)
        assert totals(report(client, start=today.isoformat(), end=tomorrow.isoformat())) == mine
        assert totals(report(client, start=yesterday.isoformat(), end=today.isoformat())) == (0, 0, 0, 0)
        iso_start = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert report(client, start=iso_start)["start"] == started
        assert totals(report(client, start=iso_start)) == mine
        assert report(client, start=f"{today.isoformat()}T00:00:00+01:00")["start"] == int(
            dt.datetime.combine(today, dt.time(), dt.UTC).timestamp()
        ) - 3600
        # Defaults: the last 30 days up to now.
        default = report(client)
        assert default["end"] - default["start"] == 30 * 86400 and default["end"] >= finished - 1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-13-45"}, "start"),
        ({"end": "12:00"}, "end"),
        ({"start": "-5"}, "start"),
        ({"start": "1.5"}, "start"),
        ({"start": "²"}, "start"),
        ({"end": "9" * 30}, "end"),
        ({"start": "200", "end": "100"}, "start"),
        ({"start": "100", "end": "100"}, "start"),
    ],
)
def test_bad_time_range_is_400(server, params, param):
    with server.http() as client:
        assert_error(client.get("/v1/usage", params=params), 400, param=param)


def test_bad_group_by_is_400(server):
    with server.http() as client:
        assert_error(client.get("/v1/usage", params={"group_by": "week"}), 400, param="group_by")


def test_app_keys_cannot_report_on_apps(server):
    with server.http() as client:
        assert_error(client.get("/v1/usage", params={"group_by": "app"}), 400, param="group_by")
        assert_error(client.get("/v1/usage", params={"app": "tests"}), 400, param="app")  # not even its own
        assert_error(client.get("/v1/usage", params={"app": "other"}), 400, param="app")


def test_admin_sees_every_app(traffic):
    server, expected = traffic["server"], traffic["expected"]
    with server.http(key=ADMIN_KEY) as admin:
        ids = {app["name"]: app["id"] for app in admin.get("/admin/apps").json()["data"]}
        apps = by_group(report(admin, group_by="app"))
        assert set(apps) == {ids["tests"], ids["other"]}
        tests_row, other_row = apps[ids["tests"]], apps[ids["other"]]
        assert counts(tests_row) == _sum(expected["key1"] + expected["key2"])
        assert counts(other_row) == _sum(expected["other"])
        everything = expected["key1"] + expected["key2"] + expected["other"]
        assert totals(report(admin)) == _sum(everything)
        assert set(by_group(report(admin, group_by="key"))) == {traffic["keys"][k][:12] for k in expected}
        # One app, by name or id.
        assert totals(report(admin, group_by="model", app="other")) == _sum(expected["other"])
        assert totals(report(admin, group_by="model", app=ids["tests"])) == _sum(expected["key1"] + expected["key2"])
        assert by_group(report(admin, group_by="app", app="other")).keys() == {ids["other"]}
        assert_error(admin.get("/v1/usage", params={"app": "nope"}), 404, code="not_found", param="app")


def test_rejected_requests_leave_no_record(server):
    """Validation (before the graph) and authentication failures are not usage; the admin total stays at 0."""
    with server.http() as client:
        assert_error(chat(client, max_tokens=0), 400)
        assert_error(chat(client, temperature=5), 400)
        assert_error(chat(client, messages=[]), 400)
    with server.http(key="sk-" + "n" * 43) as stranger:
        assert_error(chat(stranger), 401)
    with server.http(key=ADMIN_KEY) as admin:
        assert_error(chat(admin), 403)
        assert report(admin, group_by="app")["data"] == []


def test_failed_langserve_requests_are_usage_records(server):
    with server.http() as client:
        missing = client.post("/chat/invoke", json={"input": QUESTION}, headers={"X-Conversation-ID": "conv_missing"})
        assert_error(missing, 404, code="not_found")
        assert totals(report(client)) == (1, 0, 0, 1)
