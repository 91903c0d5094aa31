"""Two runs side by side: which examples improved or regressed (matched by id and repetition), how each
evaluator's pass rate and the latency moved. For a change of prompt, model or retrieval settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.report import esc, page, table
from evals.runner import load_run

LATENCY_KEYS = ("p50_ms", "p95_ms", "mean_ms", "max_ms")


@dataclass(frozen=True)
class ExampleChange:
    id: str
    repetition: int
    # Evaluators that went from fail to pass (improved) or from pass to fail (regressed); "error" when the request
    # stopped (or started) failing.
    improved: tuple[str, ...]
    regressed: tuple[str, ...]
    latency_delta_ms: float | None = None
    answer_a: str = ""
    answer_b: str = ""

    @property
    def status(self) -> str:
        if self.improved and self.regressed:
            return "mixed"
        return "improved" if self.improved else "regressed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repetition": self.repetition,
            "status": self.status,
            "improved": list(self.improved),
            "regressed": list(self.regressed),
            "latency_delta_ms": self.latency_delta_ms,
        }


@dataclass
class Comparison:
    run_a: str
    run_b: str
    changes: list[ExampleChange]
    # evaluator -> {"a": pass rate, "b": pass rate, "delta": b - a}
    evaluators: dict[str, dict[str, float | None]]
    latency: dict[str, dict[str, float | None]]
    matched: int
    only_in_a: list[tuple[str, int]] = field(default_factory=list)
    only_in_b: list[tuple[str, int]] = field(default_factory=list)

    @property
    def improved(self) -> list[ExampleChange]:
        return [c for c in self.changes if c.status == "improved"]

    @property
    def regressed(self) -> list[ExampleChange]:
        return [c for c in self.changes if c.status == "regressed"]

    @property
    def mixed(self) -> list[ExampleChange]:
        return [c for c in self.changes if c.status == "mixed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "matched": self.matched,
            "changes": [c.to_dict() for c in self.changes],
            "evaluators": self.evaluators,
            "latency": self.latency,
            "only_in_a": [list(k) for k in self.only_in_a],
            "only_in_b": [list(k) for k in self.only_in_b],
        }

    def text(self) -> str:
        """The comparison as plain-text tables for the terminal."""
        out = [f"A: {self.run_a}", f"B: {self.run_b}", f"{self.matched} answers matched by id and repetition", ""]
        out += _text_table(
            ["EVALUATOR", "A", "B", "DELTA"],
            [[name, _pct(d["a"]), _pct(d["b"]), _delta_pct(d["delta"])] for name, d in self.evaluators.items()],
        )
        out.append("")
        out += _text_table(
            ["LATENCY", "A ms", "B ms", "DELTA ms"],
            [[key, _num(d["a"]), _num(d["b"]), _signed(d["delta"])] for key, d in self.latency.items()],
        )
        for title, changes in (("IMPROVED", self.improved), ("REGRESSED", self.regressed), ("MIXED", self.mixed)):
            out.append("")
            out.append(f"{title} ({len(changes)})")
            if changes:
                out += _text_table(
                    ["ID", "REP", "BETTER", "WORSE", "LATENCY DELTA ms"],
                    [
                        [
                            c.id,
                            str(c.repetition),
                            ",".join(c.improved),
                            ",".join(c.regressed),
                            _signed(c.latency_delta_ms),
                        ]
                        for c in changes
                    ],
                )
        for label, keys in (("only in A", self.only_in_a), ("only in B", self.only_in_b)):
            if keys:
                out.append("")
                out.append(f"{label}: " + ", ".join(f"{i}#{r}" for i, r in keys))
        return "\n".join(out)

    def html(self) -> str:
        parts = [
            "<h1>Evaluation runs compared</h1>",
            (
                f"<p>A: <code>{esc(self.run_a)}</code><br>B: <code>{esc(self.run_b)}</code><br>"
                f"{self.matched} answers matched by id and repetition.</p>"
            ),
            "<h2>Pass rate per evaluator</h2>",
            table(
                ["evaluator", "A", "B", "delta"],
                [
                    [f"<td>{esc(x)}</td>" for x in (name, _pct(d["a"]), _pct(d["b"]), _delta_pct(d["delta"]))]
                    for name, d in self.evaluators.items()
                ],
                [_direction(d["delta"]) for d in self.evaluators.values()],
            ),
            "<h2>Latency</h2>",
            table(
                ["", "A ms", "B ms", "delta ms"],
                [
                    [f"<td>{esc(x)}</td>" for x in (key, _num(d["a"]), _num(d["b"]), _signed(d["delta"]))]
                    for key, d in self.latency.items()
                ],
            ),
        ]
        for title, changes in (("Regressed", self.regressed), ("Mixed", self.mixed), ("Improved", self.improved)):
            parts.append(f"<h2>{title} ({len(changes)})</h2>")
            if changes:
                parts.append(
                    table(
                        ["id", "rep", "better", "worse", "latency delta ms", "answer A", "answer B"],
                        [
                            [f"<td>{esc(c.id)}</td>", f"<td>{c.repetition}</td>",
                             f"<td>{esc(', '.join(c.improved))}</td>", f"<td>{esc(', '.join(c.regressed))}</td>",
                             f"<td>{esc(_signed(c.latency_delta_ms))}</td>",
                             f'<td class="text">{esc(c.answer_a)}</td>', f'<td class="text">{esc(c.answer_b)}</td>']
                            for c in changes
                        ],
                    )
                )  # fmt: skip
        for label, keys in (("Only in A", self.only_in_a), ("Only in B", self.only_in_b)):
            if keys:
                parts.append(f"<h2>{label}</h2><p>{esc(', '.join(f'{i}#{r}' for i, r in keys))}</p>")
        return page("Evaluation runs compared", "\n".join(parts))


def compare_runs(run_a: str | Path, run_b: str | Path) -> Comparison:
    """Compare two run directories (``run_a`` the baseline)."""
    rows_a, summary_a = load_run(run_a)
    rows_b, summary_b = load_run(run_b)
    by_key_a = {(r["id"], r["repetition"]): r for r in rows_a}
    by_key_b = {(r["id"], r["repetition"]): r for r in rows_b}
    changes = []
    matched = 0
    for key, a in by_key_a.items():
        b = by_key_b.get(key)
        if b is None:
            continue
        matched += 1
        change = _change(a, b)
        if change is not None:
            changes.append(change)
    names = list(dict.fromkeys([*summary_a.get("evaluators", {}), *summary_b.get("evaluators", {})]))
    evaluators = {}
    for name in names:
        rate_a = (summary_a.get("evaluators", {}).get(name) or {}).get("pass_rate")
        rate_b = (summary_b.get("evaluators", {}).get(name) or {}).get("pass_rate")
        if rate_a is not None or rate_b is not None:  # an evaluator that applied to nothing in either run says nothing
            evaluators[name] = {"a": rate_a, "b": rate_b, "delta": _minus(rate_b, rate_a)}
    latency = {}
    for key in LATENCY_KEYS:
        value_a = summary_a.get("latency", {}).get(key)
        value_b = summary_b.get("latency", {}).get(key)
        latency[key] = {"a": value_a, "b": value_b, "delta": _minus(value_b, value_a)}
    return Comparison(
        run_a=str(run_a),
        run_b=str(run_b),
        changes=changes,
        evaluators=evaluators,
        latency=latency,
        matched=matched,
        only_in_a=[k for k in by_key_a if k not in by_key_b],
        only_in_b=[k for k in by_key_b if k not in by_key_a],
    )


def _change(a: dict[str, Any], b: dict[str, Any]) -> ExampleChange | None:
    improved, regressed = [], []
    if a.get("error") and not b.get("error"):
        improved.append("error")
    elif b.get("error") and not a.get("error"):
        regressed.append("error")
    for name in dict.fromkeys([*a["scores"], *b["scores"]]):
        score_a, score_b = a["scores"].get(name), b["scores"].get(name)
        if score_a is None or score_b is None or score_a["passed"] == score_b["passed"]:
            continue
        (improved if score_b["passed"] else regressed).append(name)
    if not improved and not regressed:
        return None
    latency = None if a.get("error") or b.get("error") else round(b["latency_ms"] - a["latency_ms"], 2)
    return ExampleChange(
        a["id"], a["repetition"], tuple(improved), tuple(regressed), latency, a.get("answer", ""), b.get("answer", "")
    )


def _minus(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 4)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _delta_pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f} pts"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def _direction(delta: float | None) -> str:
    return "pass" if delta and delta > 0 else "fail" if delta and delta < 0 else ""


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
