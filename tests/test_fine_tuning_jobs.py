"""Fine-tuning jobs through the API and a real ``genai worker`` process, with the ``openai`` trainer against
tests/fine_tuning_server.py: every status, events and checkpoints, the tuned model as a route of its app only, cancel
(queued and running), one job per worker, a worker stopped (the job is queued again) or killed (the job fails), bad
requests, and the promote gate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from chains.model_routes import ModelRoute
from server.cli import main as genai
from tests.conftest import ADMIN_KEY, ROOT, LiveServer
from tests.fine_tuning_server import FineTuningServerURL, serve_fine_tuning_server
from tests.test_fine_tune_files import GOOD, example, jsonl

pytestmark = pytest.mark.slow  # worker processes

HEARTBEAT_TIMEOUT = 3.0
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def remote() -> Iterator[FineTuningServerURL]:
    with serve_fine_tuning_server(steps=4, step_delay=0.05, checkpoint_every=2) as base_url:
        yield base_url


@pytest.fixture
def routes(remote, mock_upstream) -> list[ModelRoute]:
    return [
        ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10),
        ModelRoute(name="tuner", base_url=remote, trainer="openai", max_retries=0, timeout=10),
        # A small context window: a file that fits the default route at upload does not fit this one.
        ModelRoute(name="tiny", base_url=remote, trainer="openai", max_retries=0, timeout=10, context_window=24),
    ]


@pytest.fixture
def platform(request, live_server, routes) -> LiveServer:
    """The API; its job queue on SQLite in the data dir, or on Redis when the test asks for ``"redis"``."""
    redis = {"redis_url": request.getfixturevalue("redis_url")} if getattr(request, "param", None) == "redis" else {}
    return live_server(model_routes=routes, worker_heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT, **redis)


@pytest.fixture
def start_worker(platform, routes, tmp_path) -> Iterator[Callable[[], subprocess.Popen]]:
    """``genai worker`` processes on the platform's database and data dir (stopped at the end)."""
    started: list[subprocess.Popen] = []
    settings = platform.settings
    env = {
        **os.environ,
        "GENAI_DATA_DIR": str(settings.data_dir),
        "GENAI_DATABASE_URL": settings.resolved_database_url,
        "GENAI_MODEL_ROUTES": json.dumps([route.model_dump(mode="json", exclude_none=True) for route in routes]),
        "GENAI_WORKER_POLL_SECONDS": "0.2",
        "GENAI_FINE_TUNING_POLL_SECONDS": "0.05",
        "GENAI_FINE_TUNING_CANCEL_GRACE_SECONDS": "2",
        "GENAI_WORKER_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
        **({"GENAI_REDIS_URL": settings.redis_url} if settings.redis_url else {}),
    }

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def upload(client: openai.OpenAI, data: bytes = GOOD) -> str:
    return client.files.create(file=("train.jsonl", data), purpose="fine-tune").id


def wait_for(client: openai.OpenAI, job_id: str, done: Callable, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job.status}"
        time.sleep(0.1)


def finished(job) -> bool:
    return job.status in FINISHED


def messages(client: openai.OpenAI, job_id: str) -> list[str]:
    """The job's event messages, oldest first."""
    return [event.message for event in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


@pytest.mark.parametrize("platform", ["sqlite", "redis"], indirect=True)
def test_a_job_makes_a_model_that_only_its_app_sees_and_uses(platform, start_worker, remote):
    client, other = platform.openai(), platform.openai(platform.create_key("other"))
    training = upload(client)
    job = client.fine_tuning.jobs.create(
        model="tuner",
        training_file=training,
        suffix="demo",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        metadata={"team": "search"},
    )
    assert (job.status, job.model, job.seed, job.user_provided_suffix) == ("queued", "tuner", 7, "demo")
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    start_worker()
    job = wait_for(client, job.id, finished)
    assert job.status == "succeeded", job.error
    tuned = f"ft:tuner:tests:demo:{job.id[-8:]}"
    assert job.fine_tuned_model == tuned and job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 2  # what ran, as the provider reports it
    remote_job = next(iter(remote.control.jobs.values()))
    assert (remote_job.model, remote_job.suffix, remote_job.seed) == ("tuner", "demo", 7)

    log = messages(client, job.id)
    assert log[:3] == [
        f"Validating training file: {training}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert log[-2:] == [f"New fine-tuned model created: {tuned}", "The job has successfully completed"]
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == [1, 2, 3, 4]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [4, 2] and all(c.fine_tuning_job_id == job.id for c in checkpoints)

    # The model is a route of this app: listed, retrievable, answering (the provider's tuned model upstream).
    assert tuned in [m.id for m in client.models.list()]
    assert client.models.retrieve(tuned).owned_by == "tests"
    answer = client.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "Hi"}])
    assert answer.model == tuned
    assert answer.choices[0].message.content == f"Answer from {remote_job.fine_tuned_model}."
    # Another app sees none of it.
    assert tuned not in [m.id for m in other.models.list()]
    for call in (
        lambda: other.models.retrieve(tuned),
        lambda: other.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "Hi"}]),
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        lambda: other.fine_tuning.jobs.list_events(job.id),
        lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: other.fine_tuning.jobs.cancel(job.id),
        lambda: other.models.delete(tuned),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(other.fine_tuning.jobs.list()) == []
    assert [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata[team]": "search"})] == [job.id]
    assert list(client.fine_tuning.jobs.list(extra_query={"metadata[team]": "ads"})) == []

    # Deleting it removes the route at once.
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("mock")  # a configured route is not deletable
    assert client.models.delete(tuned).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "Hi"}])
    assert tuned not in [m.id for m in client.models.list()]


def test_bad_requests_are_refused_by_name(platform, remote):
    client, http = platform.openai(), platform.http()
    training = upload(client)

    def refused(status: int, param: str | None, **body) -> str:
        response = http.post("/v1/fine_tuning/jobs", json={"model": "tuner", "training_file": training, **body})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param, error
        return error["message"]

    assert "no trainer" in refused(400, "model", model="mock") and "tuner" in refused(400, "model", model="mock")
    refused(404, "model", model="nope")
    refused(400, "model", model="ft:tuner:tests::abc")
    refused(404, "training_file", training_file="file-nope")
    refused(400, "foo", foo=1)
    refused(400, "method.type", method={"type": "dpo"})
    refused(400, "integrations", integrations=[{"type": "wandb"}])
    refused(400, "suffix", suffix="no spaces!")
    refused(400, "hyperparameters.n_epochs", hyperparameters={"n_epochs": 0})
    assets = client.files.create(file=("notes.txt", b"plain text"), purpose="assistants").id
    assert "purpose 'fine-tune'" in refused(400, "training_file", training_file=assets)
    others = upload(platform.openai(platform.create_key("other")))
    refused(404, "training_file", training_file=others)  # another app's file is not there
    refused(404, "validation_file", validation_file=others)
    # No job was made by any of them.
    assert list(client.fine_tuning.jobs.list()) == []

    # A file that fits the default route at upload but not this route's context window: the job fails validating.
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training)
    assert job.status == "failed" and job.error.param == "training_file" and job.error.code == "invalid_file"
    assert "line 1" in job.error.message and "context window" in job.error.message
    assert messages(client, job.id)[-1].startswith("The job failed: training_file")
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.cancel(job.id)
    assert raised.value.body["code"] == "job_not_cancellable"

    # The older name answers too, and lists page.
    legacy = http.post("/v1/fine-tunes", json={"model": "tuner", "training_file": training})
    assert legacy.status_code == 200 and legacy.json()["status"] == "queued"
    first = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == [legacy.json()["id"]] and first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=first.data[0].id).data] == [job.id]
    assert http.get("/v1/fine_tuning/jobs", params={"order": "asc"}).status_code == 400


def test_cancel_a_queued_and_a_running_job(platform, start_worker, remote):
    client = platform.openai()
    training = upload(client)
    queued = client.fine_tuning.jobs.create(model="tuner", training_file=training)
    cancelled = client.fine_tuning.jobs.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    remote.control.steps, remote.control.step_delay = 1000, 0.1
    running = client.fine_tuning.jobs.create(model="tuner", training_file=training)
    start_worker()
    wait_for(client, running.id, lambda job: job.status == "running" and remote.control.jobs)
    time.sleep(0.5)
    asked = time.monotonic()
    assert client.fine_tuning.jobs.cancel(running.id).status == "cancelled"
    (remote_job,) = remote.control.jobs.values()  # the queued job never reached the provider
    while remote_job.status != "cancelled":  # the provider's job is cancelled too, within seconds
        assert time.monotonic() - asked < 5, remote_job.status
        time.sleep(0.05)
    time.sleep(1)
    job = client.fine_tuning.jobs.retrieve(running.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert "Fine-tuning job started" not in messages(client, queued.id)
    log = messages(client, running.id)
    assert "The job was cancelled" in log and log[-1] == f"Cancelled the provider's job {remote_job.id}", log
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(running.id)


def test_one_job_per_worker_and_a_stopped_worker_queues_its_job_again(platform, start_worker, remote):
    client = platform.openai()
    training = upload(client)
    remote.control.steps, remote.control.step_delay = 40, 0.1
    first = client.fine_tuning.jobs.create(model="tuner", training_file=training)
    second = client.fine_tuning.jobs.create(model="tuner", training_file=training)
    worker = start_worker()
    wait_for(client, first.id, lambda job: job.status == "running")
    time.sleep(1)
    assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"  # one at a time
    worker.send_signal(signal.SIGTERM)  # a graceful stop (genai serve restarting, a deploy)
    assert worker.wait(timeout=20) == 0
    assert client.fine_tuning.jobs.retrieve(first.id).status == "queued"
    assert "The worker stopped during training" in messages(client, first.id)[-1]
    start_worker()
    for job_id in (first.id, second.id):
        assert wait_for(client, job_id, finished, timeout=90).status == "succeeded"


def test_a_failed_training_fails_the_job_with_the_reason(platform, start_worker, remote):
    client = platform.openai()
    remote.control.fail_next, remote.control.fail_code = "The training file has too few examples.", "invalid_n_examples"
    job = client.fine_tuning.jobs.create(model="tuner", training_file=upload(client))
    start_worker()
    job = wait_for(client, job.id, finished)
    assert (job.status, job.error.code, job.fine_tuned_model) == ("failed", "invalid_n_examples", None)
    assert job.error.message == "The training file has too few examples."
    assert messages(client, job.id)[-1] == "The job failed: The training file has too few examples."
    assert [m.id for m in client.models.list() if m.id.startswith("ft:")] == []


def test_a_killed_worker_fails_its_job(platform, start_worker, remote):
    client = platform.openai()
    remote.control.steps, remote.control.step_delay = 1000, 0.1
    job = client.fine_tuning.jobs.create(model="tuner", training_file=upload(client))
    worker = start_worker()
    wait_for(client, job.id, lambda job: job.status == "running" and remote.control.jobs)
    worker.kill()
    worker.wait()
    failed = wait_for(client, job.id, finished, timeout=HEARTBEAT_TIMEOUT + 10)
    assert failed.status == "failed" and failed.error.code == "worker_lost"
    assert "Create the job again" in failed.error.message


def test_promote_only_through_the_gate(platform, start_worker, tmp_path, monkeypatch, capsys):
    client = platform.openai()
    job = client.fine_tuning.jobs.create(model="tuner", training_file=upload(client), suffix="gate")
    start_worker()
    tuned = wait_for(client, job.id, finished).fine_tuned_model
    runs = {
        name: write_run(tmp_path / name, model, rate)
        for name, model, rate in (("base", "tuner", 0.5), ("worse", tuned, 0.4), ("better", tuned, 0.9))
    }
    settings = platform.settings
    monkeypatch.setenv("GENAI_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("GENAI_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("GENAI_MODEL_ROUTES", json.dumps([{"name": "tuner", "base_url": "http://127.0.0.1:9/v1"}]))

    def promote(*args: str) -> int:
        return genai(["models", "promote", tuned, "--app", "tests", *args])

    def default_model() -> str | None:
        with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
            return admin.get("/admin/apps/tests").json()["default_model"]

    assert promote("--run", str(runs["worse"]), "--gate", "contains>=0.6") == 1
    assert "gate contains>=0.6 failed: contains = 0.4" in capsys.readouterr().out
    assert promote("--run", str(runs["worse"]), "--gate", "contains>=0.3", "--baseline", str(runs["base"])) == 1
    assert "worse than the baseline's 0.5" in capsys.readouterr().out
    assert promote("--run", str(runs["base"]), "--gate", "contains>=0.3") == 2  # a run of another model
    assert promote("--run", str(runs["better"]), "--gate", "nonsense>=1") == 2
    assert default_model() is None
    assert promote("--run", str(runs["better"]), "--gate", "contains>=0.6", "--baseline", str(runs["base"])) == 0
    assert default_model() == tuned
    platform.services.auth.forget()  # the API caches a key's app for a few seconds
    with platform.http() as http:  # a request that names no model (LangServe's /chat) gets the app's default
        reply = http.post("/chat/invoke", json={"input": {"messages": [{"type": "human", "content": "Hi"}]}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["output"]["response_metadata"]["model_name"] == tuned
    assert client.models.delete(tuned).deleted  # deleting the model gives the app back the platform's default
    assert default_model() is None


def write_run(directory: Path, model: str, contains: float) -> Path:
    """An evaluation run's files as `genai eval run` writes them (only what the gate reads)."""
    directory.mkdir()
    summary = {
        "count": 10, "errors": 0, "error_rate": 0.0,
        "evaluators": {"contains": {"pass_rate": contains, "mean_score": contains}},
        "config": {"model": model, "dataset_sha256": "abc", "split": "heldout", "tags": []},
    }  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "results.jsonl").write_text("")
    return directory


def test_feedback_becomes_a_fine_tuning_file():
    from server.cli import fine_tuning_example

    asked = [{"role": "user", "content": "Capital of France?"}]
    rated = {"messages": asked, "reference": None, "metadata": {"score": 1, "answer": "Paris."}}
    corrected = {"messages": asked, "reference": "Paris.", "metadata": {"score": -1, "answer": "Lyon."}}
    low = {"messages": asked, "reference": None, "metadata": {"score": 0.2, "answer": "Lyon."}}
    expected = {"messages": [*asked, {"role": "assistant", "content": "Paris."}]}
    assert fine_tuning_example(rated) == expected and fine_tuning_example(corrected) == expected
    assert fine_tuning_example(low) is None
    # The lines are a valid fine-tuning file.
    from chains.fine_tuning.dataset import validate_jsonl

    assert validate_jsonl(jsonl(expected, example())).examples == 2
