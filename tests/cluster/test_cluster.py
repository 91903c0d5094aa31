"""The platform as a cluster (tests/cluster/cluster.py): nginx in front of three ``genai serve`` replicas on one
PostgreSQL database, one Redis, one Chroma server, and one ``genai worker``. Requests go either through nginx or
straight to a chosen replica, so that "another replica" is certain, not left to the balancer.

The model routes are the scripted upstream (deterministic answers, and a record of every request it got, so a cache
hit is a request it never saw) and the fake OpenAI fine-tuning server for the ``openai`` trainer."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.cluster.cluster import FAIL_TIMEOUT, Cluster, nginx_available, wait_until
from tests.conftest import clear_of_window_edge
from tests.fine_tuning_server import FineTuningServerURL, serve_fine_tuning_server
from tests.knowledge import wait_for_ingestion
from tests.scripted_upstream import ScriptedUpstream, fault_route, scripted_route, serve_scripted_upstream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not nginx_available(), reason="nginx is missing: scripts/ensure-services installs it"),
]

COLD = {"temperature": 0}


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def tuner() -> Iterator[FineTuningServerURL]:
    with serve_fine_tuning_server(steps=3, step_delay=0.05, checkpoint_every=3) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, scripted, tuner) -> Iterator[Cluster]:
    routes = [
        scripted_route("scripted", scripted),
        fault_route("slow", scripted, delay=0.2),  # a stream of a chunk every 0.2 s
        scripted_route("tuner", tuner).model_copy(update={"trainer": "openai"}),
    ]
    workdir: Path = tmp_path_factory.mktemp("cluster")
    with Cluster(workdir, routes=routes, replicas=3) as running:
        yield running


def client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def chat(base: str, key: str, content: str, **body) -> httpx.Response:
    with client(base, key) as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": "scripted", "messages": [{"role": "user", "content": content}], **COLD, **body},
        )


def test_a_conversation_continues_whichever_replica_answers(cluster, scripted):
    key = cluster.create_key("talkers")
    conversation = "new"
    said = []
    # Turn by turn on replica 1, 2, 3, then through the balancer.
    for n, base in enumerate([*(r.url for r in cluster.replicas), cluster.url, cluster.url], start=1):
        said.append(f"turn {n}: my favourite number is {n * 7}")
        response = chat(base, key, said[-1], conversation_id=conversation)
        assert response.status_code == 200, response.text
        conversation = response.json()["conversation_id"]
        # The model saw every turn before this one, whichever replica stored it.
        seen = [m["content"] for m in scripted.requests[-1]["messages"] if m["role"] == "user"]
        assert seen == said
    with client(cluster.replicas[1].url, key) as http:
        items = http.get(f"/v1/conversations/{conversation}").json()["messages"]
    assert [m["content"] for m in items if m["role"] == "user"] == said
    stored = cluster.sql("SELECT message_count FROM conversations WHERE id = $1", conversation)
    assert stored == [{"message_count": 2 * len(said)}]


def test_rate_limits_hold_across_replicas(cluster):
    key = cluster.create_key("limited", rpm=6)
    clear_of_window_edge(20)
    statuses = [chat(cluster.replicas[n % 3].url, key, f"limited question {n}").status_code for n in range(9)]
    assert Counter(statuses) == {200: 6, 429: 3}
    assert statuses[:6] == [200] * 6  # the budget is one, wherever a request lands


def test_a_file_uploaded_through_one_replica_is_searchable_through_another(cluster):
    key = cluster.create_key("readers")
    first, second, third = (
        openai.OpenAI(base_url=f"{r.url}/v1", api_key=key, max_retries=0, timeout=60) for r in cluster.replicas
    )
    text = b"Maintenance notes.\n\nThe Brightwater pump station was rebuilt in 1931 by the engineer Ida Pell.\n"
    uploaded = first.files.create(file=("pumps.txt", text), purpose="assistants")
    store = first.vector_stores.create(name="notes", file_ids=[uploaded.id])
    assert wait_for_ingestion(second, store.id, uploaded.id).status == "completed"
    found = third.vector_stores.search(store.id, query="Who rebuilt the Brightwater pump station?").data
    assert found and "Ida Pell" in found[0].content[0].text
    assert third.files.content(uploaded.id).read() == text  # the bytes, from the shared data directory
    other = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=cluster.create_key("strangers"), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.vector_stores.search(store.id, query="pump station")


def test_the_cache_hits_across_replicas_for_the_same_app_and_never_across_apps(cluster, scripted):
    one, two, three = cluster.replicas
    key, other_key = cluster.create_key("cached"), cluster.create_key("uncached")
    question = "What is the tallest tree species in the Elmrose valley?"
    asked = len(scripted.requests)
    first = chat(one.url, key, question)
    assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
    # A miss is stored in the background: the exact tier in Redis, the semantic tier in the Chroma server.
    wait_until(lambda: chat(two.url, key, question).headers["x-cache"] == "hit", 20, "an exact hit on replica 2")
    paraphrase = chat(three.url, key, "Which tree species is the tallest in the Elmrose valley?")
    assert paraphrase.headers["x-cache"] == "hit"
    assert paraphrase.json()["choices"][0]["message"]["content"] == f"Scripted reply to: {question}"
    assert len(scripted.requests) == asked + 1  # only the first question reached the model
    # Another app, on the replica whose cache served the first app twice: a miss, answered by the model.
    other = chat(two.url, other_key, question)
    assert (other.status_code, other.headers["x-cache"]) == (200, "miss")
    assert len(scripted.requests) == asked + 2


def test_a_job_queued_on_one_replica_runs_on_the_worker_and_its_model_is_served_by_all(cluster, tuner):
    key = cluster.create_key("tuners")
    clients = [openai.OpenAI(base_url=f"{r.url}/v1", api_key=key, max_retries=0, timeout=60) for r in cluster.replicas]
    rows = "".join(
        '{"messages": [{"role": "user", "content": "Q%d"}, {"role": "assistant", "content": "A%d"}]}\n' % (n, n)
        for n in range(10)
    ).encode()
    training = clients[0].files.create(file=("train.jsonl", rows), purpose="fine-tune")
    job = clients[0].fine_tuning.jobs.create(model="tuner", training_file=training.id, suffix="cluster")
    done = wait_until(
        lambda: (j := clients[1].fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        60,
        "the job finished",
    )
    assert done.status == "succeeded", done.error
    assert cluster.worker is not None and cluster.worker.poll() is None  # the worker ran it
    for each in clients:
        answer = each.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])
        assert answer.model == done.fine_tuned_model
        assert answer.choices[0].message.content.startswith("Answer from ft:tuner:")


class SteadyLoad:
    """Clients of the official openai SDK (its default retries: a connection that nginx closes as a reload ends its
    old workers is retried, as on any keep-alive connection) sending plain and streamed requests through the balancer
    until stopped; the outcome of each call (the response's status, or the exception's name)."""

    def __init__(self, cluster: Cluster, key: str, clients: int = 4) -> None:
        self.client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, timeout=60)
        self.outcomes: list[tuple[str, int | str]] = []
        self.started = time.time()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, n: int) -> None:
        turn = 0
        while not self._stop.is_set():
            turn += 1
            streamed = (n + turn) % 2 == 0
            messages = [{"role": "user", "content": f"client {n} turn {turn} one two three four"}]
            try:
                if streamed:  # a chunk every 0.2 s: streams run while their replica drains and stops
                    chunks = list(self.client.chat.completions.create(model="slow", messages=messages, stream=True))
                    finished = chunks[-1].choices[0].finish_reason
                    self.outcomes.append(("stream", 200 if finished == "stop" else f"finish_reason {finished}"))
                else:
                    answer = self.client.chat.completions.with_raw_response.create(model="scripted", messages=messages)
                    self.outcomes.append(("plain", answer.status_code))
            except openai.APIError as exc:
                self.outcomes.append(("stream" if streamed else "plain", f"{type(exc).__name__}: {exc}"))


def test_a_rolling_restart_under_load_fails_no_request(cluster):
    """Each replica in turn: SIGTERM (readiness turns false at once; it serves on through its drain, then refuses new
    handshakes, closes its port, and finishes what runs), then a new one on the same port. Meanwhile four clients
    never see an error, and nginx answered every chat request with a 200 (its access log: no 5xx hidden by a
    client's retry)."""
    key = cluster.create_key("rolling")
    with SteadyLoad(cluster, key) as load:
        time.sleep(2)
        for replica in cluster.replicas:
            old = replica.process
            cluster.signal_replica(replica, signal.SIGTERM)
            assert cluster.readiness(replica) == 503  # draining
            assert cluster.wait_exit(replica, timeout=60) == 0
            cluster.start_replica(replica)  # returns once its /readyz answers 200
            assert replica.process is not old
            time.sleep(FAIL_TIMEOUT + 1)  # nginx sends to it again (it refused while it was down)
    failures = [outcome for outcome in load.outcomes if outcome[1] != 200]
    assert len(load.outcomes) > 50 and not failures, (len(load.outcomes), failures[:10])
    chats = [e for e in cluster.access_log() if e["t"] >= load.started and e["uri"] == "/v1/chat/completions"]
    assert len(chats) >= len(load.outcomes) and Counter(e["status"] for e in chats) == {200: len(chats)}
    answered_by = Counter(address for entry in chats for address in entry["upstream"].split(", "))
    assert all(replica.address in answered_by for replica in cluster.replicas)
