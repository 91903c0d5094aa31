"""The Chroma server stops under a live server and starts again (`chroma run` on its own port and data): a request
grounded in vector stores gets a 503 that names them, never an answer made without its context; the semantic cache
is skipped, the question answered by the model; /readyz is degraded (200) meanwhile; both work again once Chroma is
back, without a restart."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from memory.chroma import LocalChromaServer
from server.routes.health import DEGRADABLE
from tests.scripted_upstream import ScriptedUpstream, scripted_route, serve_scripted_upstream
from tests.test_knowledge_chat import QUESTION, make_store

pytestmark = pytest.mark.slow  # a Chroma server of its own, stopped and started


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


def test_a_chroma_outage_is_a_503_naming_the_stores_and_recovers(live_server, scripted, tmp_path):
    chroma = LocalChromaServer(tmp_path / "chroma", log_path=tmp_path / "chroma.log", startup_timeout=60)
    chroma.start()
    try:
        server = live_server(
            model_routes=[scripted_route("scripted", scripted)], chroma_url=chroma.url, cache_enabled=True
        )
        client = server.openai()
        store_id, _ = make_store(client)
        grounded = {"model": "scripted", "messages": [{"role": "user", "content": QUESTION}]}
        store = {"vector_store_ids": [store_id]}
        assert client.chat.completions.create(**grounded, extra_body=store).model_extra["citations"]

        chroma.stop()
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(**grounded, extra_body=store)
        assert refused.value.status_code == 503 and store_id in refused.value.message
        # Nothing to ground: the cache is skipped (Chroma holds its semantic tier), the model answers.
        plain = client.chat.completions.with_raw_response.create(
            model="scripted", messages=[{"role": "user", "content": "Hello there"}], temperature=0
        )
        assert plain.headers["x-cache"] == "miss"
        assert plain.parse().choices[0].message.content == "Scripted reply to: Hello there"
        with server.http() as http:  # still ready (a balancer keeps it), degraded, and /readyz says why
            ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["chroma"].endswith("(degraded: " + DEGRADABLE["chroma"] + ")")

        chroma.start()
        again = client.chat.completions.create(**grounded, extra_body=store)
        assert again.model_extra["citations"][0]["filename"] == "reactor.txt"
        with server.http() as http:
            assert http.get("/readyz").json() == {
                "status": "ok",
                "checks": {"database": "ok", "model:scripted": "ok", "chroma": "ok"},
            }
    finally:
        chroma.stop()
