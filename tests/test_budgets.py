"""Cost and budgets: each usage record's cost, /v1/usage's sums of it, and monthly budgets per app and per key
(429 ``insufficient_quota``), in process and shared through Redis; set with the admin API and the CLI.

Against the mock upstream, whose every answer costs 5 prompt and 3 completion tokens. The prices make one request
cost exactly 0.25 on "mock" and 0.5 on "mock-double" (binary fractions: every sum below is exact).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import openai
import pytest

from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from server.cli import build_parser
from storage.tables import Usage
from tests.conftest import ADMIN_KEY, ROOT, table_cell
from tests.test_chat_service import LANGSERVE_INPUT, SETTLE
from tests.test_errors import assert_error

HI = [{"role": "user", "content": "hi"}]
COST = {"mock": 0.25, "mock-double": 0.5, "down": 0.0}  # per request; a failure costs nothing


def routes(upstream: str) -> list[ModelRoute]:
    """Route "mock" at 5 * 20_000 + 3 * 50_000 = 250_000 per million tokens: 0.25 a request; "mock-double" twice that;
    "down" (priced, but nothing listens there) for a failure."""
    mock = ModelRoute(
        name="mock", base_url=upstream, max_retries=0, timeout=10, input_price=20_000, output_price=50_000
    )
    double = mock.model_copy(update={"name": "mock-double", "input_price": 40_000, "output_price": 100_000})
    down = mock.model_copy(update={"name": "down", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout": 5})
    return [mock, double, down]


@pytest.fixture
def priced(live_server, mock_upstream):
    return live_server(model_routes=routes(mock_upstream))


@pytest.fixture
def admin(priced):
    with priced.http(key=ADMIN_KEY) as client:
        yield client


def chat(client: httpx.Client, model: str = "mock", **body) -> httpx.Response:
    """One chat request, then a pause for its cost to be charged (in the background, just after the answer)."""
    response = client.post("/v1/chat/completions", json={"model": model, "messages": HI, **body})
    time.sleep(SETTLE)
    return response


def statuses(client: httpx.Client, count: int, model: str = "mock") -> list[int]:
    return [chat(client, model).status_code for _ in range(count)]


def create_app(admin: httpx.Client, name: str, **fields) -> dict:
    created = admin.post("/admin/apps", json={"name": name, **fields})
    assert created.status_code == 200, created.text
    return created.json()


def assert_quota_error(response: httpx.Response, owner: str, amount: str) -> str:
    """OpenAI's 429 for an exhausted quota, naming the budget, its amount and the first of next month (UTC)."""
    error = assert_error(response, 429, code="insufficient_quota")
    assert error["type"] == "insufficient_quota" and error["param"] is None
    message = error["message"]
    assert f"monthly budget of {owner}:" in message and f"spent of {amount} this month" in message, message
    today = dt.datetime.now(dt.UTC)
    reset = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    assert f"resets on {reset.isoformat()} at 00:00 UTC" in message, message
    assert "retry-after" not in response.headers  # nothing to retry before the month ends
    return message


# ---------------------------------------------------------------------------------------------------------------
# Cost in usage records and reports


def test_usage_records_and_reports_carry_exact_costs(priced, admin):
    second = priced.create_key("tests")
    other = priced.create_key("other")
    with priced.http() as one, priced.http(key=second) as two, priced.http(key=other) as three:
        assert statuses(one, 2) + statuses(one, 1, "mock-double") == [200, 200, 200]
        streamed = one.post("/v1/chat/completions", json={"model": "mock", "messages": HI, "stream": True})
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        assert_error(chat(one, "down"), 503, code="service_unavailable")  # recorded, at no cost
        invoked = two.post("/chat/invoke", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "mock-double"})
        assert invoked.status_code == 200, invoked.text
        assert statuses(two, 1) + statuses(three, 1, "mock-double") == [200, 200]

    records = priced.rows(Usage.__table__)
    assert len(records) == 8
    for record in records:
        assert record["cost"] == (COST[record["model"]] if record["status"] == "ok" else 0.0), record
    assert sorted(r["cost"] for r in records) == [0.0, 0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5]

    app_ids = {app["name"]: app["id"] for app in admin.get("/admin/apps").json()["data"]}
    expected: dict[str, dict] = {grouping: defaultdict(float) for grouping in ("day", "model", "key", "app")}
    for record in records:
        day = dt.datetime.fromtimestamp(record["created_at"], dt.UTC).date().isoformat()
        for grouping, group in (
            ("day", day),
            ("model", record["model"]),
            ("key", record["key_prefix"]),
            ("app", record["app_id"]),
        ):
            if grouping == "app" or record["app_id"] == app_ids["tests"]:
                expected[grouping][group] += record["cost"]
    assert expected["model"] == {"mock": 1.0, "mock-double": 1.0, "down": 0.0}
    assert expected["key"] == {priced.key[:12]: 1.25, second[:12]: 0.75}
    assert expected["app"] == {app_ids["tests"]: 2.0, app_ids["other"]: 0.5}
    assert sum(expected["day"].values()) == 2.0  # one day, or two around midnight UTC

    def costs(client: httpx.Client, **params) -> dict:
        response = client.get("/v1/usage", params={"start": "0", **params})
        assert response.status_code == 200, response.text
        return {row["group"]: row["cost"] for row in response.json()["data"]}

    with priced.http() as client:  # the app's own report
        for grouping in ("day", "model", "key"):
            assert costs(client, group_by=grouping) == expected[grouping], grouping
    assert costs(admin, group_by="app") == expected["app"]  # every app's, with the admin key
    assert costs(admin, group_by="model", app="other") == {"mock-double": 0.5}
    with priced.http(key=other) as client:
        assert costs(client, group_by="key") == {other[:12]: 0.5}


# ---------------------------------------------------------------------------------------------------------------
# Budgets


def test_an_app_budget_is_shared_by_its_keys(priced, admin):
    create_app(admin, "capped", monthly_budget=1.0)
    first, second = priced.create_key("capped"), priced.create_key("capped")
    uncapped = priced.create_key("uncapped")
    with priced.http(key=first) as one, priced.http(key=second) as two:
        # 0, 0.25, 0.5 and 0.75 spent before each: budget left. Then 1.0 of 1.0: none, for either key.
        assert [chat(client).status_code for client in (one, two, one, two)] == [200] * 4
        assert_quota_error(chat(one), "app 'capped'", "1")
        message = assert_quota_error(chat(two), "app 'capped'", "1")
        assert first[:12] not in message and first not in message
        # LangServe's routes and streams are refused alike, before anything runs.
        invoked = two.post("/chat/invoke", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "mock"})
        assert_quota_error(invoked, "app 'capped'", "1")
        streamed = one.post("/v1/chat/completions", json={"model": "mock", "messages": HI, "stream": True})
        assert_quota_error(streamed, "app 'capped'", "1")
        # What costs nothing stays open: the models, the app's usage (which shows why).
        assert one.get("/v1/models").status_code == 200
        spent = one.get("/v1/usage", params={"group_by": "model"}).json()["data"]
        assert [(row["group"], row["requests"], row["cost"]) for row in spent] == [("mock", 4, 1.0)]

    # The openai SDK raises its RateLimitError with OpenAI's code.
    with pytest.raises(openai.RateLimitError) as raised:
        priced.openai(first).chat.completions.create(model="mock", messages=HI)
    assert raised.value.code == "insufficient_quota"

    # Another app is unaffected.
    with priced.http(key=uncapped) as client:
        assert statuses(client, 6) == [200] * 6

    # Raising the budget takes effect at once; removing it lifts it.
    assert admin.patch("/admin/apps/capped", json={"monthly_budget": 1.5}).json()["monthly_budget"] == 1.5
    with priced.http(key=first) as one:
        assert statuses(one, 3) == [200, 200, 429]
        assert admin.patch("/admin/apps/capped", json={"monthly_budget": None}).json()["monthly_budget"] is None
        assert statuses(one, 2) == [200, 200]


def test_a_key_budget_applies_besides_its_apps(priced, admin):
    create_app(admin, "shared", monthly_budget=1.5)
    small = priced.create_key("shared", monthly_budget=0.5)
    large = priced.create_key("shared", monthly_budget=100)
    with priced.http(key=small) as client:
        assert statuses(client, 2) == [200, 200]  # 0.5 of the key's 0.5
        message = assert_quota_error(chat(client), f"key {small[:12]}...", "0.5")
        assert small not in message
    # The app's budget still has 1.0 left for its other keys: a key's budget binds that key only.
    with priced.http(key=large) as client:
        assert statuses(client, 1, "mock-double") == [200]  # 1.0 of the app's 1.5
        assert statuses(client, 2) == [200, 200]
        assert_quota_error(chat(client), "app 'shared'", "1.5")  # its own 100 is far from spent
    with priced.http(key=small) as client:  # both spent: the app's budget is named first
        assert_quota_error(chat(client), "app 'shared'", "1.5")

    # A key budget of its own, on an app without one; 0 stops a key outright.
    stopped = priced.create_key("tests", monthly_budget=0)
    with priced.http(key=stopped) as client:
        assert_quota_error(chat(client), f"key {stopped[:12]}...", "0")
        assert admin.patch(f"/admin/keys/{stopped[:12]}", json={"monthly_budget": 0.25}).status_code == 200
        assert statuses(client, 2) == [200, 429]
    with priced.http() as client:  # the app's other key, without a budget
        assert statuses(client, 5) == [200] * 5
    # Failures cost nothing, so they do not eat a budget.
    failing = priced.create_key("tests", monthly_budget=0.25)
    with priced.http(key=failing) as client:
        assert [chat(client, "down").status_code for _ in range(2)] == [503, 503]
        assert statuses(client, 2) == [200, 429]


def test_budgets_in_redis_are_shared_by_servers(live_server, mock_upstream, redis_url, tmp_path):
    """Two app instances on one database and one Redis (as replicas): one budget per app and per key."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = live_server(model_routes=routes(mock_upstream), redis_url=redis_url, database_url=database_url)
    second = live_server(model_routes=routes(mock_upstream), redis_url=redis_url, database_url=database_url)
    with first.http(key=ADMIN_KEY) as admin:
        create_app(admin, "replicated", monthly_budget=1.0)
    app_key = first.create_key("replicated")
    key_budget = first.create_key("tests", monthly_budget=0.5)
    for key, admitted in ((app_key, 4), (key_budget, 2)):
        results = []
        for replica in (first, second) * 3:
            with replica.http(key=key) as client:
                results.append(chat(client).status_code)
        assert results == [200] * admitted + [429] * (6 - admitted), key[:12]
    # The counters are plain Redis keys of this month, which expire after it.
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
        counters = client.keys(f"*budget:{month}:*")
        assert counters and all(0 < client.ttl(name) <= 35 * 86400 for name in counters)
    finally:
        client.close()


def test_budgets_in_process_are_per_server(live_server, mock_upstream, tmp_path):
    """Without Redis each process counts on its own (documented, as for rate limits)."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = live_server(model_routes=routes(mock_upstream), database_url=database_url)
    second = live_server(model_routes=routes(mock_upstream), database_url=database_url)
    key = first.create_key("tests", monthly_budget=0.25)
    with first.http(key=key) as a, second.http(key=key) as b:
        assert statuses(a, 2) == [200, 429]
        assert statuses(b, 2) == [200, 429]


def test_without_redis_limits_and_budgets_are_counted_per_process(live_server, mock_upstream):
    """Redis down: neither a 500 nor a request let through unchecked: this process's counts decide."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = live_server(model_routes=routes(mock_upstream), redis_url=dead)
    key = server.create_key("tests", monthly_budget=0.25)
    with server.http(key=key) as client:
        assert statuses(client, 1) == [200]
        server.settle()
        assert statuses(client, 1) == [429]  # the budget, spent by the first answer (0.25 at the mock's prices)
    limited = server.create_key("tests", rpm=2)
    with server.http(key=limited) as client:
        assert [client.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]
    with server.http() as client:
        metrics = client.get("/metrics").text
    assert 'genai_redis_fallbacks_total{part="ratelimits"}' in metrics


# ---------------------------------------------------------------------------------------------------------------
# Setting and showing budgets


def test_the_admin_api_sets_and_shows_budgets(priced, admin):
    app = create_app(admin, "budgeted", monthly_budget=12.5)
    assert app["monthly_budget"] == 12.5
    assert create_app(admin, "unbudgeted")["monthly_budget"] is None
    assert admin.get("/admin/apps/budgeted").json()["monthly_budget"] == 12.5
    listed = {a["name"]: a["monthly_budget"] for a in admin.get("/admin/apps").json()["data"]}
    assert listed["budgeted"] == 12.5 and listed["unbudgeted"] is None
    patched = admin.patch("/admin/apps/budgeted", json={"monthly_budget": 20, "rpm": 5}).json()
    assert (patched["monthly_budget"], patched["rpm"]) == (20.0, 5)
    assert admin.patch("/admin/apps/budgeted", json={"rpm": 6}).json()["monthly_budget"] == 20.0  # unset: kept

    created = admin.post("/admin/keys", json={"app": "budgeted", "monthly_budget": 2}).json()
    assert created["monthly_budget"] == 2.0 and created["key"].startswith("sk-")
    assert admin.post("/admin/keys", json={"app": "budgeted"}).json()["monthly_budget"] is None
    prefix = created["prefix"]
    assert admin.patch(f"/admin/keys/{prefix}", json={"monthly_budget": 0.75}).json()["monthly_budget"] == 0.75
    keys = {k["prefix"]: k for k in admin.get("/admin/keys", params={"app": "budgeted"}).json()["data"]}
    assert keys[prefix]["monthly_budget"] == 0.75 and len(keys) == 2
    assert admin.patch(f"/admin/keys/{prefix}", json={"monthly_budget": None}).json()["monthly_budget"] is None


BAD_BUDGETS = [-1, -0.01, "lots", "1.5", True, [1], {"amount": 1}, 1e13]


@pytest.mark.parametrize("budget", BAD_BUDGETS)
def test_bad_budgets_are_400(priced, admin, budget):
    attempts = [
        admin.post("/admin/apps", json={"name": "bad-budget", "monthly_budget": budget}),
        admin.patch("/admin/apps/tests", json={"monthly_budget": budget}),
        admin.post("/admin/keys", json={"app": "tests", "monthly_budget": budget}),
        admin.patch(f"/admin/keys/{priced.key[:12]}", json={"monthly_budget": budget}),
    ]
    for response in attempts:
        error = assert_error(response, 400, param="monthly_budget")
        assert error["type"] == "invalid_request_error"
    assert "bad-budget" not in [a["name"] for a in admin.get("/admin/apps").json()["data"]]
    assert admin.get("/admin/apps/tests").json()["monthly_budget"] is None
    assert all(k["monthly_budget"] is None for k in admin.get("/admin/keys").json()["data"])


@pytest.mark.parametrize("budget", ["-1", "-0.5", "lots", "nan", "inf", "1e13"])
@pytest.mark.parametrize("command", [["apps", "create", "bad-app"], ["keys", "create", "--app", "tests"]])
def test_the_cli_refuses_bad_budgets(command, budget, capsys):
    """Refused while parsing the command line (exit 2, argparse's usage error), before anything is stored."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--budget", budget])
    assert exited.value.code == 2
    assert "argument --budget: " in capsys.readouterr().err


def test_the_cli_sets_and_shows_budgets(live_server, mock_upstream, tmp_path):
    data_dir = tmp_path / "data"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GENAI_", "PROMETHEUS_"))}
    env.update(
        GENAI_DATA_DIR=str(data_dir),
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_MODEL_ROUTES=json.dumps([route.model_dump(mode="json") for route in routes(mock_upstream)]),
    )

    def genai(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )

    assert genai("apps", "create", "cli-app", "--budget", "0.75").returncode == 0
    created = genai("keys", "create", "--app", "cli-app", "--budget", "0.25")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    other = genai("keys", "create", "--app", "cli-app").stdout.strip()

    assert table_cell(genai("apps", "list").stdout, "cli-app", "BUDGET") == "0.75"
    keys = genai("keys", "list", "--app", "cli-app").stdout.splitlines()
    assert "BUDGET" in keys[0].split() and len(keys) == 3
    assert "0.25" in next(line for line in keys if line.startswith(key[:12])).split()
    assert "0.25" not in next(line for line in keys if line.startswith(other[:12])).split()

    # The server reads what the CLI wrote, shows it and enforces it.
    server = live_server(
        model_routes=routes(mock_upstream), database_url=f"sqlite+aiosqlite:///{data_dir / 'genai.db'}"
    )
    with server.http(key=ADMIN_KEY) as admin:
        assert admin.get("/admin/apps/cli-app").json()["monthly_budget"] == 0.75
        listed = {k["prefix"]: k["monthly_budget"] for k in admin.get("/admin/keys").json()["data"]}
        assert listed[key[:12]] == 0.25 and listed[other[:12]] is None
    with server.http(key=key) as client:
        assert statuses(client, 2) == [200, 429]  # the key's 0.25
    with server.http(key=other) as client:
        assert statuses(client, 3) == [200, 200, 429]  # the app's 0.75, of which the first key spent 0.25
