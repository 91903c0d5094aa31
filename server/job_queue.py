"""The queue between the API and ``genai worker``: huey, on Redis when one is configured, else on SQLite in the data
directory (one machine: the API and its worker share the file).

The queue carries only job ids; the job itself (its status, events, heartbeat) lives in the database, which is what
clients read. A message is taken off the queue when a worker starts it, so a worker that dies does not run it twice:
the job's missing heartbeat tells (``storage.fine_tuning.FineTuningStore.fail_abandoned``).
"""

from __future__ import annotations

from huey import Huey, RedisHuey, SqliteHuey

from server.settings import Settings

QUEUE_NAME = "genai-fine-tuning"
TASK_NAME = "fine_tuning.run_job"


class JobQueue:
    def __init__(self, huey: Huey) -> None:
        self.huey = huey
        self._task = huey.task(name=TASK_NAME, retries=0)(_run_job)

    @classmethod
    def build(cls, settings: Settings) -> JobQueue:
        if settings.redis_url:
            return cls(RedisHuey(QUEUE_NAME, url=settings.redis_url))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(SqliteHuey(QUEUE_NAME, filename=str(settings.data_dir / "queue.sqlite3")))

    def enqueue(self, job_id: str) -> str:
        """Queue ``job_id`` for a worker; the message's id (to revoke it while it waits). Blocking: call it in a
        thread from async code."""
        return self._task(job_id).id

    def revoke(self, task_id: str) -> None:
        """A queued job's message is skipped by the worker that takes it (a running one stops through its status)."""
        self.huey.revoke_by_id(task_id)

    def pending(self) -> int:
        return self.huey.pending_count()

    def consumer(self, *, poll_max_seconds: float, shutdown_timeout: float):
        """One worker thread: at most one job runs at a time in a worker process; the rest wait in the queue.
        SIGTERM (and SIGINT) stop it gracefully: the running job is put back in the queue (server.worker)."""
        return self.huey.create_consumer(
            workers=1,
            worker_type="thread",
            periodic=False,
            initial_delay=0.1,
            backoff=1.5,
            max_delay=poll_max_seconds,
            graceful_signal="TERM",
            shutdown_timeout=shutdown_timeout,
        )


def _run_job(job_id: str) -> None:
    from server.worker import run_job  # the worker's side: imported only where jobs run

    run_job(job_id)
