"""The ``openai`` trainer against tests/fine_tuning_server.py: a job followed to its end (events relayed once and in
order, checkpoints, the result), the provider's failure, a cancel, a wrong key, a provider that is down or flaky."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from chains.fine_tuning.base import Hyperparameters, TrainingCancelled, TrainingError, TrainingResult, TrainingSpec
from chains.fine_tuning.openai_trainer import OpenAITrainer
from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from tests.fine_tuning_server import FineTuningServerURL, serve_fine_tuning_server
from tests.test_fine_tune_files import GOOD, example, jsonl

BASE = "gpt-4o-mini-2024-07-18"
OWN = (
    "Created the provider's job",
    "Cancelled the provider's job",
    "Polling the provider's job failed",
)  # the trainer's own events


class Recorder:
    """A Progress that keeps what it is told; ``cancel`` cancels the job, ``on_event`` sees every event."""

    def __init__(self, on_event=None) -> None:
        self.events: list[tuple[str, str, dict | None]] = []
        self.checkpoints: list[tuple[int, dict, str | None]] = []
        self.cancel = threading.Event()
        self.on_event = on_event

    def event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        self.events.append((message, level, data))
        if self.on_event:
            self.on_event(message)

    def checkpoint(self, step: int, metrics: dict, upstream_model: str | None = None) -> None:
        self.checkpoints.append((step, metrics, upstream_model))

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def remote(self) -> list[tuple[str, str, dict | None]]:
        return [event for event in self.events if not event[0].startswith(OWN)]


@pytest.fixture
def provider() -> Iterator[FineTuningServerURL]:
    with serve_fine_tuning_server(steps=4, step_delay=0.02, checkpoint_every=2, models=[BASE]) as base_url:
        yield base_url


def make_spec(
    tmp_path: Path,
    base_url: str,
    *,
    api_key: str = "sk-test",
    hyperparameters: Hyperparameters = Hyperparameters(),
    validation: bool = False,
    suffix: str | None = "support",
) -> TrainingSpec:
    training = tmp_path / "train.jsonl"
    training.write_bytes(GOOD)
    validation_file = None
    if validation:
        validation_file = tmp_path / "valid.jsonl"
        validation_file.write_bytes(jsonl(example("Madrid.", "And of Spain?")))
    route = ModelRoute(name="base", base_url=base_url, model=BASE, api_key=api_key, max_retries=0, timeout=10)
    return TrainingSpec(
        job_id="ftjob-platform1",
        model_id=f"ft:base:tests:{suffix}:platform1",
        base_route=route,
        training_file=training,
        validation_file=validation_file,
        hyperparameters=hyperparameters,
        seed=7,
        suffix=suffix,
        output_dir=tmp_path,
    )


def created_job(base_url: FineTuningServerURL) -> dict:
    (body,) = [
        body for method, path, body in base_url.control.requests if (method, path) == ("POST", "/v1/fine_tuning/jobs")
    ]
    return body


def test_a_job_is_followed_to_its_end(provider, tmp_path):
    progress = Recorder()
    spec = make_spec(tmp_path, provider, hyperparameters=Hyperparameters(n_epochs=2), validation=True)
    result = OpenAITrainer(poll_interval=0.03).train(spec, progress)

    (job,) = provider.control.jobs.values()
    short = job.id.removeprefix("ftjob-")
    assert isinstance(result, TrainingResult)
    assert result.upstream_model == f"ft:{BASE}:test-org:support:{short}" == job.fine_tuned_model
    assert result.trained_tokens == job.tokens * 2 > 0
    assert result.hyperparameters == Hyperparameters(n_epochs=2, batch_size=1, learning_rate_multiplier=1.8)
    assert result.adapter_path is None
    assert set(result.metrics) == {"train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"}

    # What was sent: the files (purpose fine-tune), the supervised method with only the hyperparameters set.
    body = created_job(provider)
    assert body == {
        "model": BASE,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        "suffix": "support",
        "seed": 7,
    }
    uploads = [body for method, path, body in provider.control.requests if (method, path) == ("POST", "/v1/files")]
    assert [upload["purpose"] for upload in uploads] == ["fine-tune", "fine-tune"]
    assert not provider.control.files  # deleted once the job ended

    # Every remote event once, oldest first, metrics in data; then the checkpoints.
    assert [(e["message"], e["level"]) for e in job.events] == [(m, level) for m, level, _ in progress.remote()]
    metrics = [data for _, _, data in progress.remote() if data]
    assert [data["step"] for data in metrics] == [1, 2, 3, 4]
    assert metrics[0] == job.events[3]["data"] and "valid_loss" in metrics[0]
    assert (
        progress.events[0][0]
        == f"Created the provider's job {job.id} on {provider.removeprefix('http://').removesuffix('/v1')} (model {BASE})"
    )
    assert [(step, model) for step, _, model in progress.checkpoints] == [
        (2, f"{result.upstream_model}:ckpt-step-2"),
        (4, f"{result.upstream_model}:ckpt-step-4"),
    ]
    assert progress.checkpoints[1][1]["train_loss"] == metrics[-1]["train_loss"]

    # The tuned model answers on the provider, plain and streamed.
    client = openai.OpenAI(base_url=provider, api_key="sk-test", max_retries=0)
    answer = client.chat.completions.create(model=result.upstream_model, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == f"Answer from {result.upstream_model}."
    stream = client.chat.completions.create(
        model=result.upstream_model, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == f"Answer from {result.upstream_model}."
    assert result.upstream_model in [model.id for model in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"ft:{BASE}:test-org::nope", messages=[{"role": "user", "content": "Hi"}])


def test_auto_hyperparameters_are_reported_as_used(provider, tmp_path):
    result = OpenAITrainer(poll_interval=0.02).train(make_spec(tmp_path, provider, suffix=None), Recorder())
    body = created_job(provider)
    assert body["method"] == {"type": "supervised"} and "suffix" not in body and "validation_file" not in body
    assert "hyperparameters" not in body  # the deprecated field is never sent
    assert result.hyperparameters == Hyperparameters(n_epochs=3, batch_size=1, learning_rate_multiplier=1.8)
    assert result.upstream_model.startswith(f"ft:{BASE}:test-org::")


def test_the_providers_failure_is_the_error(provider, tmp_path):
    provider.control.fail_next = "The job failed: the training file has too few examples (on purpose)."
    provider.control.fail_code = "invalid_training_file"
    progress = Recorder()
    with pytest.raises(TrainingError) as raised:
        OpenAITrainer(poll_interval=0.02).train(make_spec(tmp_path, provider), progress)
    assert raised.value.message == "The job failed: the training file has too few examples (on purpose)."
    assert raised.value.code == "invalid_training_file"
    assert progress.remote()[-1][:2] == (raised.value.message, "error")
    assert [data["step"] for _, _, data in progress.remote() if data] == [1]
    assert not provider.control.files

    provider.control.fail_next, provider.control.fail_at_step = "Bad file (on purpose).", 0
    with pytest.raises(TrainingError, match=r"^Bad file \(on purpose\)\.$"):
        OpenAITrainer(poll_interval=0.02).train(make_spec(tmp_path, provider), Recorder())


def test_a_cancel_stops_the_providers_job(tmp_path):
    poll = 0.5
    with serve_fine_tuning_server(steps=10_000, step_delay=0.05) as provider:
        progress = Recorder()
        outcome: list[BaseException | TrainingResult] = []

        def train() -> None:
            try:
                outcome.append(OpenAITrainer(poll_interval=poll).train(make_spec(tmp_path, provider), progress))
            except BaseException as error:  # noqa: BLE001 - kept for the test's thread
                outcome.append(error)

        thread = threading.Thread(target=train)
        thread.start()
        deadline = time.monotonic() + 10
        while not any(data for _, _, data in progress.events):  # training steps are being reported
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        progress.cancel.set()
        cancelled_at = time.monotonic()
        thread.join(timeout=10)
        took = time.monotonic() - cancelled_at
        assert isinstance(outcome[0], TrainingCancelled), outcome
        assert took < 2 * poll, took
        (job,) = provider.control.jobs.values()
        assert job.status == "cancelled" and job.events[-1]["message"] == "Fine-tuning job cancelled"
        assert progress.events[-1][0] == f"Cancelled the provider's job {job.id}"
        assert not provider.control.files

        # Cancelled before anything was sent: nothing is.
        progress = Recorder()
        progress.cancel.set()
        with pytest.raises(TrainingCancelled):
            OpenAITrainer(poll_interval=poll).train(make_spec(tmp_path, provider), progress)
        assert len(provider.control.jobs) == 1


def test_a_job_cancelled_on_the_provider_is_an_error(tmp_path):
    with serve_fine_tuning_server(steps=10_000, step_delay=0.05) as provider:

        def cancel_remotely(message: str) -> None:
            if message.startswith("Created the provider's job"):
                job_id = message.split()[4]
                httpx.post(f"{provider}/fine_tuning/jobs/{job_id}/cancel").raise_for_status()

        with pytest.raises(TrainingError) as raised:
            OpenAITrainer(poll_interval=0.02).train(make_spec(tmp_path, provider), Recorder(cancel_remotely))
        assert raised.value.code == "provider_cancelled"
        assert "ended 'cancelled' outside the platform" in raised.value.message


def test_a_wrong_api_key(provider, tmp_path):
    provider.control.api_key = "sk-right"
    with pytest.raises(TrainingError) as raised:
        OpenAITrainer(poll_interval=0.02).train(make_spec(tmp_path, provider, api_key="sk-wrong"), Recorder())
    assert raised.value.code == "provider_auth_failed"
    assert raised.value.message == (
        f"Could not upload the training file: the provider at {provider} refused the API key of route `base` "
        "(401: Incorrect API key provided: sk-wro***.). Set the route's api_key or api_key_env to a key that may "
        "fine-tune there."
    )
    assert not provider.control.files and not provider.control.jobs
    # The right key, from the route's environment variable, works.
    route = make_spec(tmp_path, provider).base_route.model_copy(update={"api_key": None, "api_key_env": "FT_TEST_KEY"})
    spec = make_spec(tmp_path, provider)
    spec = TrainingSpec(**{**vars(spec), "base_route": route})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FT_TEST_KEY", "sk-right")
        assert OpenAITrainer(poll_interval=0.02).train(spec, Recorder()).upstream_model.startswith("ft:")


def test_a_provider_that_is_down(tmp_path):
    down = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(TrainingError) as raised:
        OpenAITrainer(poll_interval=0.02, max_retries=0).train(make_spec(tmp_path, down), Recorder())
    assert time.monotonic() - started < 5
    assert raised.value.code == "provider_unreachable"
    assert raised.value.message.startswith(
        f"Could not upload the training file: the provider at {down} cannot be reached (ConnectError: "
    )
    assert raised.value.message.endswith("Is it up, and is the base_url of route `base` right?")


def test_polling_rides_out_a_few_failures(provider, tmp_path):
    def flaky(message: str) -> None:
        if message.startswith("Created the provider's job"):
            provider.control.unavailable = 3

    progress = Recorder(flaky)
    result = OpenAITrainer(poll_interval=0.02, max_poll_failures=4).train(make_spec(tmp_path, provider), progress)
    assert result.upstream_model.startswith("ft:")
    retries = [(message, level) for message, level, _ in progress.events if message.startswith("Polling the")]
    assert retries == [
        (
            f"Polling the provider's job failed (503: The server is overloaded (on purpose).); trying again ({n}/3)",
            "warn",
        )
        for n in (1, 2, 3)
    ]
    (job,) = provider.control.jobs.values()
    assert [m for m, _, _ in progress.remote()] == [event["message"] for event in job.events]  # still each once

    # Failing for longer than that ends the training (and the provider's job is cancelled, when it can be).
    def broken(message: str) -> None:
        if message.startswith("Created the provider's job"):
            provider.control.unavailable = 4

    with pytest.raises(TrainingError) as raised:
        OpenAITrainer(poll_interval=0.02, max_poll_failures=4).train(make_spec(tmp_path, provider), Recorder(broken))
    assert raised.value.code == "provider_error"
    assert raised.value.message.startswith("Could not follow the job ftjob-")
    assert raised.value.message.endswith("failed (503: The server is overloaded (on purpose).).")
    assert list(provider.control.jobs.values())[-1].status == "cancelled"


def test_a_missing_training_file(provider, tmp_path):
    spec = make_spec(tmp_path, provider)
    spec.training_file.unlink()
    with pytest.raises(TrainingError) as raised:
        OpenAITrainer(poll_interval=0.02).train(spec, Recorder())
    assert raised.value.param == "training_file" and raised.value.message.startswith(
        "Could not read the training file:"
    )
    assert not provider.control.requests
