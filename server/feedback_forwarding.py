"""Feedback forwarded to LangSmith, when tracing to it is configured: the rating lands on the answer's trace run
(the response id is made from the run id), so it shows beside the trace. Stored in the database first, always."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

FEEDBACK_KEY = "user_score"


def run_id_of(response_id: str) -> uuid.UUID | None:
    """The trace run id a chat response id was made from (``chatcmpl-<hex>``); None for other ids."""
    _, _, tail = response_id.rpartition("-")
    try:
        return uuid.UUID(hex=tail)
    except ValueError:
        return None


class LangSmithFeedback:
    """Sends ratings to LangSmith in a worker thread; a failure there is logged, never the client's problem."""

    def __init__(self, client: Any | None = None) -> None:
        self._client = client
        self._project_id: Any = None

    @property
    def enabled(self) -> bool:
        if self._client is not None:
            return True
        from langsmith.utils import tracing_is_enabled

        return bool(tracing_is_enabled())

    def client(self) -> Any:
        if self._client is None:
            from langsmith import Client

            self._client = Client()
        return self._client

    def project_id(self) -> Any:
        """The id of the tracing project the answers' runs are in (LangSmith wants it with run feedback); None when
        it cannot be read, and LangSmith then finds the run by its id alone."""
        if self._project_id is None:
            from langsmith.utils import get_tracer_project

            try:
                self._project_id = self.client().read_project(project_name=get_tracer_project()).id
            except Exception:
                log.warning("could not read the LangSmith project; sending feedback without it", exc_info=True)
        return self._project_id

    async def forward(self, response_id: str, *, score: float, comment: str | None, correction: str | None) -> None:
        run_id = run_id_of(response_id)
        if run_id is None or not self.enabled:
            return
        try:
            await asyncio.to_thread(
                self.client().create_feedback,
                run_id=run_id,
                trace_id=run_id,  # the answer's run is its trace's root
                session_id=await asyncio.to_thread(self.project_id),
                key=FEEDBACK_KEY,
                score=score,
                comment=comment,
                correction={"answer": correction} if correction else None,
            )
        except Exception:
            log.warning("could not forward feedback on %s to LangSmith", response_id, exc_info=True)
