"""What every trainer shares: the job it is given, how it reports progress, and what it returns.

A trainer turns a validated fine-tuning file (OpenAI's chat format, one ``{"messages": [...]}`` per line) into a
model that a route can serve. ``genai worker`` runs it in a child process of its own (so that a cancel can stop it
at once and its memory is returned when it ends); the trainer only calls ``progress`` and checks
``progress.cancelled()`` between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from chains.model_routes import ModelRoute

TrainerName = Literal["local", "openai"]


@dataclass(frozen=True)
class Hyperparameters:
    """OpenAI's hyperparameters; None is "auto" (the trainer picks, and reports what it used)."""

    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None


@dataclass(frozen=True)
class TrainingSpec:
    job_id: str  # ftjob-...
    model_id: str  # the tuned model's name, ft:<base>:<app>:<suffix>:<id>
    base_route: ModelRoute  # the route being tuned (its GGUF for `local`, its server and key for `openai`)
    training_file: Path  # validated JSONL
    validation_file: Path | None
    hyperparameters: Hyperparameters
    seed: int
    suffix: str | None
    output_dir: Path  # the job's own working directory; the trainer may write anything here


@dataclass(frozen=True)
class TrainingResult:
    upstream_model: str  # what the tuned route sends upstream as `model`
    hyperparameters: Hyperparameters  # what was used, "auto" resolved
    trained_tokens: int
    adapter_path: Path | None = None  # local: the LoRA adapter (GGUF) that llama.cpp serves; openai: None
    metrics: dict[str, Any] = field(default_factory=dict)  # final train_loss, valid_loss, ...


class Progress(Protocol):
    """Where a trainer reports; every call is cheap and safe from any thread."""

    def event(self, message: str, *, level: Literal["info", "warn", "error"] = "info", data: dict | None = None) -> None:
        """A line in the job's events. Metrics go in ``data`` as OpenAI's: ``{"step", "total_steps", "train_loss",
        "valid_loss", "train_mean_token_accuracy", ...}`` with ``type: "metrics"``."""

    def checkpoint(self, step: int, metrics: dict[str, Any], upstream_model: str | None = None) -> None:
        """A checkpoint the job lists (``/checkpoints``): its step and metrics (``train_loss``, ``valid_loss``)."""

    def cancelled(self) -> bool:
        """True once the job was cancelled: stop at the next step (the worker kills the process after a grace)."""


class TrainingCancelled(Exception):
    """Raised by a trainer that saw ``progress.cancelled()``."""


class TrainingError(Exception):
    """A failure the job's `error` shows as it is: readable, with what to change (bad data, unreachable provider)."""

    def __init__(self, message: str, *, code: str = "training_failed", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class Trainer(Protocol):
    name: TrainerName

    def train(self, spec: TrainingSpec, progress: Progress) -> TrainingResult:
        """Train synchronously; raise TrainingError (readable) or TrainingCancelled."""
