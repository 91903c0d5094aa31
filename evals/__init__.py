"""Evaluation runs over prompt datasets: the runner, evaluators, datasets, reports and comparisons.

``run_dataset`` sends every example of a JSONL dataset through a target (the chat service in process, or a server's
HTTP API), scores the answers and writes the run; ``compare_runs`` says what changed between two runs. ``evals.cli``
is the ``genai eval`` command line around them.
"""

from evals.compare import Comparison, ExampleChange, compare_runs
from evals.corpus_stores import ServiceStores
from evals.datasets import Dataset, DatasetError, Example, load_dataset, resolve_dataset, shipped_datasets
from evals.evaluators import DEFAULT_EVALUATORS, EVALUATOR_NAMES, Evaluator, Score, build_evaluators
from evals.gates import Gate, GateError, GateResult, check_gates, parse_gate
from evals.runner import RunResult, load_run, run_dataset
from evals.targets import Answer, HttpTarget, ServiceTarget, Target

__all__ = [
    "DEFAULT_EVALUATORS",
    "EVALUATOR_NAMES",
    "Answer",
    "Comparison",
    "Dataset",
    "DatasetError",
    "Evaluator",
    "Example",
    "ExampleChange",
    "Gate",
    "GateError",
    "GateResult",
    "HttpTarget",
    "RunResult",
    "Score",
    "ServiceStores",
    "ServiceTarget",
    "Target",
    "build_evaluators",
    "check_gates",
    "compare_runs",
    "load_dataset",
    "load_run",
    "parse_gate",
    "resolve_dataset",
    "run_dataset",
    "shipped_datasets",
]
