"""Fine-tuning jobs, their events and checkpoints, and the tuned models they make: the database side.

Every query an API request makes is scoped to the caller's app: another app's job or model is a 404, exactly like
one that does not exist. Status changes are compare-and-set (``UPDATE ... WHERE status IN (...)``): a cancel and the
worker's success can race, and exactly one of them wins.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, func, select, update

from errors import NotFound
from storage.engine import Database
from storage.pagination import Cursor, Order, Page, fetch_page, new_id
from storage.tables import FineTuningCheckpoint, FineTuningEvent, FineTuningJob, TunedModel, now

ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


def new_job_id() -> str:
    return new_id("ftjob-")


class FineTuningStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # jobs

    async def add_job(self, job: FineTuningJob, event: str) -> FineTuningJob:
        async with self.db.session() as session, session.begin():
            session.add(job)
            await session.flush()
            session.add(_event(job.id, event))
        return job

    async def get_job(self, app_id: str | None, job_id: str, *, param: str = "fine_tuning_job_id") -> FineTuningJob:
        """The job (``app_id`` None: any app's, for the worker)."""
        query = select(FineTuningJob).where(FineTuningJob.id == job_id)
        if app_id is not None:
            query = query.where(FineTuningJob.app_id == app_id)
        async with self.db.session() as session:
            job = await session.scalar(query)
        if job is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param=param)
        return job

    async def list_jobs(
        self, app_id: str, *, limit: int = 20, after: str | None = None, metadata: dict[str, str] | None = None
    ) -> Page[FineTuningJob]:
        query = select(FineTuningJob).where(FineTuningJob.app_id == app_id)
        cursor = None
        if after is not None:
            anchor = await self.get_job(app_id, after, param="after")
            cursor = Cursor(anchor.created_at, anchor.id)
        async with self.db.session() as session:
            page = await fetch_page(
                session, query, FineTuningJob.created_at, FineTuningJob.id, limit=limit if not metadata else 10_000,
                cursor=cursor,
            )  # fmt: skip
        if metadata:  # JSON columns compare differently per database: filter here (an app has few jobs)
            matching = [
                job for job in page.items if all((job.user_metadata or {}).get(k) == v for k, v in metadata.items())
            ]
            return Page(items=matching[:limit], has_more=len(matching) > limit or page.has_more)
        return page

    async def count_jobs(self, app_id: str, statuses: Collection[str]) -> int:
        async with self.db.session() as session:
            query = select(func.count()).where(FineTuningJob.app_id == app_id, FineTuningJob.status.in_(list(statuses)))
            return int(await session.scalar(query) or 0)

    async def transition(
        self, job_id: str, from_status: Collection[str], to_status: str, *, event: str | None = None,
        level: str = "info", **values: Any,
    ) -> bool:  # fmt: skip
        """Move the job from one of ``from_status`` to ``to_status`` (with ``values``), with an event; False when
        it was not in ``from_status`` (someone else moved it first)."""
        if to_status in FINISHED:
            values.setdefault("finished_at", now())
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == job_id, FineTuningJob.status.in_(list(from_status)))
                .values(status=to_status, **values)
            )
            if result.rowcount == 0:
                return False
            if event:
                session.add(_event(job_id, event, level=level))
        return True

    async def heartbeat(self, job_id: str, worker: str) -> str | None:
        """Renew the running job's heartbeat; its status (it may have been cancelled meanwhile)."""
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == job_id, FineTuningJob.status == "running", FineTuningJob.worker == worker)
                .values(heartbeat_at=time.time())
            )
            return await session.scalar(select(FineTuningJob.status).where(FineTuningJob.id == job_id))

    async def fail_abandoned(self, stale_after: float) -> list[str]:
        """Fail the running jobs whose worker stopped renewing their heartbeat ``stale_after`` seconds ago."""
        deadline = time.time() - stale_after
        async with self.db.session() as session:
            stale = list(
                (
                    await session.scalars(
                        select(FineTuningJob).where(
                            FineTuningJob.status == "running", FineTuningJob.heartbeat_at < deadline
                        )
                    )
                ).all()
            )
        failed = []
        for job in stale:
            message = (
                f"The worker running this job ({job.worker}) stopped: no sign of it for more than {stale_after:g} s. "
                "Create the job again."
            )
            if await self.transition(
                job.id, ["running"], "failed", event=message, level="error",
                error={"code": "worker_lost", "message": message, "param": None},
            ):  # fmt: skip
                failed.append(job.id)
        return failed

    # events and checkpoints

    async def add_event(
        self, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
    ) -> None:
        async with self.db.session() as session, session.begin():
            session.add(_event(job_id, message, level=level, type=type, data=data))

    async def list_events(
        self, app_id: str, job_id: str, *, limit: int = 20, after: str | None = None
    ) -> Page[FineTuningEvent]:
        """Newest first, as OpenAI lists them; ``after`` continues from an event id."""
        await self.get_job(app_id, job_id)
        return await self._page(FineTuningEvent, job_id, limit, after, "desc")

    async def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any], model: str) -> None:
        async with self.db.session() as session, session.begin():
            session.add(
                FineTuningCheckpoint(
                    id=new_id("ftckpt_"),
                    job_id=job_id,
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=model,
                    created_at=now(),
                )  # fmt: skip
            )

    async def list_checkpoints(
        self, app_id: str, job_id: str, *, limit: int = 10, after: str | None = None
    ) -> Page[FineTuningCheckpoint]:
        await self.get_job(app_id, job_id)
        return await self._page(FineTuningCheckpoint, job_id, limit, after, "desc")

    async def _page(self, table, job_id: str, limit: int, after: str | None, order: Order) -> Page[Any]:
        query = select(table).where(table.job_id == job_id)
        cursor = None
        if after is not None:
            async with self.db.session() as session:
                anchor = await session.scalar(select(table).where(table.id == after, table.job_id == job_id))
            if anchor is None:
                raise NotFound(f"No such item in this job: {after}", param="after")
            cursor = Cursor(anchor.created_at, anchor.id)
        async with self.db.session() as session:
            return await fetch_page(session, query, table.created_at, table.id, limit=limit, order=order, cursor=cursor)

    # tuned models

    async def succeed(self, job_id: str, model: TunedModel, *, trained_tokens: int, hyperparameters: dict) -> bool:
        """The job succeeded and its model exists, in one transaction; False when the job was no longer running
        (cancelled at the last moment): nothing is stored then."""
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == job_id, FineTuningJob.status == "running")
                .values(
                    status="succeeded",
                    fine_tuned_model=model.id,
                    trained_tokens=trained_tokens,
                    hyperparameters=hyperparameters,
                    finished_at=now(),
                )  # fmt: skip
            )
            if result.rowcount == 0:
                return False
            session.add(model)
            session.add(_event(job_id, f"New fine-tuned model created: {model.id}"))
            session.add(_event(job_id, "The job has successfully completed"))
        return True

    async def get_model(self, app_id: str, model_id: str) -> TunedModel | None:
        async with self.db.session() as session:
            return await session.scalar(
                select(TunedModel).where(TunedModel.id == model_id, TunedModel.app_id == app_id)
            )

    async def list_models(self, app_id: str) -> list[TunedModel]:
        async with self.db.session() as session:
            query = select(TunedModel).where(TunedModel.app_id == app_id).order_by(TunedModel.created_at)
            return list((await session.scalars(query)).all())

    async def delete_model(self, app_id: str, model_id: str) -> TunedModel:
        model = await self.get_model(app_id, model_id)
        if model is not None:
            async with self.db.session() as session, session.begin():
                result = await session.execute(
                    delete(TunedModel).where(TunedModel.id == model_id, TunedModel.app_id == app_id)
                )
            if result.rowcount:
                return model
        raise NotFound(f"The model `{model_id}` does not exist or you do not have access to it.", param="model")


def _event(job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None):
    return FineTuningEvent(
        id=new_id("ftevent-"), job_id=job_id, level=level, message=message, type=type, data=data, created_at=now()
    )
