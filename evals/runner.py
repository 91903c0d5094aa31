"""An evaluation run: every example (K times) through a target, scored by the evaluators, written to a directory.

The directory holds ``results.jsonl`` and ``results.csv`` (a row per example and repetition), ``summary.json``
(pass rates, latency, tokens, the run's configuration) and ``report.html``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.datasets import Dataset, Example, load_dataset
from evals.evaluators import Evaluator, build_evaluators
from evals.gates import Gate, GateResult, check_gates, parse_gate
from evals.targets import Answer, Target

DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.0, "seed": 1234}
ROW_COLUMNS = [
    "id",
    "repetition",
    "passed",
    "answer",
    "finish_reason",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "blocked",
    "error",
]


@dataclass
class RunResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    gates: list[GateResult] = field(default_factory=list)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [result for result in self.gates if not result.passed]


async def run_dataset(
    dataset: Dataset | str | Path,
    target: Target,
    *,
    out_dir: str | Path,
    evaluators: Sequence[Evaluator] | Iterable[str] | None = None,
    model: str | None = None,
    params: dict[str, Any] | None = None,
    concurrency: int = 4,
    repetitions: int = 1,
    gates: Iterable[Gate | str] = (),
    progress: bool = False,
    config: dict[str, Any] | None = None,
) -> RunResult:
    """Run ``dataset`` through ``target`` and write the run to ``out_dir``.

    ``params`` are the generation parameters of every request (default: temperature 0 and a fixed seed, for runs that
    can be repeated); ``config`` adds entries to the summary's ``config``. Gates given as text are parsed first: a bad
    one raises ``GateError`` before any request is made.
    """
    if concurrency < 1 or repetitions < 1:
        raise ValueError("concurrency and repetitions must be at least 1")
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    chosen = _evaluators(evaluators)
    names = [e.name for e in chosen]
    checked = [g if isinstance(g, Gate) else parse_gate(g, names) for g in gates]
    params = dict(DEFAULT_PARAMS if params is None else params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)

    stores, store_errors = await _stores(data, target)
    jobs = [(example, rep) for example in data.examples for rep in range(repetitions)]
    semaphore = asyncio.Semaphore(concurrency)
    bar = _progress(len(jobs), progress, data.name)

    async def run_one(example: Example, repetition: int) -> dict[str, Any]:
        async with semaphore:
            if example.vector_store in store_errors:
                answer = Answer(error=store_errors[example.vector_store])
            else:
                store_ids = [stores[example.vector_store]] if example.vector_store else None
                begun = time.perf_counter()
                answer = await target.answer(example.messages, model=model, params=params, vector_store_ids=store_ids)
                answer.latency_ms = (time.perf_counter() - begun) * 1000
            scores = {e.name: await _score(e, example, answer) for e in chosen}
        if bar is not None:
            bar.update(1)
        return make_row(example, repetition, answer, scores)

    try:
        rows = await asyncio.gather(*(run_one(example, rep) for example, rep in jobs))
    finally:
        if bar is not None:
            bar.close()
    finished = datetime.now(UTC)
    run_config = {
        "dataset": str(data.path),
        "dataset_name": data.name,
        "dataset_sha256": data.sha256,
        "target": target.description,
        "model": model,
        "params": params,
        "concurrency": concurrency,
        "repetitions": repetitions,
        "evaluators": names,
        "vector_stores": stores,
        "git_commit": git_commit(),
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 3),
        **(config or {}),
    }
    summary = summarise(rows, names, run_config)
    results = check_gates(checked, summary)
    summary["gates"] = [r.to_dict() for r in results]
    write_run(out, rows, summary, names)
    return RunResult(out, rows, summary, results)


async def _score(evaluator: Evaluator, example: Example, answer: Answer) -> Any:
    """An evaluator that breaks fails its example, with the reason, rather than the run."""
    try:
        return await evaluator.score(example, answer)
    except Exception as exc:  # noqa: BLE001 - reported in the row
        from evals.evaluators import Score

        return Score(0.0, False, f"evaluator error: {type(exc).__name__}: {exc}")


def _evaluators(evaluators: Sequence[Evaluator] | Iterable[str] | None) -> list[Evaluator]:
    if evaluators is None:
        return build_evaluators()
    given = list(evaluators)
    if all(isinstance(e, str) for e in given):
        return build_evaluators(given)  # type: ignore[arg-type]
    return given  # type: ignore[return-value]


async def _stores(data: Dataset, target: Target) -> tuple[dict[str, str], dict[str, str]]:
    """Each corpus's vector store, made once for the run; a corpus that fails fails its examples, not the run."""
    stores: dict[str, str] = {}
    errors: dict[str, str] = {}
    for corpus in data.corpora:
        try:
            stores[corpus] = await target.ensure_store(corpus, data.corpus_dir(corpus))
        except Exception as exc:  # noqa: BLE001 - reported in each example of the corpus
            errors[corpus] = f"vector store for corpus {corpus!r}: {type(exc).__name__}: {exc}"
    return stores, errors


def _progress(total: int, enabled: bool, label: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"eval {label}", unit="ex", file=sys.stderr, dynamic_ncols=True)


def make_row(example: Example, repetition: int, answer: Answer, scores: dict[str, Any]) -> dict[str, Any]:
    applicable = {name: score for name, score in scores.items() if score is not None}
    return {
        "id": example.id,
        "repetition": repetition,
        "passed": not answer.error and all(score.passed for score in applicable.values()),
        "question": example.question,
        "reference": example.reference,
        "answer": answer.text,
        "finish_reason": answer.finish_reason,
        "latency_ms": round(answer.latency_ms, 2),
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.total_tokens,
        "blocked": answer.blocked,
        "error": answer.error,
        "citations": answer.citations,
        "safety": answer.safety,
        "response_id": answer.response_id,
        "model": answer.model,
        "scores": {name: score.to_dict() if score is not None else None for name, score in scores.items()},
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarise(rows: Sequence[dict[str, Any]], evaluators: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    count = len(rows)
    errors = sum(1 for r in rows if r["error"])
    answered = [r for r in rows if not r["error"]]
    latencies = [r["latency_ms"] for r in answered]
    per_evaluator: dict[str, Any] = {}
    for name in evaluators:
        scores = [r["scores"][name] for r in rows if r["scores"].get(name) is not None]
        passed = sum(1 for s in scores if s["passed"])
        per_evaluator[name] = {
            "applicable": len(scores),
            "passed": passed,
            "failed": len(scores) - passed,
            "pass_rate": _round(passed / len(scores)) if scores else None,
            "mean_score": _round(sum(s["score"] for s in scores) / len(scores)) if scores else None,
        }
    prompt = sum(r["prompt_tokens"] for r in answered)
    completion = sum(r["completion_tokens"] for r in answered)
    return {
        "count": count,
        "errors": errors,
        "error_rate": _round(errors / count) if count else None,
        "blocked": sum(1 for r in rows if r["blocked"]),
        "passed": sum(1 for r in rows if r["passed"]),
        "pass_rate": _round(sum(1 for r in rows if r["passed"]) / count) if count else None,
        "evaluators": per_evaluator,
        "latency": {
            "p50_ms": _round(percentile(latencies, 50), 2),
            "p95_ms": _round(percentile(latencies, 95), 2),
            "mean_ms": _round(sum(latencies) / len(latencies), 2) if latencies else None,
            "max_ms": _round(max(latencies), 2) if latencies else None,
        },
        "tokens": {
            "prompt": prompt,
            "completion": completion,
            "total": prompt + completion,
            "mean_prompt": _round(prompt / len(answered), 2) if answered else None,
            "mean_completion": _round(completion / len(answered), 2) if answered else None,
            "mean_total": _round((prompt + completion) / len(answered), 2) if answered else None,
        },
        "config": config,
    }


def csv_columns(evaluators: Sequence[str]) -> list[str]:
    return [*ROW_COLUMNS, *(f"{name}_{part}" for name in evaluators for part in ("score", "pass"))]


def csv_row(row: dict[str, Any], evaluators: Sequence[str]) -> dict[str, Any]:
    flat = {column: row.get(column) for column in ROW_COLUMNS}
    for name in evaluators:
        score = row["scores"].get(name)
        flat[f"{name}_score"] = "" if score is None else score["score"]
        flat[f"{name}_pass"] = "" if score is None else score["passed"]
    return {key: "" if value is None else value for key, value in flat.items()}


def write_run(out: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any], evaluators: Sequence[str]) -> None:
    from evals.report import render_report

    with (out / "results.jsonl").open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (out / "results.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=csv_columns(evaluators))
        writer.writeheader()
        writer.writerows(csv_row(row, evaluators) for row in rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_report(rows, summary), encoding="utf-8")


def load_run(directory: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A written run's rows and summary."""
    path = Path(directory)
    if not (path / "results.jsonl").is_file() or not (path / "summary.json").is_file():
        raise FileNotFoundError(f"{path}: not an evaluation run (results.jsonl and summary.json expected)")
    with (path / "results.jsonl").open(encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return rows, json.loads((path / "summary.json").read_text(encoding="utf-8"))


def git_commit() -> str | None:
    """The commit of the working tree the run came from, when it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
