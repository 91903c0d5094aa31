"""``genai worker``: runs the fine-tuning jobs the API queues, one at a time per worker process.

Each job's trainer runs in a child process of its own (``spawn``): a cancel stops it within seconds even while it
loads a model, its memory (gigabytes for the local trainer) is returned when it ends, and a crash of the trainer
fails the job instead of the worker. The child reports through a queue; this side writes the job's events and
checkpoints, renews its heartbeat, and watches its status:

* cancelled (``POST .../cancel``): the child is told, then killed after ``fine_tuning_cancel_grace_seconds``;
* the worker is asked to stop (SIGTERM): the same, and the job goes back to the queue to start over on a worker;
* the worker dies (SIGKILL, power): the child exits with it (it watches its parent), the heartbeat stops, and the
  job is failed by whoever next looks (``FineTuningStore.fail_abandoned``: the API on reads, a worker at start).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import re
import resource
import shutil
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chains.fine_tuning.base import (
    Hyperparameters,
    TrainingCancelled,
    TrainingError,
    TrainingResult,
    TrainingSpec,
)
from server.settings import Settings
from storage.engine import Database
from storage.files import FileStore
from storage.fine_tuning import FineTuningStore
from storage.tables import FineTuningJob, TunedModel, now
from storage.tenants import TenantStore

log = logging.getLogger("genai.worker")

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
# Set when this worker is asked to stop (the queue consumer's stop flag): a running job is put back in the queue.
stopping = threading.Event()


def run_job(job_id: str) -> None:
    """The queue's task: run one job to its end (or back into the queue when the worker stops)."""
    asyncio.run(JobRunner(Settings()).run(job_id))


def model_name(base: str, app_name: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's form, ``ft:<base>:<app>:<suffix>:<id>``; the id is the job id's random tail."""
    app = re.sub(r"[^a-z0-9-]+", "-", app_name.lower()).strip("-") or "app"
    return f"ft:{base}:{app}:{suffix or ''}:{job_id.rsplit('-', 1)[-1][-8:]}"


class JobRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(self, job_id: str) -> None:
        db = Database(self.settings.resolved_database_url)
        try:
            await self._run(FineTuningStore(db), db, job_id)
        finally:
            await db.close()

    async def _run(self, store: FineTuningStore, db: Database, job_id: str) -> None:
        job = await store.get_job(None, job_id)
        if stopping.is_set():  # taken off the queue while stopping: leave it for the next worker
            await self._requeue(store, job, "The worker was stopping; the job is queued again.", from_status="queued")
            return
        started = await store.transition(
            job_id, ["queued"], "running", event="Fine-tuning job started",
            worker=WORKER_ID, heartbeat_at=time.time(), started_at=job.started_at or now(), attempts=job.attempts + 1,
        )  # fmt: skip
        if not started:  # cancelled (or failed) while it waited
            log.info("job %s is %s: not started", job_id, job.status)
            return
        output = self.settings.data_dir / "fine_tuning" / job_id
        try:
            spec = await self._spec(db, job, output)
            await self._train(store, job, spec)
        except TrainingError as error:
            await self._fail(store, job_id, error.code, error.message, error.param)
        except Exception as exc:  # a bug or a broken dependency: the job says so instead of staying `running`
            log.exception("job %s failed", job_id)
            await self._fail(store, job_id, "training_failed", f"The worker failed: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(output, ignore_errors=True)

    async def _spec(self, db: Database, job: FineTuningJob, output: Path) -> TrainingSpec:
        routes = {route.name: route for route in self.settings.routes() if route.serves == "chat"}
        base = routes.get(job.model)
        if base is None:
            raise TrainingError(f"The model `{job.model}` is no longer configured on this platform.", param="model")
        files = FileStore(db, self.settings.data_dir / "files")
        training = files.path_of(await files.get(job.app_id, job.training_file, param="training_file"))
        validation = None
        if job.validation_file:
            validation = files.path_of(await files.get(job.app_id, job.validation_file, param="validation_file"))
        app = await TenantStore(db).get_app(job.app_id)
        output.mkdir(parents=True, exist_ok=True)
        asked = {k: (None if v == "auto" else v) for k, v in (job.hyperparameters or {}).items()}
        return TrainingSpec(
            job_id=job.id,
            model_id=model_name(job.model, app.name, job.suffix, job.id),
            base_route=base,
            training_file=training,
            validation_file=validation,
            hyperparameters=Hyperparameters(**{k: asked.get(k) for k in asdict(Hyperparameters())}),
            seed=job.seed,
            suffix=job.suffix,
            output_dir=output,
        )

    async def _train(self, store: FineTuningStore, job: FineTuningJob, spec: TrainingSpec) -> None:
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        cancel = context.Event()
        child = context.Process(
            target=train_in_child,
            args=(job.trainer, spec, messages, cancel, os.getpid(), self.settings.fine_tuning_poll_seconds),
            name=f"trainer-{job.id}",
        )
        child.start()
        log.info("job %s: training with the %s trainer in process %d", job.id, job.trainer, child.pid)
        outcome: tuple[Any, ...] | None = None
        requeue = False
        kill_at: float | None = None
        next_beat = 0.0
        while True:
            outcome = await self._relay(store, job.id, messages) or outcome
            if not child.is_alive():
                outcome = await self._relay(store, job.id, messages, wait=1.0) or outcome
                break
            moment = time.monotonic()
            if moment >= next_beat:
                next_beat = moment + 1.0
                status = await store.heartbeat(job.id, WORKER_ID)
                if kill_at is None and (status != "running" or stopping.is_set()):
                    requeue = status == "running"  # the worker stops; a cancelled job stays cancelled
                    cancel.set()
                    kill_at = moment + self.settings.fine_tuning_cancel_grace_seconds
            if kill_at is not None and moment >= kill_at:
                child.terminate()
                await asyncio.to_thread(child.join, 5)
                if child.is_alive():
                    child.kill()
                break
            await asyncio.sleep(0.2)
        await asyncio.to_thread(child.join, 10)
        if outcome is not None and outcome[0] == "done":  # finished as the worker was told to stop: keep it
            await self._succeed(store, job, spec, outcome[1])
        elif requeue:
            await self._requeue(store, job, "The worker stopped during training; the job is queued again and will "
                                "start over.")  # fmt: skip
        elif outcome is not None and outcome[0] == "failed":
            await self._fail(store, job.id, outcome[1], outcome[2], outcome[3])
        elif kill_at is None and (outcome is None or outcome[0] != "cancelled"):
            code = child.exitcode
            reason = " (killed: out of memory?)" if code == -9 else ""
            await self._fail(store, job.id, "training_failed", f"The training process exited with code {code}{reason}.")
        else:
            log.info("job %s: stopped after its cancel", job.id)

    async def _relay(self, store: FineTuningStore, job_id: str, messages, wait: float = 0.0) -> tuple[Any, ...] | None:
        """Write what the child reported; its final outcome when it sent one."""
        outcome = None
        while True:
            try:
                message = await asyncio.to_thread(messages.get, True, wait) if wait else messages.get_nowait()
            except queue.Empty:
                return outcome
            kind = message[0]
            if kind == "event":
                _, text, level, data = message
                kind_of = "metrics" if data and "step" in data else "message"
                await store.add_event(job_id, text, level=level, type=kind_of, data=data)
            elif kind == "checkpoint":
                _, step, metrics, model = message
                await store.add_checkpoint(job_id, step, metrics, model)
            else:
                outcome = message

    async def _succeed(self, store: FineTuningStore, job: FineTuningJob, spec: TrainingSpec, result: TrainingResult):
        adapter = None
        if result.adapter_path is not None:  # the local trainer's LoRA adapter: where llama.cpp serves it from
            target = self.settings.adapters_dir / f"{spec.model_id.rsplit(':', 1)[-1]}.gguf"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(result.adapter_path, target)
            adapter = str(target)
        model = TunedModel(
            id=spec.model_id, app_id=job.app_id, base_model=job.model, job_id=job.id, trainer=job.trainer,
            upstream_model=result.upstream_model, adapter_path=adapter, created_at=now(),
        )  # fmt: skip
        used = asdict(result.hyperparameters)
        if not await store.succeed(job.id, model, trained_tokens=result.trained_tokens, hyperparameters=used):
            log.info("job %s finished after it was cancelled: its model is discarded", job.id)
            if adapter:
                Path(adapter).unlink(missing_ok=True)

    async def _fail(
        self, store: FineTuningStore, job_id: str, code: str, message: str, param: str | None = None
    ) -> None:
        await store.transition(
            job_id, ["running"], "failed", event=f"The job failed: {message}", level="error",
            error={"code": code, "message": message, "param": param},
        )  # fmt: skip

    async def _requeue(self, store: FineTuningStore, job: FineTuningJob, why: str, from_status: str = "running"):
        from server.job_queue import JobQueue

        if await store.transition(job.id, [from_status], "queued", event=why, worker=None, heartbeat_at=None):
            task_id = await asyncio.to_thread(JobQueue.build(self.settings).enqueue, job.id)
            await store.transition(job.id, ["queued"], "queued", task_id=task_id)


class QueueProgress:
    """The trainer's ``Progress`` in the child process: everything goes to the parent through ``messages``."""

    def __init__(self, messages, cancel) -> None:
        self.messages = messages
        self._cancel = cancel

    def event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        self.messages.put(("event", message, level, data))

    def checkpoint(self, step: int, metrics: dict[str, Any], upstream_model: str | None = None) -> None:
        self.messages.put(("checkpoint", step, metrics, upstream_model or f"ckpt-step-{step}"))

    def cancelled(self) -> bool:
        return self._cancel.is_set()


def make_trainer(name: str, poll_seconds: float):
    if name == "local":
        from chains.fine_tuning.local_trainer import LocalTrainer

        return LocalTrainer()
    if name == "openai":
        from chains.fine_tuning.openai_trainer import OpenAITrainer

        return OpenAITrainer(poll_interval=poll_seconds)
    raise TrainingError(f"No trainer named `{name}`.")


def train_in_child(name: str, spec: TrainingSpec, messages, cancel, parent_pid: int, poll_seconds: float) -> None:
    """The child process: train, and send the outcome (never raise: the parent reads the queue)."""
    from chains.local_model_process import watch_parent

    watch_parent(parent_pid, lambda: os._exit(1))  # a worker killed outright takes its trainer with it
    progress = QueueProgress(messages, cancel)
    started = time.monotonic()
    try:
        result = make_trainer(name, poll_seconds).train(spec, progress)
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        progress.event(
            f"Training took {seconds:.1f} s; the trainer's peak memory was {peak:.0f} MiB",
            data={"training_seconds": round(seconds, 2), "peak_rss_mib": round(peak)},
        )
        messages.put(("done", result))
    except TrainingCancelled:
        messages.put(("cancelled",))
    except TrainingError as error:
        messages.put(("failed", error.code, error.message, error.param))
    except Exception as exc:  # noqa: BLE001 - reported as the job's error
        logging.getLogger("genai.trainer").exception("training failed")
        messages.put(("failed", "training_failed", f"{type(exc).__name__}: {exc}", None))


def serve_jobs(settings: Settings) -> int:
    """``genai worker``: take jobs from the queue until SIGTERM or SIGINT (graceful: a running job is stopped and
    queued again), or until the process that started it dies."""
    from chains.local_model_process import PARENT_PID_ENV, terminate_self, watch_parent
    from server.job_queue import JobQueue

    asyncio.run(_prepare(settings))
    jobs = JobQueue.build(settings)
    consumer = jobs.consumer(
        poll_max_seconds=settings.worker_poll_seconds,
        shutdown_timeout=settings.fine_tuning_cancel_grace_seconds + 10,
    )
    flag = consumer.stop_flag
    threading.Thread(target=lambda: (flag.wait(), stopping.set()), name="stop-flag", daemon=True).start()
    if parent := os.environ.get(PARENT_PID_ENV):  # started by genai serve: never outlive it
        watch_parent(int(parent), terminate_self)
    log.info("worker %s: waiting for fine-tuning jobs (%d queued)", WORKER_ID, jobs.pending())
    consumer.run()
    log.info("worker %s stopped", WORKER_ID)
    return 0


async def _prepare(settings: Settings) -> None:
    """The schema is current, and the jobs of a worker that died are failed (they cannot be resumed)."""
    db = Database(settings.resolved_database_url)
    try:
        await db.upgrade_schema()
        for job_id in await FineTuningStore(db).fail_abandoned(settings.worker_heartbeat_timeout_seconds):
            log.warning("fine-tuning job %s failed: its worker stopped", job_id)
    finally:
        await db.close()
