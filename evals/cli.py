"""``genai eval run`` and ``genai eval compare``: the command line of evaluation runs.

This module is the CLI glue, the one place in ``evals`` that may import ``server`` (lazily, inside the command):
for the in-process target it builds the services from the settings, an ``evals`` app and a key of its own for the
run (revoked when it ends), and hands the chat service, the caller and ``ChatCall`` to ``ServiceTarget``.

Exit status: 0 done (every gate passed), 1 a gate failed or the run could not be made, 2 a usage error (bad dataset
line, unknown evaluator in a gate, LangSmith not configured, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evals.compare import compare_runs
from evals.corpus_stores import ServiceStores
from evals.datasets import DatasetError, load_dataset, shipped_datasets
from evals.evaluators import DEFAULT_EVALUATORS, EVALUATOR_NAMES, build_evaluators
from evals.gates import GateError, parse_gate
from evals.langsmith_experiment import NOT_CONFIGURED, langsmith_configured
from evals.runner import RunResult, run_dataset
from evals.targets import HttpTarget, ServiceTarget, Target, judge_with

WithServices = Callable[[Any, Callable[[Any], Awaitable[Any]]], Awaitable[Any]]
EVALS_APP = "evals"


class UsageError(Exception):
    """A mistake in the command line or its inputs: exit status 2."""


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {value!r}")
    return number


def add_eval_commands(subparsers: Any, with_services: WithServices) -> None:
    """Register ``eval run`` and ``eval compare`` on the ``genai`` parser's subparsers."""
    commands = subparsers.add_parser("eval", help="evaluation runs over prompt datasets").add_subparsers(
        dest="eval_command", required=True
    )
    run = commands.add_parser(
        "run",
        help="run a dataset through the chat service or a server, score it, write a report",
        description="Run every example of DATASET through the target, score the answers, and write results.jsonl, "
        "results.csv, summary.json and report.html to --out. Exit 1 when a --gate fails, 2 on a usage error.",
    )
    run.add_argument("dataset", help=f"a JSONL file, or a shipped set: {', '.join(shipped_datasets())}")
    run.add_argument("--split", help="only the examples whose metadata.split is this (dev, heldout)")
    run.add_argument("--tag", action="append", default=[], help="only the examples with this tag (repeatable)")
    run.add_argument("--out", required=True, metavar="DIR", help="directory for the run's results and report")
    run.add_argument(
        "--target", default="graph", help="'graph' (the chat service in this process, default) or a server's URL"
    )
    run.add_argument("--model", metavar="ROUTE", help="model route (default: the platform's default route)")
    run.add_argument("--concurrency", type=_positive, default=4, help="requests at a time (default 4)")
    run.add_argument("--repetitions", type=_positive, default=1, metavar="K", help="answers per example (default 1)")
    run.add_argument("--api-key", help="key for an HTTP target (default: the GENAI_API_KEY variable)")
    run.add_argument(
        "--app",
        default=EVALS_APP,
        help=f"in process, answer as this existing app, with its safety settings and limits (default: {EVALS_APP})",
    )
    run.add_argument("--stream", action="store_true", help="stream every answer (the output filters' streamed path)")
    run.add_argument(
        "--evaluators",
        nargs="+",
        choices=EVALUATOR_NAMES,
        metavar="NAME",
        help=f"evaluators to run (default: {', '.join(DEFAULT_EVALUATORS)}; judge with --judge)",
    )
    run.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="EXPR",
        help="a threshold the run must meet, e.g. 'contains>=0.9' or 'latency_p95_ms<=5000' (repeatable)",
    )
    run.add_argument("--judge", metavar="ROUTE", help="grade answers against references with this model (1-5)")
    run.add_argument("--langsmith", action="store_true", help="also record the run as a LangSmith experiment")
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0)")
    run.add_argument("--seed", type=int, default=1234, help="sampling seed (default 1234)")
    run.add_argument("--max-tokens", type=_positive, help="answer length limit (default: the route's)")
    run.add_argument("--similarity-threshold", type=float, default=0.75, help="similarity pass mark (default 0.75)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary table")
    run.set_defaults(handler=partial(eval_run, with_services=with_services))

    compare = commands.add_parser("compare", help="what improved and regressed between two runs")
    compare.add_argument("run_a", metavar="RUN_A", help="the baseline run's directory")
    compare.add_argument("run_b", metavar="RUN_B", help="the new run's directory")
    compare.add_argument("--out", metavar="FILE.html", help="also write the comparison as HTML")
    compare.set_defaults(handler=eval_compare)


# ---------------------------------------------------------------- eval run


def eval_run(args: argparse.Namespace, with_services: WithServices) -> int:
    try:
        plan = _plan(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if os.environ.get("GENAI_LOG_LEVEL") is None:  # a request's log lines would bury the progress bar
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = asyncio.run(plan(with_services))
    except (DatasetError, GateError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(summary_text(result))
    if result.summary["errors"]:
        first = next(row for row in result.rows if row["error"])
        print(
            f"warning: {result.summary['errors']} of {result.summary['count']} requests failed "
            f"(first: {first['id']}: {first['error']})",
            file=sys.stderr,
        )
    failed = result.failed_gates
    for gate in failed:
        print(f"error: {gate.message}", file=sys.stderr)
    langsmith_error = result.summary["config"].get("langsmith_error")
    if langsmith_error:
        print(f"error: the run could not be recorded on LangSmith: {langsmith_error}", file=sys.stderr)
    return 1 if failed or langsmith_error else 0


def _plan(args: argparse.Namespace) -> Callable[[WithServices], Awaitable[RunResult]]:
    """Check everything that can be checked before a request is made; the run to make."""
    try:
        dataset = load_dataset(args.dataset)
        if args.split or args.tag:
            dataset = dataset.select(split=args.split, tags=args.tag)
    except DatasetError as error:
        raise UsageError(str(error)) from None
    names = list(args.evaluators or [*DEFAULT_EVALUATORS, *(["judge"] if args.judge else [])])
    if "judge" in names and not args.judge:
        raise UsageError("the judge evaluator needs --judge ROUTE (the model that grades)")
    try:
        gates = [parse_gate(text, names) for text in args.gate]
    except GateError as error:
        raise UsageError(str(error)) from None
    if args.langsmith and not langsmith_configured(os.environ):
        raise UsageError(NOT_CONFIGURED)
    params: dict[str, Any] = {"temperature": args.temperature, "seed": args.seed}
    if args.max_tokens:
        params["max_tokens"] = args.max_tokens
    progress = not args.quiet and sys.stderr.isatty()

    async def execute(target: Target, embeddings: Any) -> RunResult:
        grader = judge_with(target, args.judge) if args.judge else None
        evaluators = build_evaluators(
            names, embeddings=embeddings, similarity_threshold=args.similarity_threshold, grader=grader
        )
        result = await run_dataset(
            dataset,
            target,
            out_dir=args.out,
            evaluators=evaluators,
            model=args.model,
            params=params,
            concurrency=args.concurrency,
            repetitions=args.repetitions,
            gates=gates,
            progress=progress,
            config={"judge": args.judge, "split": args.split, "tags": args.tag, "stream": args.stream, "app": args.app},
        )
        if args.langsmith:
            await _record_on_langsmith(result, dataset, evaluators, args)
        return result

    if args.target == "graph":
        return lambda with_services: _in_process(with_services, execute, app=args.app, stream=args.stream)
    parts = urlsplit(args.target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--target must be 'graph' or a server's URL such as http://127.0.0.1:8000: {args.target!r}")
    api_key = args.api_key or os.environ.get("GENAI_API_KEY")
    if not api_key:
        raise UsageError("an HTTP target needs an API key: --api-key KEY or the GENAI_API_KEY variable")

    async def over_http(_: WithServices) -> RunResult:
        target = HttpTarget(args.target, api_key, stream=args.stream)
        try:
            return await execute(target, None)
        finally:
            await target.aclose()

    return over_http


async def _record_on_langsmith(result: RunResult, dataset: Any, evaluators: list, args: argparse.Namespace) -> None:
    """The finished run as a LangSmith experiment (its answers replayed, scored by the same evaluators); the
    experiment's name, or what went wrong, joins summary.json."""
    from evals.langsmith_experiment import replay_target, run_on_langsmith

    config = result.summary["config"]
    try:
        experiment = await run_on_langsmith(
            dataset,
            replay_target(result.rows),
            evaluators,
            metadata={k: config.get(k) for k in ("dataset_sha256", "target", "model", "git_commit")},
            concurrency=args.concurrency,
            repetitions=args.repetitions,
        )
        config["langsmith_experiment"] = getattr(experiment, "experiment_name", None)
        print(f"LangSmith experiment: {config['langsmith_experiment']}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the local run stands; the exit status reports the failure
        config["langsmith_error"] = f"{type(exc).__name__}: {exc}"
    summary_path = Path(result.out_dir) / "summary.json"
    summary_path.write_text(json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


async def _in_process(
    with_services: WithServices, execute: Callable[[Target, Any], Awaitable[RunResult]], *, app: str, stream: bool
) -> RunResult:
    """The run against this process's chat service, on the configured settings (the local model started when it
    serves chat and is not running)."""
    from server.chat_service import ChatCall
    from server.settings import Settings

    settings = Settings()
    with contextlib.ExitStack() as children:
        if settings.uses_local_model and not settings.local_model_url:
            from server.cli import start_local_model

            settings = Settings(local_model_url=start_local_model(settings, children))

        async def action(services: Any) -> RunResult:
            caller, key_id = await _evals_caller(services, app)
            try:
                stores = ServiceStores(services, caller.app_id)
                target = ServiceTarget(services.chat, caller, stores.ensure, ChatCall, stream=stream)
                return await execute(target, services.embeddings.embeddings)
            finally:
                await services.tenants.revoke_key(key_id)

        return await with_services(settings, action)


async def _evals_caller(services: Any, app: str) -> tuple[Any, str]:
    """The app to answer as (``evals`` is created when missing; another app must exist) and a key of its own for
    this run: the caller, and the key's id."""
    from errors import NotFound

    try:
        await services.tenants.get_app(app)
    except NotFound:
        if app != EVALS_APP:
            raise UsageError(f"no app named {app!r}: create it with `genai apps create {app}`") from None
        await services.tenants.create_app(EVALS_APP)
    created = await services.tenants.create_key(app, name="eval run")
    caller = await services.tenants.authenticate(created.key)
    return caller, created.record.id


def summary_text(result: RunResult) -> str:
    summary = result.summary
    config = summary["config"]
    headline = (
        f"{config['dataset_name']}: {summary['count']} answers ({config['repetitions']} per example) from "
        f"{config['target']}, model {config['model'] or '(default)'}; {summary['passed']} passed every evaluator, "
        f"{summary['errors']} errors, {summary['blocked']} blocked"
    )
    lines = [headline]
    rows = [["EVALUATOR", "APPLICABLE", "PASSED", "PASS RATE", "MEAN SCORE"]]
    for name, data in summary["evaluators"].items():
        if data["applicable"]:
            rate = f"{data['pass_rate'] * 100:.1f}%"
            rows.append([name, str(data["applicable"]), str(data["passed"]), rate, f"{data['mean_score']:.3f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    latency, tokens = summary["latency"], summary["tokens"]
    if latency["p50_ms"] is not None:
        lines.append(
            f"latency p50 {latency['p50_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms; tokens {tokens['prompt']} "
            f"prompt + {tokens['completion']} completion"
        )
    for gate in result.gates:
        lines.append(gate.message)
    lines.append(f"report: {Path(result.out_dir) / 'report.html'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- eval compare


def eval_compare(args: argparse.Namespace) -> int:
    try:
        comparison = compare_runs(args.run_a, args.run_b)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(comparison.text())
    if args.out:
        Path(args.out).write_text(comparison.html(), encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0
