"""Gates: thresholds a run must meet (``contains>=0.9``, ``latency_p95_ms<=5000``) for CI to pass.

A gate names an evaluator (its pass rate), an evaluator's mean score (``similarity_score``) or one of the run's
metrics. Gates are parsed before the run starts, so a misspelt name is a usage error, not a wasted run.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
# Metric name -> where it is in summary.json.
METRICS: dict[str, tuple[str, ...]] = {
    "latency_p50_ms": ("latency", "p50_ms"),
    "latency_p95_ms": ("latency", "p95_ms"),
    "latency_mean_ms": ("latency", "mean_ms"),
    "latency_max_ms": ("latency", "max_ms"),
    "error_rate": ("error_rate",),
    "errors": ("errors",),
    "count": ("count",),
    "pass_rate": ("pass_rate",),
    "total_tokens": ("tokens", "total"),
    "mean_total_tokens": ("tokens", "mean_total"),
    "mean_completion_tokens": ("tokens", "mean_completion"),
}
PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class GateError(ValueError):
    """A gate that cannot be checked: malformed, or naming no evaluator or metric of the run."""


@dataclass(frozen=True)
class Gate:
    name: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.threshold:g}"

    def value(self, summary: dict[str, Any]) -> float | None:
        """The gate's value in a run's summary; None when the run has none (no example it applies to)."""
        if self.name in METRICS:
            value: Any = summary
            for key in METRICS[self.name]:
                value = (value or {}).get(key)
            return value
        evaluators = summary.get("evaluators", {})
        if self.name.endswith("_score") and self.name not in evaluators:
            return (evaluators.get(self.name.removesuffix("_score")) or {}).get("mean_score")
        return (evaluators.get(self.name) or {}).get("pass_rate")


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    @property
    def message(self) -> str:
        if self.value is None:
            return f"gate {self.gate} failed: no example of the run has a value for {self.gate.name}"
        state = "passed" if self.passed else "failed"
        return f"gate {self.gate} {state}: {self.gate.name} = {self.value:.4g}"

    def to_dict(self) -> dict[str, Any]:
        return {"gate": str(self.gate), "value": self.value, "passed": self.passed}


def gate_names(evaluators: Iterable[str]) -> list[str]:
    names = list(evaluators)
    return [*names, *(f"{n}_score" for n in names), *METRICS]


def parse_gate(text: str, evaluators: Iterable[str]) -> Gate:
    """``name OP number``; the name is one of ``evaluators`` (pass rate), ``<evaluator>_score`` or a metric."""
    match = PATTERN.match(text)
    if not match:
        raise GateError(f"malformed gate {text!r}: expected NAME OP NUMBER with OP one of >=, <=, >, < (contains>=0.9)")
    name, op, number = match.groups()
    known = gate_names(evaluators)
    if name not in known:
        raise GateError(f"gate {text!r} names no evaluator or metric of this run: {name!r} (known: {', '.join(known)})")
    return Gate(name, op, float(number))


def check_gates(gates: Iterable[Gate], summary: dict[str, Any]) -> list[GateResult]:
    results = []
    for gate in gates:
        value = gate.value(summary)
        passed = value is not None and OPERATORS[gate.op](float(value), gate.threshold)
        results.append(GateResult(gate, value, passed))
    return results
