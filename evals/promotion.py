"""The gate a tuned model passes before it serves an app: ``genai models promote MODEL --app NAME --run DIR --gate``.

The run (``genai eval run --model MODEL``) must have evaluated that very model; each gate is checked on it as
``genai eval run --gate`` checks its own, and with ``--baseline`` (the base model's run on the same dataset) the
tuned model must also be at least as good as the baseline on every gate's measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.gates import GateError, GateResult, check_gates, parse_gate
from evals.runner import load_run


@dataclass(frozen=True)
class Verdict:
    passed: bool
    lines: list[str]


def promotion_verdict(model: str, run: str | Path, gates: Sequence[str], baseline: str | Path | None = None) -> Verdict:
    """Whether ``run`` shows that ``model`` passes ``gates`` (and is no worse than ``baseline``); raises GateError
    when the runs cannot decide it (wrong model, malformed gate, no gate)."""
    if not gates:
        raise GateError("give at least one --gate (e.g. contains>=0.8): a model is promoted on evidence")
    summary = _summary(run)
    evaluated = (summary.get("config") or {}).get("model")
    if evaluated != model:
        raise GateError(f"{run} evaluated the model {evaluated!r}, not {model!r}: run `genai eval run --model {model}`")
    names = list(summary.get("evaluators", {}))
    results = check_gates([parse_gate(text, names) for text in gates], summary)
    lines = [result.message for result in results]
    passed = all(result.passed for result in results)
    if baseline is not None:
        base = _summary(baseline)
        same = ("dataset_sha256", "split", "tags")
        if [(base.get("config") or {}).get(k) for k in same] != [(summary.get("config") or {}).get(k) for k in same]:
            raise GateError(f"{baseline} and {run} evaluated different datasets: compare on the same examples")
        for result in results:
            ok, line = _no_worse(result, base)
            passed = passed and ok
            lines.append(line)
    return Verdict(passed, lines)


def _no_worse(result: GateResult, base: dict[str, Any]) -> tuple[bool, str]:
    gate = result.gate
    before = gate.value(base)
    if before is None or result.value is None:
        return result.value is not None, f"baseline {gate.name}: {before} -> {result.value}"
    higher_is_better = gate.op in (">=", ">")
    ok = result.value >= before if higher_is_better else result.value <= before
    state = "no worse than" if ok else "worse than"
    return ok, f"{gate.name} = {result.value:.4g}: {state} the baseline's {before:.4g}"


def _summary(run: str | Path) -> dict[str, Any]:
    try:
        return load_run(run)[1]
    except FileNotFoundError as error:
        raise GateError(str(error)) from None
