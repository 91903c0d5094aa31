"""Fine-tuning as a service of the API: jobs (create, list, get, cancel, events, checkpoints) and the tuned models
they make, served as routes of their app only.

A job is validated here, at once (the files are the app's, have purpose ``fine-tune`` and fit the base model's
context window), then queued (``server.job_queue``) for ``genai worker`` (``server.worker``), which trains it with
the trainer of the base model's route: ``local`` (LoRA on the embedded model, served by llama.cpp with the adapter)
or ``openai`` (OpenAI's fine-tuning API).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

from chains.fine_tuning.dataset import DatasetError, token_counter, validate_jsonl
from chains.model_routes import ChatModel, ModelRegistry
from errors import InvalidRequest, ModelNotFound, PermissionDenied, RateLimited, ServiceUnavailable
from server.fine_tuning_schemas import JobCreate
from server.job_queue import JobQueue
from server.settings import Settings
from storage.files import FileStore
from storage.fine_tuning import ACTIVE, FineTuningStore, new_job_id
from storage.pagination import Page
from storage.tables import FineTuningJob, TunedModel, now
from storage.tenants import Caller, TenantStore

log = logging.getLogger(__name__)

PURPOSE = "fine-tune"
# Jobs whose worker died are looked for at most this often (on reads).
REAP_INTERVAL_SECONDS = 1.0


class FineTuning:
    def __init__(
        self,
        settings: Settings,
        store: FineTuningStore,
        files: FileStore,
        models: ModelRegistry,
        tenants: TenantStore,
        queue: JobQueue | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.models = models
        self.tenants = tenants
        self._queue = queue
        self._reaped_at = 0.0

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:  # built on first use: huey opens its SQLite file or Redis connection then
            self._queue = JobQueue.build(self.settings)
        return self._queue

    # jobs

    async def create(self, caller: Caller, body: JobCreate) -> FineTuningJob:
        hyperparameters = body.resolved_hyperparameters()
        chat = self._tunable(caller, body.model)
        training = await self._fine_tune_file(caller.app_id, body.training_file, "training_file")
        validation = (
            await self._fine_tune_file(caller.app_id, body.validation_file, "validation_file")
            if body.validation_file
            else None
        )
        active = await self.store.count_jobs(caller.app_id, ACTIVE)
        if active >= self.settings.fine_tuning_max_jobs:
            raise RateLimited(
                f"This app has {active} fine-tuning jobs validating, queued or running: at most "
                f"{self.settings.fine_tuning_max_jobs} at once. Wait for one to finish, or cancel one."
            )
        job = FineTuningJob(
            id=new_job_id(),
            app_id=caller.app_id,
            model=chat.route.name,
            trainer=chat.route.resolved_trainer,
            training_file=training.id,
            validation_file=validation.id if validation else None,
            hyperparameters=hyperparameters.asked(),
            suffix=body.suffix,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
            status="validating_files",
            user_metadata=body.metadata,
            attempts=0,
            created_at=now(),
        )
        await self.store.add_job(job, f"Validating training file: {training.id}")
        problem = await self._validate(chat, training, validation)
        if problem is not None:
            message, param = problem
            await self.store.transition(
                job.id, ["validating_files"], "failed", event=f"The job failed: {message}", level="error",
                error={"code": "invalid_file", "message": message, "param": param},
            )  # fmt: skip
            return await self.store.get_job(caller.app_id, job.id)
        await self.store.transition(
            job.id, ["validating_files"], "queued", event="Files validated, moving job to queued state"
        )
        try:
            task_id = await asyncio.to_thread(self.queue.enqueue, job.id)
        except Exception as exc:  # the queue's Redis (or SQLite file) is down: the job says so, and so do we
            message = f"The job queue is unavailable ({type(exc).__name__}); create the job again later."
            await self.store.transition(
                job.id, ["queued"], "failed", event=f"The job failed: {message}", level="error",
                error={"code": "queue_unavailable", "message": message, "param": None},
            )  # fmt: skip
            raise ServiceUnavailable(message) from exc
        await self.store.transition(job.id, ["queued"], "queued", task_id=task_id)
        return await self.store.get_job(caller.app_id, job.id)

    def _tunable(self, caller: Caller, model: str) -> ChatModel:
        if model.startswith("ft:"):
            raise InvalidRequest(
                f"`{model}` is a tuned model: this platform tunes base models only; tune its base model with all "
                "the data.",
                param="model",
                code="model_not_available",
            )
        chat = self.models.get(model, allowed=caller.allowed_models, app_id=caller.app_id)
        if chat.route.resolved_trainer is None:
            tunable = [c.route.name for c in self.models if c.route.resolved_trainer and caller.may_use(c.route.name)]
            raise InvalidRequest(
                f"The model `{model}` cannot be fine-tuned: its provider ({chat.route.provider_kind}) has no trainer "
                "on this platform. "
                + (f"Models that can: {', '.join(tunable)}." if tunable else "No model here can be fine-tuned."),
                param="model",
                code="model_not_available",
            )
        return chat

    async def _fine_tune_file(self, app_id: str, file_id: str, param: str):
        file = await self.files.get(app_id, file_id, param=param)
        if file.purpose != PURPOSE:
            raise InvalidRequest(
                f"File {file_id} has purpose '{file.purpose}': upload fine-tuning data with purpose 'fine-tune'.",
                param=param,
                code="invalid_file",
            )
        return file

    async def _validate(self, chat: ChatModel, training, validation) -> tuple[str, str] | None:
        """The first problem of the files for this base model (its tokenizer and context window), or None."""
        count = token_counter(chat.tokens)
        for file, param in ((training, "training_file"), (validation, "validation_file")):
            if file is None:
                continue
            data = await self.files.read(file)
            try:
                await asyncio.to_thread(
                    validate_jsonl, data, count_tokens=count, context_window=chat.route.context_window, param=param
                )
            except DatasetError as error:
                return f"{param} {file.id} for {chat.route.name}: {error.message}", param
        return None

    async def get(self, app_id: str, job_id: str) -> FineTuningJob:
        await self.reap()
        return await self.store.get_job(app_id, job_id)

    async def list(
        self, app_id: str, *, limit: int, after: str | None, metadata: dict[str, str] | None
    ) -> Page[FineTuningJob]:
        await self.reap()
        return await self.store.list_jobs(app_id, limit=limit, after=after, metadata=metadata)

    async def cancel(self, app_id: str, job_id: str) -> FineTuningJob:
        job = await self.get(app_id, job_id)
        if job.status not in ACTIVE:
            raise InvalidRequest(
                f"The job {job_id} has already {job.status}: only a validating, queued or running job can be "
                "cancelled.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        if not await self.store.transition(job_id, ACTIVE, "cancelled", event="The job was cancelled"):
            return await self.get(app_id, job_id)  # it finished meanwhile: as it ended
        if job.task_id and job.status != "running":
            try:  # the queue's message is skipped; a worker that takes it anyway finds the job cancelled
                await asyncio.to_thread(self.queue.revoke, job.task_id)
            except Exception:  # noqa: BLE001 - the status alone stops it
                log.warning("could not revoke the queued message of job %s", job_id)
        return await self.store.get_job(app_id, job_id)

    async def reap(self) -> None:
        """Fail the running jobs whose worker died (checked at most once a second)."""
        moment = time.monotonic()
        if moment - self._reaped_at < REAP_INTERVAL_SECONDS:
            return
        self._reaped_at = moment
        for job_id in await self.store.fail_abandoned(self.settings.worker_heartbeat_timeout_seconds):
            log.warning("fine-tuning job %s failed: its worker stopped", job_id)

    # tuned models

    async def ensure(self, app_id: str, name: str) -> None:
        """Register ``app_id``'s tuned model ``name`` as a route, or forget it when it was deleted (a request for
        it then gets the usual 404). One indexed read per request naming a tuned model."""
        row = await self.store.get_model(app_id, name)
        if row is None:
            if any(chat.route.name == name for chat in self.models.tuned_of(app_id)):
                self.models.remove_tuned(name)
            return
        self._register(row)

    def _register(self, row: TunedModel) -> ChatModel:
        if row.base_model not in self.models:
            raise ModelNotFound(
                f"The model `{row.id}` was tuned from `{row.base_model}`, which is no longer configured here.",
                param="model",
            )
        return self.models.add_tuned(row.id, row.app_id, row.base_model, row.upstream_model)

    async def models_of(self, caller: Caller) -> list[ChatModel]:
        """The app's tuned models that it may use (their base route is allowed and still configured)."""
        rows = await self.store.list_models(caller.app_id)
        return [self._register(row) for row in rows if row.base_model in self.models and caller.may_use(row.base_model)]

    async def delete_model(self, caller: Caller, name: str) -> None:
        """Delete the app's tuned model: its route, its adapter, the provider's copy; and the app's default if it
        was that."""
        if name in self.models:
            raise PermissionDenied(
                f"The model `{name}` is a configured route: only tuned models can be deleted.", param="model"
            )
        row = await self.store.delete_model(caller.app_id, name)
        self.models.remove_tuned(name)
        if row.adapter_path:
            Path(row.adapter_path).unlink(missing_ok=True)
        app = await self.tenants.get_app(caller.app_id)
        if app.default_model == name:
            await self.tenants.update_app(caller.app_id, default_model=None)
        if row.trainer == "openai":
            await asyncio.to_thread(self._delete_remote, row)

    def _delete_remote(self, row: TunedModel) -> None:
        """OpenAI keeps a tuned model until it is deleted there too; a failure is logged (the route is gone)."""
        import openai

        from chains.fine_tuning.openai_trainer import delete_provider_model

        if row.base_model not in self.models:
            return
        try:
            delete_provider_model(self.models.get(row.base_model).route, row.upstream_model)
        except openai.OpenAIError as exc:
            log.warning("the provider's copy of %s was not deleted: %s", row.id, exc)
