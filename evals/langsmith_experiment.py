"""The same evaluation as a LangSmith experiment: the dataset uploaded (once per content), the target and the
evaluators run through ``langsmith.aevaluate``, so results sit beside the traces in LangSmith.

``langsmith_evaluator`` turns one of our evaluators into LangSmith's ``(run, example) -> {"key", "score"}``: an
example holds our fields in ``inputs`` (messages, vector_store) and ``outputs`` (reference, expected_citations,
metadata), a run's outputs are the ``Answer``'s fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from evals.datasets import Dataset, Example
from evals.evaluators import Evaluator
from evals.targets import Answer, Target

KEY_VARIABLES = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
NOT_CONFIGURED = (
    "LangSmith is not configured: set LANGSMITH_API_KEY (or LANGCHAIN_API_KEY), and LANGSMITH_ENDPOINT for a "
    "self-hosted LangSmith, then run again with --langsmith"
)


def langsmith_configured(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in KEY_VARIABLES)


def example_record(example: Example) -> dict[str, Any]:
    """An example as a LangSmith dataset example (``create_examples(examples=[...])``)."""
    return {
        "inputs": {"example_id": example.id, "messages": example.messages, "vector_store": example.vector_store},
        "outputs": {
            "reference": example.reference,
            "expected_citations": example.expected_citations,
            "metadata": example.metadata,
        },
        "metadata": {"example_id": example.id},
    }


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``: LangSmith passes schema objects, tests may pass dicts."""
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def example_from_langsmith(example: Any) -> Example:
    inputs = _field(example, "inputs") or {}
    outputs = _field(example, "outputs") or {}
    metadata = _field(example, "metadata") or {}
    return Example(
        id=str(inputs.get("example_id") or metadata.get("example_id") or _field(example, "id") or ""),
        messages=list(inputs.get("messages") or []),
        reference=outputs.get("reference"),
        expected_citations=list(outputs.get("expected_citations") or []),
        vector_store=inputs.get("vector_store"),
        metadata=dict(outputs.get("metadata") or {}),
    )


ANSWER_FIELDS = {f.name for f in dataclasses.fields(Answer)}


def answer_from_outputs(outputs: Mapping[str, Any] | None) -> Answer:
    return Answer(**{k: v for k, v in (outputs or {}).items() if k in ANSWER_FIELDS})


def langsmith_evaluator(evaluator: Evaluator) -> Callable[[Any, Any], Awaitable[dict[str, Any]]]:
    """Our evaluator as a LangSmith run evaluator; one that does not apply gives no score."""

    async def evaluate(run: Any, example: Any) -> dict[str, Any]:
        score = await evaluator.score(example_from_langsmith(example), answer_from_outputs(_field(run, "outputs")))
        if score is None:
            return {"key": evaluator.name, "score": None, "comment": "not applicable"}
        return {"key": evaluator.name, "score": score.score, "value": score.passed, "comment": score.detail or None}

    evaluate.__name__ = evaluator.name
    return evaluate


Outputs = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def answer_outputs(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of a run's results as the outputs of a LangSmith run (the ``Answer``'s fields)."""
    return {
        "text": row.get("answer") or "",
        "finish_reason": row.get("finish_reason"),
        "prompt_tokens": row.get("prompt_tokens") or 0,
        "completion_tokens": row.get("completion_tokens") or 0,
        "citations": list(row.get("citations") or []),
        "safety": row.get("safety"),
        "response_id": row.get("response_id"),
        "model": row.get("model"),
        "blocked": bool(row.get("blocked")),
        "error": row.get("error"),
        "latency_ms": row.get("latency_ms") or 0.0,
    }


def replay_target(rows: list[dict[str, Any]]) -> Outputs:
    """LangSmith's target replaying a finished run's answers (repetition by repetition): the experiment records what
    the run measured, without asking the model again."""
    pending: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["repetition"]):
        pending.setdefault(row["id"], []).append(row)

    async def replay(inputs: dict[str, Any]) -> dict[str, Any]:
        queue = pending.get(inputs.get("example_id") or "")
        if not queue:
            raise KeyError(f"no answer recorded for example {inputs.get('example_id')!r}")
        return answer_outputs(queue.pop(0) if len(queue) > 1 else queue[0])

    return replay


def live_target(target: Target, stores: Mapping[str, str], model: str | None, params: dict[str, Any]) -> Outputs:
    """LangSmith's target asking ``target`` (the run's model) for each example."""
    import time

    async def run(inputs: dict[str, Any]) -> dict[str, Any]:
        store = inputs.get("vector_store")
        begun = time.perf_counter()
        answer = await target.answer(
            list(inputs["messages"]), model=model, params=params, vector_store_ids=[stores[store]] if store else None
        )
        answer.latency_ms = (time.perf_counter() - begun) * 1000
        return dataclasses.asdict(answer)

    return run


def upload_dataset(client: Any, dataset: Dataset) -> str:
    """The LangSmith dataset of ``dataset``'s content (created on first use); its name."""
    import hashlib

    content = "\n".join([dataset.sha256, *(e.id for e in dataset.examples)])  # a selection is a dataset of its own
    name = f"genai-eval:{dataset.name}:{hashlib.sha256(content.encode()).hexdigest()[:12]}"
    if client.has_dataset(dataset_name=name):
        return name
    created = client.create_dataset(name, description=f"genai-platform evaluation set {dataset.path.name}")
    client.create_examples(dataset_id=created.id, examples=[example_record(e) for e in dataset.examples])
    return name


async def run_on_langsmith(
    dataset: Dataset,
    target: Outputs,
    evaluators: list[Evaluator],
    *,
    metadata: dict[str, Any],
    concurrency: int,
    repetitions: int,
    client: Any = None,
) -> Any:
    """Upload the dataset and run the experiment; LangSmith's ``AsyncExperimentResults``."""
    import langsmith

    client = client or langsmith.Client()
    name = upload_dataset(client, dataset)
    return await langsmith.aevaluate(
        target,
        data=name,
        evaluators=[langsmith_evaluator(e) for e in evaluators],
        experiment_prefix=f"genai-eval-{dataset.name}",
        metadata=metadata,
        max_concurrency=concurrency,
        num_repetitions=repetitions,
        client=client,
    )
