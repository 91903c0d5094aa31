"""The ``openai`` trainer: fine-tuning on the route's own provider (OpenAI, or a server with its fine-tuning API).

It uploads the job's files there (purpose ``fine-tune``), creates a supervised job on the route's upstream model with
the hyperparameters that are set (the others are the provider's "auto"), and polls it: each of the provider's events
is relayed once, oldest first, through ``progress.event`` (metrics in ``data``), each new checkpoint through
``progress.checkpoint``. A cancel of the platform's job cancels the provider's. The uploaded files are deleted from
the provider once its job has ended.

Errors are ``TrainingError`` with a message that says what to change: the provider's own message when its job
fails (``code`` and ``param`` as it gives them), ``provider_auth_failed`` when it refuses the route's key,
``provider_unreachable`` when it cannot be reached, ``provider_error`` when it refuses a request or keeps failing.
Polling rides out a few failures in a row (connection errors, 429, 5xx) before giving up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import openai

from chains.fine_tuning.base import (
    Hyperparameters,
    Progress,
    TrainerName,
    TrainingCancelled,
    TrainingError,
    TrainingResult,
    TrainingSpec,
)
from chains.model_routes import ModelRoute

log = logging.getLogger(__name__)
T = TypeVar("T")

FINAL = ("succeeded", "failed", "cancelled")  # any other status (queued, running, paused, ...): keep polling
PAGE = 100  # events or checkpoints per request
TRANSIENT = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
LEVELS = {"info": "info", "warn": "warn", "warning": "warn", "error": "error"}


def provider_client(route: ModelRoute, *, max_retries: int, timeout: float | None = None) -> openai.OpenAI:
    """The official client of the provider that serves ``route`` (its first deployment): its URL and key, and the
    route's timeouts unless ``timeout`` is given."""
    deployment = route.deployment_list[0]
    return openai.OpenAI(
        base_url=deployment.base_url,
        api_key=deployment.resolve_api_key(),
        max_retries=max_retries,
        timeout=httpx.Timeout(timeout or route.timeout, connect=route.connect_timeout),
    )


def delete_provider_model(route: ModelRoute, model: str) -> None:
    """Delete a tuned model from the provider that made it (OpenAI keeps one until it is deleted there)."""
    provider_client(route, max_retries=2, timeout=10).models.delete(model)


class OpenAITrainer:
    name: TrainerName = "openai"

    def __init__(self, poll_interval: float = 5.0, *, max_poll_failures: int = 5, max_retries: int = 2) -> None:
        """``poll_interval`` seconds between looks at the provider's job; ``max_poll_failures`` failed looks in a row
        end the training; ``max_retries`` are the SDK's own retries of uploads, creation and cancel."""
        self.poll_interval = poll_interval
        self.max_poll_failures = max_poll_failures
        self.max_retries = max_retries

    def train(self, spec: TrainingSpec, progress: Progress) -> TrainingResult:
        run = _Run(self, spec, progress)
        try:
            return run.train()
        finally:
            run.close()


class _Run:
    """One training: the client, the provider's ids, and what was relayed already."""

    def __init__(self, trainer: OpenAITrainer, spec: TrainingSpec, progress: Progress) -> None:
        self.trainer = trainer
        self.spec = spec
        self.progress = progress
        route = spec.base_route
        deployment = route.deployment_list[0]
        self.base_url = deployment.base_url
        self.host = urlsplit(self.base_url).netloc or self.base_url
        self.model = deployment.model or route.upstream_model
        self.client = provider_client(route, max_retries=trainer.max_retries)
        self.poller = self.client.with_options(max_retries=0)
        self.uploaded: list[str] = []
        self.job_id: str | None = None
        self.ended = False  # nothing more to do about the provider's job: it reached a final state, or was cancelled
        self.seen_events: set[str] = set()
        self.seen_checkpoints: set[str] = set()
        self.has_checkpoints = True
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ the steps

    def train(self) -> TrainingResult:
        spec = self.spec
        self.stop_if_cancelled()
        training_file = self.upload(spec.training_file, "training_file")
        validation_file = self.upload(spec.validation_file, "validation_file") if spec.validation_file else None
        self.stop_if_cancelled()
        job = self.call(
            "create the fine-tuning job",
            lambda: self.client.fine_tuning.jobs.create(
                model=self.model,
                training_file=training_file,
                validation_file=validation_file or openai.NOT_GIVEN,
                method=self.method(),
                suffix=spec.suffix if spec.suffix is not None else openai.NOT_GIVEN,
                seed=spec.seed,
            ),
        )
        self.job_id = job.id
        self.progress.event(f"Created the provider's job {job.id} on {self.host} (model {self.model})")
        failures = 0
        while True:
            self.stop_if_cancelled()
            try:
                job = self.poller.fine_tuning.jobs.retrieve(job.id)
                self.relay_events()
                self.relay_checkpoints()
            except TRANSIENT as error:
                failures += 1
                if failures >= self.trainer.max_poll_failures:
                    raise self.failure(error, f"follow the job {job.id}") from None
                self.progress.event(
                    f"Polling the provider's job failed ({_describe(error)}); trying again "
                    f"({failures}/{self.trainer.max_poll_failures - 1})",
                    level="warn",
                )
            except openai.OpenAIError as error:
                raise self.failure(error, f"follow the job {job.id}") from None
            else:
                failures = 0
                if job.status in FINAL:
                    self.ended = True
                    return self.result(job)
            self.wait(self.trainer.poll_interval)

    def upload(self, path: Path, param: str) -> str:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise TrainingError(f"Could not read the {param.replace('_', ' ')}: {error}", param=param) from None
        name = f"{self.spec.job_id}-{path.name}"
        file = self.call(
            f"upload the {param.replace('_', ' ')}",
            lambda: self.client.files.create(file=(name, data), purpose="fine-tune"),
            param=param,
        )
        self.uploaded.append(file.id)
        return file.id

    def method(self) -> dict[str, Any]:
        hyperparameters = {name: value for name, value in vars(self.spec.hyperparameters).items() if value is not None}
        if not hyperparameters:
            return {"type": "supervised"}
        return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}

    def relay_events(self) -> None:
        fresh = []
        for event in self.poller.fine_tuning.jobs.list_events(self.job_id, limit=PAGE):  # newest first, paged
            if event.id in self.seen_events:
                break
            fresh.append(event)
        for event in reversed(fresh):
            self.seen_events.add(event.id)
            data = dict(event.data or {}) if isinstance(event.data, dict) else {}
            if event.type == "metrics":  # OpenAI's metrics: step, total_steps, train_loss, ... (as they are)
                self.metrics = {key: value for key, value in data.items() if key not in ("step", "total_steps")}
            self.progress.event(event.message, level=LEVELS.get(event.level, "info"), data=data or None)

    def relay_checkpoints(self) -> None:
        if not self.has_checkpoints:
            return
        fresh = []
        try:
            for checkpoint in self.poller.fine_tuning.jobs.checkpoints.list(self.job_id, limit=PAGE):  # newest first
                if checkpoint.id in self.seen_checkpoints:
                    break
                fresh.append(checkpoint)
        except openai.NotFoundError:  # a compatible server without OpenAI's checkpoints: none are listed
            self.has_checkpoints = False
            return
        for checkpoint in sorted(fresh, key=lambda c: c.step_number):
            self.seen_checkpoints.add(checkpoint.id)
            metrics = checkpoint.metrics.model_dump(exclude_none=True) if checkpoint.metrics else {}
            self.progress.checkpoint(checkpoint.step_number, metrics, checkpoint.fine_tuned_model_checkpoint)

    def result(self, job: Any) -> TrainingResult:
        if job.status == "succeeded":
            if not job.fine_tuned_model:
                raise TrainingError(
                    f"The provider's job {job.id} succeeded without naming its fine-tuned model.", code="provider_error"
                )
            return TrainingResult(
                upstream_model=job.fine_tuned_model,
                hyperparameters=_used_hyperparameters(job, self.spec.hyperparameters),
                trained_tokens=job.trained_tokens or 0,
                metrics=self.metrics,
            )
        if job.status == "failed":
            error = job.error
            message = (error.message if error else None) or f"The provider's job {job.id} failed without saying why."
            raise TrainingError(message, code=(error.code if error else None) or "training_failed",
                                param=error.param if error else None)  # fmt: skip
        raise TrainingError(
            f"The provider's job {job.id} ended '{job.status}' outside the platform (cancelled on {self.host}?).",
            code="provider_cancelled" if job.status == "cancelled" else "provider_error",
        )

    # ------------------------------------------------------------------------------------------------ cancel, end

    def stop_if_cancelled(self) -> None:
        if not self.progress.cancelled():
            return
        if self.job_id is not None and not self.ended:
            self.cancel(self.client)
        raise TrainingCancelled()

    def cancel(self, client: openai.OpenAI) -> None:
        self.ended = True
        try:
            client.fine_tuning.jobs.cancel(self.job_id)
        except openai.OpenAIError as error:
            self.progress.event(
                f"Could not cancel the provider's job {self.job_id} ({_describe(error)}): cancel it on {self.host}",
                level="warn",
            )
        else:
            self.progress.event(f"Cancelled the provider's job {self.job_id}")

    def wait(self, seconds: float) -> None:
        """Sleep, looking at ``progress.cancelled()`` every 0.1 s."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.progress.cancelled():
                return
            time.sleep(min(left, 0.1))

    def close(self) -> None:
        """The provider's job is left running only when the platform cannot reach it; the uploaded files go."""
        if self.job_id is not None and not self.ended:
            # An unexpected end (the provider unreachable, a bug): do not leave a paid job running unwatched.
            self.cancel(self.poller)
        for file_id in self.uploaded:
            try:
                self.poller.files.delete(file_id)
            except openai.OpenAIError:
                log.warning("could not delete the uploaded file %s on %s", file_id, self.host)
        self.client.close()

    # ------------------------------------------------------------------------------------------------ errors

    def call(self, what: str, request: Callable[[], T], *, param: str | None = None) -> T:
        try:
            return request()
        except openai.OpenAIError as error:
            raise self.failure(error, what, param=param) from None

    def failure(self, error: Exception, what: str, *, param: str | None = None) -> TrainingError:
        where = f"the provider at {self.base_url}"
        route = self.spec.base_route.name
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return TrainingError(
                f"Could not {what}: {where} refused the API key of route `{route}` ({_describe(error)}). Set the "
                "route's api_key or api_key_env to a key that may fine-tune there.",
                code="provider_auth_failed",
            )
        if isinstance(error, openai.APIConnectionError):
            return TrainingError(
                f"Could not {what}: {where} cannot be reached ({_describe(error)}). Is it up, and is the base_url "
                f"of route `{route}` right?",
                code="provider_unreachable",
            )
        if isinstance(error, openai.APIStatusError) and error.status_code < 500 and error.status_code != 429:
            body = error.body if isinstance(error.body, dict) else {}
            return TrainingError(
                f"Could not {what}: {where} refused it ({_describe(error)}).",
                code=str(body.get("code") or "provider_error"),
                param=param or body.get("param"),
            )
        return TrainingError(f"Could not {what}: {where} failed ({_describe(error)}).", code="provider_error")


def _describe(error: Exception) -> str:
    """The provider's own message and status, or what went wrong on the way."""
    if isinstance(error, openai.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        message = body.get("message") or error.response.reason_phrase
        return f"{error.status_code}: {message}"
    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__
        return f"{type(cause).__name__}: {cause}" if cause else str(error)
    return str(error)


def _used_hyperparameters(job: Any, asked: Hyperparameters) -> Hyperparameters:
    """What the provider's job reports it used (its method's, or the older top-level field); ``asked`` where it
    reports "auto"."""
    reported = None
    method = getattr(job, "method", None)
    if method is not None and getattr(method, "supervised", None) is not None:
        reported = method.supervised.hyperparameters
    if reported is None:
        reported = getattr(job, "hyperparameters", None)

    def value(name: str, kind: type) -> Any:
        given = getattr(reported, name, None) if reported is not None else None
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            return kind(given)
        return getattr(asked, name)

    return Hyperparameters(
        n_epochs=value("n_epochs", int),
        batch_size=value("batch_size", int),
        learning_rate_multiplier=value("learning_rate_multiplier", float),
    )
