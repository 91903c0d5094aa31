"""A small OpenAI-compatible fine-tuning server on loopback, for tests of the ``openai`` trainer and of tuned routes.

    with serve_fine_tuning_server(steps=4, step_delay=0.05) as base_url:    # http://127.0.0.1:PORT/v1
        base_url.control.fail_next = "Out of capacity."                        # the next job fails with it
        base_url.control.api_key = "sk-test"                                   # requests need this key from now on

Routes, in OpenAI's shapes: ``POST /v1/files`` (multipart ``file`` and ``purpose``: ``fine-tune`` only, checked with
``chains.fine_tuning.dataset``), ``GET``/``DELETE /v1/files/{id}``; ``POST /v1/fine_tuning/jobs`` (``model``,
``training_file``, ``validation_file``, ``hyperparameters`` or ``method``, ``suffix``, ``seed``), ``GET
/v1/fine_tuning/jobs`` and ``/v1/fine_tuning/jobs/{id}``, ``GET .../events`` and ``GET .../checkpoints`` (newest
first, paged with ``after`` and ``limit``), ``POST .../cancel``; ``POST /v1/chat/completions`` (plain and ``stream:
true``: the answer names the model asked for, "Answer from <model>."; an ``ft:`` model no job made is a 404) and
``GET /v1/models`` (the base models and every tuned one).

A job moves one state per ``step_delay`` seconds (computed when it is looked at, so nothing runs in the background):
``validating_files`` -> ``queued`` -> ``running``, then ``steps`` training steps, each a ``metrics`` event (with a
checkpoint every ``checkpoint_every`` steps and at the last), then ``succeeded`` with ``fine_tuned_model =
"ft:{model}:test-org:{suffix}:{short id}"`` and ``trained_tokens`` (the file's tokens, estimated, times the epochs).

Knobs on ``base_url.control`` (``FineTuningControl``), set by the test at any time: ``steps``, ``step_delay``,
``checkpoint_every`` (read when a job is created); ``fail_next`` (a message: the next job created fails with it after
``fail_at_step`` steps, 0 = while validating its files; ``fail_code`` its code); ``api_key`` (when set, every request
needs ``Authorization: Bearer <it>``, else 401); ``unavailable`` (the next N requests answer 503); ``models`` (the
models that can be tuned; None: any). ``control.requests`` keeps ``(method, path, body)`` of every request, and
``control.jobs`` / ``control.files`` the server's state.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chains.fine_tuning.dataset import DatasetError, token_counter, validate_jsonl
from chains.tokens import ApproximateTokenCounter
from tests.mock_upstream import serve_in_thread

ORGANIZATION = "test-org"
AUTO = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}  # what "auto" resolves to
ACTIVE = ("validating_files", "queued", "running")


@dataclass
class RemoteFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    tokens: int
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class RemoteJob:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int
    created_at: int
    started: float  # monotonic
    steps: int
    step_delay: float
    checkpoint_every: int
    tokens: int
    fail: tuple[str, str, int] | None  # message, code, after how many steps
    status: str = "validating_files"
    tick: int = -1
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "error": self.error,
            "fine_tuned_model": self.fine_tuned_model,
            "finished_at": self.finished_at,
            "hyperparameters": self.hyperparameters,
            "method": {"type": "supervised", "supervised": {"hyperparameters": self.hyperparameters}},
            "model": self.model,
            "organization_id": ORGANIZATION,
            "result_files": [],
            "seed": self.seed,
            "status": self.status,
            "trained_tokens": self.trained_tokens,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "user_provided_suffix": self.suffix,
            "estimated_finish": None,
            "integrations": [],
            "metadata": None,
        }


@dataclass
class FineTuningControl:
    steps: int = 6
    step_delay: float = 0.05
    checkpoint_every: int = 2
    fail_next: str | None = None
    fail_code: str = "server_error"
    fail_at_step: int = 1
    api_key: str | None = None
    unavailable: int = 0
    models: list[str] | None = None
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    files: dict[str, RemoteFile] = field(default_factory=dict)
    jobs: dict[str, RemoteJob] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):06d}"


class FineTuningServerURL(str):
    """The server's base URL (``http://127.0.0.1:PORT/v1``), with its ``control``."""

    control: FineTuningControl


def _error(status: int, message: str, code: str | None = None, param: str | None = None, kind: str | None = None):
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class _Refused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


# ---------------------------------------------------------------------------------------------------- job lifecycle


def _event(job: RemoteJob, message: str, *, level: str = "info", data: dict | None = None, kind: str = "message"):
    job.events.append(
        {
            "id": f"ftevent-{job.id.removeprefix('ftjob-')}-{len(job.events) + 1:04d}",
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": data or {},
            "type": kind,
        }
    )


def _finish(job: RemoteJob, status: str) -> None:
    job.status = status
    job.finished_at = int(time.time())


def _advance(job: RemoteJob) -> None:
    """Bring the job to where its clock says it is: one state per ``step_delay``."""
    if job.step_delay > 0:
        due = int((time.monotonic() - job.started) / job.step_delay)
    else:
        due = job.steps + 3
    while job.tick < due and job.status in ACTIVE:
        job.tick += 1
        _tick(job, job.tick)


def _tick(job: RemoteJob, tick: int) -> None:
    step = tick - 2  # ticks 0, 1, 2: validating, queued, started; then one step per tick
    if tick == 0:
        files = ", ".join(name for name in (job.training_file, job.validation_file) if name)
        _event(job, f"Validating training file: {files}")
        if job.fail is not None and job.fail[2] <= 0:
            _fail(job)
    elif tick == 1:
        job.status = "queued"
        _event(job, "Files validated, moving job to queued state")
    elif tick == 2:
        job.status = "running"
        _event(job, "Fine-tuning job started")
    elif job.fail is not None and step == job.fail[2] + 1:
        _fail(job)
    elif 1 <= step <= job.steps:
        loss = round(2.0 / (1 + step), 4)
        metrics = {
            "step": step,
            "total_steps": job.steps,
            "train_loss": loss,
            "train_mean_token_accuracy": round(1 - loss / 2, 4),
        }
        if job.validation_file:
            metrics["valid_loss"] = round(loss * 1.1, 4)
            metrics["valid_mean_token_accuracy"] = round(1 - loss * 0.55, 4)
        _event(job, f"Step {step}/{job.steps}: training loss={loss:.4f}", data=metrics, kind="metrics")
        if step % job.checkpoint_every == 0 or step == job.steps:
            job.checkpoints.append(
                {
                    "id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}",
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int(time.time()),
                    "fine_tuned_model_checkpoint": f"{_tuned_name(job)}:ckpt-step-{step}",
                    "fine_tuning_job_id": job.id,
                    "metrics": {key: value for key, value in metrics.items() if key != "total_steps"},
                    "step_number": step,
                }
            )
            _event(job, f"Checkpoint created at step {step}")
    elif step == job.steps + 1:
        job.fine_tuned_model = _tuned_name(job)
        job.trained_tokens = job.tokens * job.hyperparameters["n_epochs"]
        _event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        _event(job, "The job has successfully completed")
        _finish(job, "succeeded")


def _fail(job: RemoteJob) -> None:
    assert job.fail is not None
    message, code, _ = job.fail
    job.error = {"code": code, "message": message, "param": None}
    _event(job, message, level="error")
    _finish(job, "failed")


def _tuned_name(job: RemoteJob) -> str:
    return f"ft:{job.model}:{ORGANIZATION}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method")
    given: Any = body.get("hyperparameters") or {}
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise _Refused(_error(400, "Only the supervised method is supported here.", "invalid_value", "method"))
        given = (method.get("supervised") or {}).get("hyperparameters") or {}
    if not isinstance(given, dict):
        raise _Refused(_error(400, "hyperparameters must be an object.", "invalid_type", "hyperparameters"))
    resolved = {}
    for name, auto in AUTO.items():
        value = given.get(name, "auto")
        if value == "auto":
            value = auto
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _Refused(_error(400, f"Invalid {name}: {value!r}.", "invalid_value", f"hyperparameters.{name}"))
        resolved[name] = value
    return resolved


# ---------------------------------------------------------------------------------------------------- the app


def _page(items: list[dict[str, Any]], request: Request, default_limit: int) -> JSONResponse:
    """Newest first, after the item ``after`` names, at most ``limit``."""
    newest_first = items[::-1]
    after = request.query_params.get("after")
    if after:
        ids = [item["id"] for item in newest_first]
        newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
    limit = int(request.query_params.get("limit") or default_limit)
    page = newest_first[:limit]
    return JSONResponse({"object": "list", "data": page, "has_more": len(newest_first) > limit})


def _app(control: FineTuningControl) -> Starlette:
    def job_of(request: Request) -> RemoteJob:
        job = control.jobs.get(request.path_params["job_id"])
        if job is None:
            message = f"Could not find fine-tune: {request.path_params['job_id']}"
            raise _Refused(_error(404, message, "fine_tune_not_found", "fine_tune_id"))
        _advance(job)
        return job

    async def create_file(request: Request):
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune":
            return _error(
                400, f"Invalid purpose {purpose!r}: this server takes 'fine-tune'.", "invalid_value", "purpose"
            )
        if upload is None or isinstance(upload, str):
            return _error(400, "Missing file.", None, "file")
        data = await upload.read()
        try:
            summary = validate_jsonl(data, count_tokens=token_counter(ApproximateTokenCounter()))
        except DatasetError as error:
            return _error(400, error.message, "invalid_file", "file")
        remote = RemoteFile(
            id=control.new_id("file-"),
            filename=upload.filename or "upload.jsonl",
            purpose="fine-tune",
            data=data,
            tokens=summary.total_tokens or 0,
            created_at=int(time.time()),
        )
        control.files[remote.id] = remote
        return JSONResponse(remote.object())

    async def file(request: Request):
        remote = control.files.get(request.path_params["file_id"])
        if remote is None:
            return _error(404, f"No such File object: {request.path_params['file_id']}", None, "id")
        if request.method == "DELETE":
            del control.files[remote.id]
            return JSONResponse({"id": remote.id, "object": "file", "deleted": True})
        return JSONResponse(remote.object())

    async def create_job(request: Request):
        body = await request.json()
        model, training = body.get("model"), body.get("training_file")
        if not isinstance(model, str) or not model:
            return _error(400, "Missing model.", "invalid_value", "model")
        if control.models is not None and model not in control.models:
            return _error(400, f"Model {model} is not available for fine-tuning.", "model_not_available", "model")
        for param in ("training_file", "validation_file"):
            name = body.get(param)
            if (name or param == "training_file") and name not in control.files:
                return _error(400, f"Invalid file: {name} does not exist.", "invalid_file", param)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            return _error(400, "suffix must be a string of at most 64 characters.", "invalid_value", "suffix")
        hyperparameters = _hyperparameters(body)
        fail = None
        if control.fail_next is not None:
            fail = (control.fail_next, control.fail_code, control.fail_at_step)
            control.fail_next = None
        job = RemoteJob(
            id=control.new_id("ftjob-"),
            model=model,
            training_file=training,
            validation_file=body.get("validation_file"),
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=int(body.get("seed") or 42),
            created_at=int(time.time()),
            started=time.monotonic(),
            steps=control.steps,
            step_delay=control.step_delay,
            checkpoint_every=max(control.checkpoint_every, 1),
            tokens=control.files[training].tokens,
            fail=fail,
        )
        control.jobs[job.id] = job
        _advance(job)
        return JSONResponse(job.object())

    async def list_jobs(request: Request):
        jobs = list(control.jobs.values())
        for job in jobs:
            _advance(job)
        return _page([job.object() for job in jobs], request, 20)

    async def get_job(request: Request):
        return JSONResponse(job_of(request).object())

    async def events(request: Request):
        return _page(job_of(request).events, request, 20)

    async def checkpoints(request: Request):
        return _page(job_of(request).checkpoints, request, 10)

    async def cancel(request: Request):
        job = job_of(request)
        if job.status not in ACTIVE:
            return _error(400, f"Job has already completed: {job.id}", "invalid_request", None)
        _event(job, "Fine-tuning job cancelled")
        _finish(job, "cancelled")
        return JSONResponse(job.object())

    async def chat_completions(request: Request):
        body = await request.json()
        model = str(body.get("model") or "")
        tuned = {job.fine_tuned_model for job in control.jobs.values() if job.fine_tuned_model}
        if model.startswith("ft:") and model not in tuned:
            return _error(
                404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
            )
        answer = f"Answer from {model}."
        created = int(time.time())
        usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            completion = {"id": "chatcmpl-ft", "object": "chat.completion", "created": created, "model": model}
            return JSONResponse({**completion, "choices": [choice], "usage": usage})

        def chunks() -> Iterator[str]:
            base = {"id": "chatcmpl-ft", "object": "chat.completion.chunk", "created": created, "model": model}
            words = answer.split(" ")
            deltas = [{"role": "assistant", "content": ""}, *({"content": w + " "} for w in words[:-1])]
            for delta in [*deltas, {"content": words[-1]}]:
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def models(_: Request):
        names = [*(control.models or ["test-base"]), *(j.fine_tuned_model for j in control.jobs.values())]
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": ORGANIZATION if name.startswith("ft:") else "tests",
            }
            for name in names
            if name
        ]
        return JSONResponse({"object": "list", "data": data})

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            body: Any = None
            if request.method == "POST":
                if request.headers.get("content-type", "").startswith("multipart/"):
                    form = await request.form()
                    body = {key: value if isinstance(value, str) else value.filename for key, value in form.items()}
                else:
                    raw = await request.body()
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        return _error(400, "The body is not valid JSON.")
            control.requests.append((request.method, request.url.path, body))
            if control.unavailable > 0:
                control.unavailable -= 1
                return _error(503, "The server is overloaded (on purpose).", "server_error")
            if control.api_key is not None:
                given = request.headers.get("authorization", "")
                if given != f"Bearer {control.api_key}":
                    key = given.removeprefix("Bearer ")
                    return _error(401, f"Incorrect API key provided: {key[:6]}***.", "invalid_api_key")
            try:
                response = await handler(request)
            except _Refused as refused:
                return refused.response
            return response

        return endpoint

    jobs = "/v1/fine_tuning/jobs"
    return Starlette(
        routes=[
            Route("/v1/files", guarded(create_file), methods=["POST"]),
            Route("/v1/files/{file_id}", guarded(file), methods=["GET", "DELETE"]),
            Route(jobs, guarded(create_job), methods=["POST"]),
            Route(jobs, guarded(list_jobs), methods=["GET"]),
            Route(jobs + "/{job_id}", guarded(get_job), methods=["GET"]),
            Route(jobs + "/{job_id}/events", guarded(events), methods=["GET"]),
            Route(jobs + "/{job_id}/checkpoints", guarded(checkpoints), methods=["GET"]),
            Route(jobs + "/{job_id}/cancel", guarded(cancel), methods=["POST"]),
            Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
        ]
    )


@contextmanager
def serve_fine_tuning_server(**knobs: Any) -> Iterator[FineTuningServerURL]:
    """The fine-tuning server under uvicorn in a thread; yields its base URL (``http://127.0.0.1:P/v1``) with its
    ``control`` (``knobs`` set its fields: ``steps``, ``step_delay``, ``api_key``, ...)."""
    control = FineTuningControl(**knobs)
    with serve_in_thread(_app(control)) as base_url:
        url = FineTuningServerURL(base_url)
        url.control = control
        yield url
