"""Request bodies and responses of the fine-tuning routes, in OpenAI's shapes (the openai SDK's ``FineTuningJob``,
``FineTuningJobEvent``, ``FineTuningJobCheckpoint``).

OpenAI fields the platform does not implement are declared so that sending them is refused by name (400
``unsupported_parameter``), never dropped silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from errors import InvalidRequest
from server.knowledge_schemas import CursorList, Metadata, ObjectId
from server.schemas import ObjectList, ResponseBody
from storage import tables

Auto = Literal["auto"]
SUFFIX_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[StrictInt, Field(ge=1, le=50)] | Auto | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=256)] | Auto | None = None
    learning_rate_multiplier: Annotated[StrictFloat | StrictInt, Field(gt=0, le=100)] | Auto | None = None

    def asked(self) -> dict[str, Any]:
        """Each hyperparameter as asked, "auto" where unset."""
        return {
            name: getattr(self, name) if getattr(self, name) is not None else "auto" for name in type(self).model_fields
        }


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: StrictStr
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    training_file: ObjectId
    validation_file: ObjectId | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[StrictStr, Field(pattern=SUFFIX_PATTERN)] | None = Field(
        None, description="in the tuned model's name: letters, digits, - and _, at most 40"
    )
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Metadata | None = None
    integrations: list[Any] | None = None

    def resolved_hyperparameters(self) -> Hyperparameters:
        """``hyperparameters``, or the supervised method's; ``method`` other than supervised is refused."""
        if self.integrations is not None:
            raise InvalidRequest(
                "'integrations' is not supported by this platform: progress is in the job's events.",
                param="integrations",
                code="unsupported_parameter",
            )
        if self.method is None:
            return self.hyperparameters or Hyperparameters()
        if self.method.type != "supervised" or self.method.dpo is not None or self.method.reinforcement is not None:
            raise InvalidRequest(
                f"Fine-tuning method '{self.method.type}' is not supported: this platform tunes with 'supervised'.",
                param="method.type",
                code="unsupported_value",
            )
        from_method = self.method.supervised.hyperparameters if self.method.supervised else None
        if from_method is not None and self.hyperparameters is not None:
            raise InvalidRequest(
                "Give the hyperparameters once: in `method.supervised.hyperparameters` or in `hyperparameters`.",
                param="hyperparameters",
            )
        return from_method or self.hyperparameters or Hyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class JobHyperparameters(ResponseBody):
    n_epochs: int | Auto
    batch_size: int | Auto
    learning_rate_multiplier: float | Auto


class JobObject(ResponseBody):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = Field(description="why the job failed; null otherwise")
    fine_tuned_model: str | None = Field(description="the tuned model's name, once the job succeeded")
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str = Field(description="the base model")
    organization_id: str = Field(description="the app's id")
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] | None
    metadata: dict[str, str] | None
    method: dict[str, Any]
    user_provided_suffix: str | None
    trainer: str = Field(description="the platform's trainer: local (LoRA on the embedded model) or openai")

    @classmethod
    def of(cls, job: tables.FineTuningJob) -> JobObject:
        hyperparameters = JobHyperparameters(
            **{
                "n_epochs": "auto",
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                **(job.hyperparameters or {}),
            }
        )
        return cls(
            id=job.id,
            created_at=job.created_at,
            error=JobError(**job.error) if job.error else None,
            fine_tuned_model=job.fine_tuned_model,
            finished_at=job.finished_at,
            hyperparameters=hyperparameters,
            model=job.model,
            organization_id=job.app_id,
            result_files=[],
            seed=job.seed,
            status=job.status,
            trained_tokens=job.trained_tokens,
            training_file=job.training_file,
            validation_file=job.validation_file,
            estimated_finish=None,
            integrations=None,
            metadata=job.user_metadata,
            method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters.model_dump()}},
            user_provided_suffix=job.suffix,
            trainer=job.trainer,
        )


class JobList(ObjectList[JobObject]):
    has_more: bool


class EventObject(ResponseBody):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = Field(description="metrics events: step, total_steps, train_loss, valid_loss")
    type: Literal["message", "metrics"]

    @classmethod
    def of(cls, event: tables.FineTuningEvent) -> EventObject:
        return cls.of_row(event)


class EventList(ObjectList[EventObject]):
    data: list[EventObject] = Field(description="newest first")
    has_more: bool


class CheckpointObject(ResponseBody):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int

    @classmethod
    def of(cls, checkpoint: tables.FineTuningCheckpoint) -> CheckpointObject:
        return cls.of_row(checkpoint, fine_tuning_job_id=checkpoint.job_id)


class CheckpointList(CursorList[CheckpointObject]):
    pass


class ModelDeleted(ResponseBody):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
