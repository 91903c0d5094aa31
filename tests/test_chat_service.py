"""One chat service behind every entry point: /v1/chat/completions (plain and streamed) and LangServe's /chat
(invoke, stream, batch) mint response ids, charge tokens, count requests, write usage and record metrics alike.

Against the mock upstream, whose every answer costs 5 prompt and 3 completion tokens.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import HumanMessage

from chains.model_routes import ModelRoute
from server.chat_service import ChatCall
from storage.tables import Usage
from tests.conftest import clear_of_window_edge
from tests.mock_upstream import REPLY
from tests.test_observability import scrape, value

HI = [{"role": "user", "content": "hi"}]
LANGSERVE_INPUT = {"messages": [{"type": "human", "content": "hi"}]}
ENTRY_POINTS = ["v1", "v1-stream", "chat-invoke", "chat-stream"]
SETTLE = 0.5  # tokens are charged just after the answer; generous next to the milliseconds that takes


@pytest.fixture
def mock_server(live_server, mock_upstream):
    return live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)])


def ask(http, entry: str) -> tuple[int, str | None]:
    """One request through ``entry``: its status and, when it succeeded, its response id."""
    if entry.startswith("v1"):
        stream = entry == "v1-stream"
        body = {"model": "mock", "messages": HI, "stream": stream}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = list(response.iter_lines())
        if response.status_code != 200:
            return response.status_code, None
        chunks = (
            [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            if stream
            else [json.loads("".join(lines))]
        )
        text = (
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            if stream
            else chunks[0]["choices"][0]["message"]["content"]
        )
        assert text == REPLY
        return 200, chunks[0]["id"]
    if entry == "chat-invoke":
        response = http.post("/chat/invoke", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "mock"})
        if response.status_code != 200:
            return response.status_code, None
        output = response.json()["output"]
        assert output["content"] == REPLY
        return 200, output["id"]
    with http.stream("POST", "/chat/stream", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "mock"}) as response:
        lines = list(response.iter_lines())
    if response.status_code != 200:
        return response.status_code, None
    data = [d for d in (json.loads(line[6:]) for line in lines if line.startswith("data: {")) if "content" in d]
    assert "".join(d["content"] for d in data) == REPLY
    return 200, data[0]["id"]


def usage_rows(server) -> list[tuple]:
    return [
        (u["response_id"], u["model"], u["prompt_tokens"], u["completion_tokens"], u["status"], u["stream"])
        for u in server.rows(Usage.__table__)
    ]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_tpm_limited_key_is_limited_alike_and_leaves_the_same_records(mock_server, entry):
    key = mock_server.create_key("tests", tpm=20)
    clear_of_window_edge(10)
    before = scrape(mock_server)
    ids = []
    with mock_server.http(key=key) as http:
        for _ in range(3):  # 0, 8 and 16 tokens used before each: budget left
            status, response_id = ask(http, entry)
            assert status == 200
            ids.append(response_id)
            time.sleep(SETTLE)
        status, _ = ask(http, entry)  # 24 used, 20 charged: none left
        assert status == 429

    stream = entry != "v1" and entry != "chat-invoke"
    assert all(i.startswith("chatcmpl-") and len(i) == 41 for i in ids) and len(set(ids)) == 3
    assert [row for row in usage_rows(mock_server) if row[0] in ids] == [(i, "mock", 5, 3, "ok", stream) for i in ids]
    after = scrape(mock_server)
    for direction, tokens in (("prompt", 5), ("completion", 3)):
        grown = value(after, "genai_tokens_total", model="mock", direction=direction) - value(
            before, "genai_tokens_total", model="mock", direction=direction
        )
        assert grown == 3 * tokens
    ttft = value(after, "genai_time_to_first_token_seconds_count", model="mock") - value(
        before, "genai_time_to_first_token_seconds_count", model="mock"
    )
    assert ttft == (3 if stream else 0)
    assert (
        value(after, "genai_rate_limited_total", limit="tokens")
        - value(before, "genai_rate_limited_total", limit="tokens")
        == 1
    )


def test_each_input_of_a_batch_counts_as_a_request(mock_server):
    batch = {"inputs": [LANGSERVE_INPUT] * 3}
    key = mock_server.create_key("tests", rpm=3)
    clear_of_window_edge(10)
    with mock_server.http(key=key) as http:
        response = http.post("/chat/batch", json=batch, headers={"X-Model": "mock"})
        assert response.status_code == 200, response.text
        assert [o["content"] for o in response.json()["output"]] == [REPLY] * 3
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert (
            http.post("/chat/invoke", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "mock"}).status_code == 429
        )

    # A batch larger than what is left is refused whole, before any input runs.
    key = mock_server.create_key("tests", rpm=3)
    clear_of_window_edge(10)
    before = len(usage_rows(mock_server))
    with mock_server.http(key=key) as http:
        response = http.post("/chat/batch", json={"inputs": [LANGSERVE_INPUT] * 4}, headers={"X-Model": "mock"})
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
        # The refused batch counted nothing: three single requests still pass.
        assert [ask(http, "chat-invoke")[0] for _ in range(3)] == [200, 200, 200]
    assert len(usage_rows(mock_server)) == before + 3


def test_langserve_response_ids_are_its_run_ids(mock_server):
    with mock_server.http() as http:
        response = http.post("/chat/invoke", json={"input": LANGSERVE_INPUT}, headers={"X-Model": "mock"})
        body = response.json()
        assert body["output"]["id"] == f"chatcmpl-{uuid.UUID(body['metadata']['run_id']).hex}"
        batch = http.post("/chat/batch", json={"inputs": [LANGSERVE_INPUT] * 2}, headers={"X-Model": "mock"}).json()
        assert [o["id"] for o in batch["output"]] == [
            f"chatcmpl-{uuid.UUID(r).hex}" for r in batch["metadata"]["run_ids"]
        ]


class RootRuns(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    async def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs) -> None:
        if parent_run_id is None:
            self.ids.append(run_id)


async def test_the_services_response_id_is_the_root_runs_id(make_settings, mock_upstream):
    from server.services import Services
    from storage.tenants import Caller

    services = Services.build(
        make_settings(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)])
    )
    await services.open()
    try:
        caller = Caller(key_id="key_x", key_prefix="sk-x", is_admin=False, app_id="app_x", app_name="x")
        roots = RootRuns()
        result = await services.chat.complete(
            ChatCall(caller=caller, messages=[HumanMessage(content="hi")]), {"callbacks": [roots]}
        )
        stream = await services.chat.stream(
            ChatCall(caller=caller, messages=[HumanMessage(content="hi")]), {"callbacks": [roots]}
        )
        assert "".join([part.text async for part in stream]) == REPLY
        assert [result.response_id, stream.result.response_id] == [f"chatcmpl-{run_id.hex}" for run_id in roots.ids]
    finally:
        await services.close()
