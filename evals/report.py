"""The run's HTML report: one self-contained page (figures as base64 PNG, no script or style from elsewhere), so it
can be attached to a CI job and read offline."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.fail td.state { background: #fbe3e3; color: #8a1010; }
tr.pass td.state { background: #e4f5e4; color: #135e13; }
td.text { max-width: 36em; white-space: pre-wrap; word-break: break-word; }
.figures img { max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }
code { background: #f6f6f6; padding: 1px 3px; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def figure_png(draw) -> str:
    """A matplotlib figure drawn by ``draw(ax)`` as a data URL."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.4), dpi=100)
    axes = figure.add_subplot()
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def latency_histogram(latencies: Sequence[float]) -> str:
    def draw(ax):
        ax.hist(latencies or [0], bins=min(30, max(5, len(latencies) // 2)), color="#4878a8")
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("answers")
        ax.set_title("Latency")

    return figure_png(draw)


def pass_rate_bars(rates: dict[str, float]) -> str:
    def draw(ax):
        names = list(rates)
        values = [rates[n] * 100 for n in names]
        bars = ax.barh(
            names, values, color=["#3c8d3c" if v >= 90 else "#c08a1e" if v >= 50 else "#b33" for v in values]
        )
        ax.bar_label(bars, labels=[f"{v:.0f}%" for v in values], padding=2)
        ax.set_xlim(0, 110)
        ax.invert_yaxis()
        ax.set_xlabel("pass rate (%)")
        ax.set_title("Pass rate per evaluator")

    return figure_png(draw)


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] | None = None) -> str:
    """Cells are HTML already (escape them first)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    lines = []
    for index, row in enumerate(rows):
        cls = f' class="{classes[index]}"' if classes else ""
        lines.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_report(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    config = summary.get("config", {})
    evaluators = summary.get("evaluators", {})
    rates = {name: data["pass_rate"] for name, data in evaluators.items() if data["pass_rate"] is not None}
    latencies = [r["latency_ms"] for r in rows if not r["error"]]
    parts = [f"<h1>Evaluation: {esc(config.get('dataset_name', ''))}</h1>"]
    parts.append(
        table(
            ["dataset", "sha256", "target", "model", "git commit", "started", "finished"],
            [
                [
                    f"<td>{esc(v)}</td>"
                    for v in (
                        config.get("dataset"),
                        (config.get("dataset_sha256") or "")[:16],
                        config.get("target"),
                        config.get("model") or "(default)",
                        (config.get("git_commit") or "")[:12],
                        config.get("started_at"),
                        config.get("finished_at"),
                    )
                ]
            ],
        )
    )
    latency, tokens = summary.get("latency", {}), summary.get("tokens", {})
    parts.append(
        f"<p>{summary['count']} answers, {summary['passed']} passed every evaluator, {summary['errors']} errors, "
        f"{summary.get('blocked', 0)} blocked. Latency p50 {_fmt(latency.get('p50_ms'), 4)} ms, "
        f"p95 {_fmt(latency.get('p95_ms'), 4)} ms. Tokens: {tokens.get('prompt', 0)} prompt, "
        f"{tokens.get('completion', 0)} completion.</p>"
    )
    parts.append("<h2>Evaluators</h2>")
    parts.append(
        table(
            ["evaluator", "applicable", "passed", "pass rate", "mean score"],
            [
                [
                    f"<td>{esc(name)}</td>",
                    f"<td>{data['applicable']}</td>",
                    f"<td>{data['passed']}</td>",
                    f"<td>{esc(_fmt(data['pass_rate']))}</td>",
                    f"<td>{esc(_fmt(data['mean_score']))}</td>",
                ]
                for name, data in evaluators.items()
            ],
        )
    )
    if summary.get("gates"):
        parts.append("<h2>Gates</h2>")
        parts.append(
            table(
                ["gate", "value", "result"],
                [
                    [f"<td>{esc(g['gate'])}</td>", f"<td>{esc(_fmt(g['value'], 4))}</td>",
                     f'<td class="state">{"passed" if g["passed"] else "FAILED"}</td>']
                    for g in summary["gates"]
                ],
                ["pass" if g["passed"] else "fail" for g in summary["gates"]],
            )
        )  # fmt: skip
    parts.append('<h2>Figures</h2><div class="figures">')
    parts.append(f'<img alt="latency histogram" src="{latency_histogram(latencies)}">')
    if rates:
        parts.append(f'<img alt="pass rate per evaluator" src="{pass_rate_bars(rates)}">')
    parts.append("</div>")
    parts.append("<h2>Examples (failures first)</h2>")
    ordered = sorted(rows, key=lambda r: (r["passed"], r["id"], r["repetition"]))
    parts.append(
        table(
            ["", "id", "rep", "question", "reference", "answer", "scores", "latency ms", "tokens", "error"],
            [_example_cells(row) for row in ordered],
            ["pass" if row["passed"] else "fail" for row in ordered],
        )
    )
    parts.append(f"<h2>Configuration</h2><pre>{esc(json.dumps(config, indent=2, ensure_ascii=False))}</pre>")
    return page(f"Evaluation {config.get('dataset_name', '')}", "\n".join(parts))


def _example_cells(row: dict[str, Any]) -> list[str]:
    scores = []
    for name, score in row["scores"].items():
        if score is None:
            continue
        mark = "✓" if score["passed"] else "✗"
        detail = f" ({score['detail']})" if score.get("detail") else ""
        scores.append(f"{mark} {name} {score['score']:.2f}{detail}")
    answer = row["answer"] if not row.get("blocked") else "[blocked by the platform]"
    return [
        f'<td class="state">{"pass" if row["passed"] else "FAIL"}</td>',
        f"<td>{esc(row['id'])}</td>",
        f"<td>{row['repetition']}</td>",
        f'<td class="text">{esc(row.get("question"))}</td>',
        f'<td class="text">{esc(row.get("reference"))}</td>',
        f'<td class="text">{esc(answer)}</td>',
        f'<td class="text">{esc(chr(10).join(scores))}</td>',
        f"<td>{esc(_fmt(row['latency_ms'], 5))}</td>",
        f"<td>{row['prompt_tokens']}+{row['completion_tokens']}</td>",
        f'<td class="text">{esc(row.get("error"))}</td>',
    ]
