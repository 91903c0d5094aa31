"""``genai``: the command line. ``genai serve`` runs the platform (and the local model when no routes are set)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import uvicorn

from errors import APIError, NotFound
from server.gateway.connection_limits import protocol as connection_protocol
from server.gateway.connection_limits import raise_open_files_limit
from server.json_logs import configure_logging, logging_config
from server.settings import Settings
from server.startup_errors import hide_password, settings_problem, unreachable

log = logging.getLogger("genai")


async def _with_services(settings: Settings, action):
    from server.services import Services

    services = Services.build(settings)
    await services.open()
    try:
        return await action(services)
    finally:
        await services.close()


async def _bootstrap_admin_key(services) -> None:
    """On first start with no admin key configured, make one and print it once."""
    if services.settings.admin_key is None and await services.tenants.count_admin_keys() == 0:
        created = await services.tenants.create_key(None, is_admin=True, name="first-start")
        print(
            f"\n  Admin key (shown once; store it safely, it is kept only as a hash):\n    {created.key}\n",
            file=sys.stderr,
        )


async def _wait_until_reachable(settings: Settings) -> None:
    """The database (and Redis, when set) answer; retried for ``startup_wait_seconds``, so that a stack started all
    at once comes up. The last error is raised when they do not answer in time."""
    from memory.redis_client import open_redis
    from storage import Database

    deadline = time.monotonic() + settings.startup_wait_seconds
    while True:
        db = Database(settings.resolved_database_url)
        try:
            await db.ping()
            if settings.redis_url:
                redis = open_redis(settings.redis_url)
                try:
                    await redis.ping()
                finally:
                    await redis.aclose()
            return
        except Exception as exc:
            problem = unreachable(exc, settings.resolved_database_url, settings.redis_url)
            if problem is None or time.monotonic() >= deadline:
                raise
            log.warning("waiting: %s", problem)
            await asyncio.sleep(1.0)
        finally:
            await db.close()


def serve(args: argparse.Namespace) -> int:
    settings = Settings()
    asyncio.run(_wait_until_reachable(settings))
    asyncio.run(_with_services(settings, _bootstrap_admin_key))
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.resolved_workers
    log.info("genai serve: %d worker process(es) on http://%s:%d", workers, host, port)
    # uvicorn re-raises a SIGTERM it caught once it has shut down; by default that ends the process before
    # `finally` runs. This handler turns it into SystemExit, so the children are stopped on every signal (also one
    # that arrives while they start).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with contextlib.ExitStack() as children:  # stopped in reverse order, after the workers
        if settings.uses_local_model and not settings.local_model_url:
            # Workers read their settings from the environment, so the URL travels there.
            os.environ["GENAI_LOCAL_MODEL_URL"] = start_local_model(settings, children)
        chroma_url = _knowledge_store(settings, workers, children)
        if chroma_url:
            os.environ["GENAI_CHROMA_URL"] = chroma_url
        if settings.start_worker:
            start_worker(settings, children)
        if workers > 1:
            # Each worker writes its metrics here and /metrics sums them; set before a worker imports
            # prometheus_client. A directory of this process's own, not in the data dir: replicas may share that.
            metrics_dir = tempfile.mkdtemp(prefix="genai-metrics-")
            children.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            log.info("metrics of the %d workers in %s", workers, metrics_dir)
        raise_open_files_limit(settings.max_connections)
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # uvicorn's httptools protocol with limits on headers, their deadline, stalled bodies and open
            # connections (answered in OpenAI's error shape): server/gateway/connection_limits.py.
            http=connection_protocol(settings),
            loop="auto",  # uvloop, from uvicorn[standard]
            log_level=settings.log_level,
            log_config=logging_config(settings.log_level),  # JSON lines, in every worker too
            access_log=False,  # the Edge layer (server/gateway/edge.py) writes it, with the request id
            # Streams still running near its end get an error event (server/shutdown.py).
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    return 0


def start_local_model(settings: Settings, children: contextlib.ExitStack) -> str:
    """Start the local model (llama.cpp with the Gemma GGUF), stopped with ``children``; its base URL."""
    from chains.local_model_process import LocalModelServer

    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log.info("starting the local model (Gemma 3 270M under llama.cpp)")
    local = LocalModelServer(
        settings.resolved_local_model_path,
        context_window=settings.local_model_context,
        threads=settings.local_model_threads,
        log_path=logs / "llama-server.log",
        startup_timeout=settings.local_model_startup_timeout,
        adapters_dir=settings.adapters_dir,  # tuned models' LoRA adapters, applied per request
    )
    children.callback(local.stop)
    local.start()
    log.info("local model ready at %s", local.base_url)
    return local.base_url


def start_worker(settings: Settings, children: contextlib.ExitStack) -> None:
    """One ``genai worker`` for fine-tuning jobs, stopped with ``children`` (SIGTERM: a running job goes back to the
    queue); it exits by itself if this process dies."""
    from chains.local_model_process import PARENT_PID_ENV, stop_process

    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    output = open(logs / "worker.log", "ab")  # noqa: SIM115 - the child's, closed with it
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "worker"],
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
        start_new_session=True,
    )
    log.info("fine-tuning worker started (pid %d, log %s)", process.pid, logs / "worker.log")

    def stop() -> None:  # the worker puts its running job back in the queue within the cancel grace
        stop_process(process, timeout=settings.fine_tuning_cancel_grace_seconds + 15)
        output.close()

    children.callback(stop)


def worker(args: argparse.Namespace) -> int:
    """Run fine-tuning jobs from the queue until SIGTERM (a running job is then queued again)."""
    from server.worker import serve_jobs

    settings = Settings()
    asyncio.run(_wait_until_reachable(settings))
    return serve_jobs(settings)


def models_list(args: argparse.Namespace) -> int:
    async def action(services):
        app = await services.tenants.get_app(args.app)
        tuned = await services.fine_tuning.store.list_models(app.id)
        return app, tuned

    app, tuned = asyncio.run(_with_services(Settings(), action))
    rows = [[model.id, model.base_model, model.trainer, model.job_id, "yes" if app.default_model == model.id else ""]
            for model in tuned]  # fmt: skip
    _table(rows, ["model", "base", "trainer", "job", "default"])
    return 0


def models_promote(args: argparse.Namespace) -> int:
    """Make a tuned model the app's default, only when its evaluation run passes the gates."""
    from evals.gates import GateError
    from evals.promotion import promotion_verdict

    try:
        verdict = promotion_verdict(args.model, args.run, args.gate, args.baseline)
    except GateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in verdict.lines:
        print(line)
    if not verdict.passed:
        print(f"not promoted: {args.model} did not pass the gate; {args.app} keeps its default", file=sys.stderr)
        return 1

    async def action(services):
        app = await services.tenants.get_app(args.app)
        if await services.fine_tuning.store.get_model(app.id, args.model) is None and args.model not in services.models:
            raise NotFound(f"The app {app.name} has no model `{args.model}`.", param="model")
        return await services.tenants.update_app(app.id, default_model=args.model)

    app = asyncio.run(_with_services(Settings(), action))
    print(f"promoted: {args.model} is now the default model of {app.name}")
    return 0


def models_demote(args: argparse.Namespace) -> int:
    app = asyncio.run(
        _with_services(Settings(), lambda services: services.tenants.update_app(args.app, default_model=None))
    )
    print(f"{app.name} now uses the platform's default model")
    return 0


def _knowledge_store(settings: Settings, workers: int, children: contextlib.ExitStack) -> str | None:
    """The Chroma every worker uses: the configured server; else, with several workers, a local ``chroma run`` on
    ``data_dir/chroma`` started here (an embedded store belongs to one process: two corrupt it); else embedded.
    Returns the URL workers must use, or None for embedded; exits with status 1 when the local server cannot start."""
    if settings.chroma_url:
        log.info("knowledge store: the Chroma server at %s (setting chroma_url)", hide_password(settings.chroma_url))
        return settings.chroma_url
    path = (settings.data_dir / "chroma").resolve()
    if workers == 1:
        log.info("knowledge store: embedded Chroma in %s", path)
        return None
    from memory.chroma import ChromaServerError, LocalChromaServer  # the `memory` package loads in ~0.5 s: on demand

    server = LocalChromaServer(path, log_path=settings.data_dir / "logs" / "chroma.log")
    children.callback(server.stop)
    try:
        server.start()
    except ChromaServerError as error:  # an operator's problem (port, disk, install): a sentence, not a traceback
        log.error("cannot start the knowledge store: %s", error)
        print(f"error: cannot start the knowledge store: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info(
        "knowledge store: a local Chroma server at %s for the %d workers (data in %s, pid %d)",
        server.url,
        workers,
        path,
        server.process.pid,
    )
    return server.url


def _exit_on_sigterm(signum: int, _frame) -> None:
    # A stop that was asked for, and done cleanly, is a success: exit status 0 (as systemd and Kubernetes expect).
    raise SystemExit(0)


def _table(rows: list[list[object]], header: list[str]) -> None:
    cells = [header] + [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _budget(value: str) -> float:
    """A monthly budget: a finite number, 0 or more (what the admin API accepts)."""
    try:
        budget = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(budget) or not 0 <= budget <= 1e12:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1e12: {value!r}")
    return budget


def _origin(value: str) -> str:
    """A browser origin for --cors-origin, checked as the admin API checks it."""
    from server.gateway.cors import check_origin

    try:
        return check_origin(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cors_text(origins: list[str] | None) -> str:
    return ",".join(origins) if origins else "none"


def _limits(args: argparse.Namespace) -> dict:
    """The limits an app or a key is created with: --rpm, --tpm, --budget."""
    return {"rpm": args.rpm, "tpm": args.tpm, "monthly_budget": args.budget}


def _safety(args: argparse.Namespace) -> dict:
    """The safety settings given with --guard, --moderation, --pii and --pii-action (only those given)."""
    from server.safety import check_pii_policy

    fields: dict = {}
    if args.guard is not None:
        fields["guard_mode"] = None if args.guard == "default" else args.guard
    if args.moderation is not None:
        fields["moderation_mode"] = None if args.moderation == "default" else args.moderation
    if args.pii is not None and args.pii in ("off", "default"):
        fields["pii_policy"] = None
    elif args.pii is not None or args.pii_action is not None:
        policy: dict = {"action": args.pii_action or "replace"}
        if args.pii not in (None, "all"):
            policy["entities"] = [entity.strip().upper() for entity in args.pii.split(",") if entity.strip()]
        fields["pii_policy"] = check_pii_policy(policy, param="--pii", ner=Settings().pii_spacy_model is not None)
    return fields


def _add_safety_options(parser: argparse.ArgumentParser) -> None:
    modes = ["off", "flag", "block", "default"]
    parser.add_argument(
        "--guard", choices=modes, help="input guard: flag records verdicts, block refuses (default: the deployment's)"
    )
    parser.add_argument("--moderation", choices=modes, help="answer moderation (block ends it with content_filter)")
    parser.add_argument(
        "--pii",
        metavar="ENTITIES",
        help="redact PII from answers: 'all', or entities like EMAIL_ADDRESS,PHONE_NUMBER; 'off' (or 'default')",
    )
    parser.add_argument("--pii-action", choices=["replace", "mask", "hash"], help="how PII is redacted")


def apps_create(args: argparse.Namespace) -> int:
    safety = _safety(args)

    async def action(services):
        return await services.tenants.create_app(
            args.name,
            system_prompt=args.system_prompt,
            allowed_models=args.models,
            cache_enabled=not args.no_cache,
            cors_origins=list(dict.fromkeys(args.cors_origins or [])) or None,
            **safety,
            **_limits(args),
        )

    app = asyncio.run(_with_services(Settings(), action))
    print(f"created app {app.name} ({app.id})")
    return 0


def apps_update(args: argparse.Namespace) -> int:
    changes = _safety(args)
    if args.system_prompt is not None:
        changes["system_prompt"] = args.system_prompt or None
    if args.cache is not None:
        changes["cache_enabled"] = args.cache == "on"
    if args.cors_origins is not None:
        changes["cors_origins"] = list(dict.fromkeys(args.cors_origins))
    elif args.no_cors_origins:
        changes["cors_origins"] = None
    app = asyncio.run(_with_services(Settings(), lambda services: services.tenants.update_app(args.name, **changes)))
    print(
        f"updated app {app.name} ({app.id}): guard {app.guard_mode or 'default'}, moderation "
        f"{app.moderation_mode or 'default'}, pii {_pii_text(app.pii_policy)}, cache {'on' if app.cache_enabled else 'off'}, "
        f"cors origins {_cors_text(app.cors_origins)}"
    )
    print("running servers apply it within a few seconds (their key cache); the admin API applies it at once")
    return 0


def _pii_text(policy: dict | None) -> str:
    return f"{policy['action']} {','.join(policy['entities'])}" if policy else "default"


def apps_list(args: argparse.Namespace) -> int:
    apps = asyncio.run(_with_services(Settings(), lambda services: services.tenants.list_apps()))
    _table(
        [
            [
                a.name,
                a.id,
                ",".join(a.allowed_models) if a.allowed_models else "all",
                a.rpm,
                a.tpm,
                a.monthly_budget,
                a.guard_mode or "default",
                a.moderation_mode or "default",
                _pii_text(a.pii_policy),
                _cors_text(a.cors_origins),
            ]
            for a in apps
        ],
        ["NAME", "ID", "MODELS", "RPM", "TPM", "BUDGET", "GUARD", "MODERATION", "PII", "CORS_ORIGINS"],
    )
    return 0


def keys_create(args: argparse.Namespace) -> int:
    async def action(services):
        return await services.tenants.create_key(
            args.app, name=args.name, expires_in_days=args.expires, **_limits(args)
        )

    created = asyncio.run(_with_services(Settings(), action))
    print(f"key {created.record.prefix}... for app {args.app} (shown once, stored only as a hash):", file=sys.stderr)
    print(created.key)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    keys = asyncio.run(_with_services(Settings(), lambda services: services.tenants.list_keys(args.app)))
    _table(
        [
            [
                k.prefix + "...",
                app or "(admin)",
                k.name,
                k.rpm,
                k.tpm,
                k.monthly_budget,
                k.expires_at,
                "revoked" if k.revoked_at else "active",
            ]
            for k, app in keys
        ],
        ["PREFIX", "APP", "NAME", "RPM", "TPM", "BUDGET", "EXPIRES_AT", "STATE"],
    )
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    key = asyncio.run(_with_services(Settings(), lambda services: services.tenants.revoke_key(args.prefix)))
    print(f"revoked {key.prefix}...")
    return 0


def feedback_export(args: argparse.Namespace) -> int:
    """The rated answers as an evaluation dataset (JSONL on stdout), for ``genai eval run``."""
    import orjson

    from server.routes.usage import parse_time
    from storage.feedback import FeedbackFilter

    where = FeedbackFilter(
        start=parse_time(args.since, "--since"),
        end=parse_time(args.until, "--until"),
        min_score=args.min_score,
        max_score=args.max_score,
        model=args.model,
    )

    async def action(services):
        app_id = (await services.tenants.get_app(args.app)).id if args.app else None
        return await services.feedback.export(app_id, where)

    examples, missing = asyncio.run(_with_services(Settings(), action))
    if args.format == "fine-tune":
        rated = len(examples)
        examples = [line for line in map(fine_tuning_example, examples) if line is not None]
        print(f"{rated - len(examples)} rated answers left out: rated low and not corrected", file=sys.stderr)
    for example in examples:
        sys.stdout.buffer.write(orjson.dumps(example) + b"\n")
    sys.stdout.flush()
    note = f"exported {len(examples)} rated answers"
    if missing:
        note += (
            f"; left out {missing} whose input was not kept (stateless requests need `store: true`, "
            "or a conversation_id)"
        )
    print(note, file=sys.stderr)
    return 0


def fine_tuning_example(example: dict) -> dict | None:
    """A rated answer as a fine-tuning line: the correction when there is one, else the answer when it was rated
    well (a thumbs up, or a score of at least 0.5); None for an answer rated low and not corrected."""
    answer = example.get("reference")
    if not answer:
        score = example["metadata"]["score"]
        if score < 0.5:
            return None
        answer = example["metadata"]["answer"]
    return {"messages": [*example["messages"], {"role": "assistant", "content": answer}]}


def _with_database(action):
    """Run ``action(db)`` on the configured database alone (no services: nothing is migrated on the way)."""
    from storage import Database

    async def run():
        db = Database(Settings().resolved_database_url)
        try:
            return await action(db)
        finally:
            await db.close()

    return asyncio.run(run())


def db_upgrade(args: argparse.Namespace) -> int:
    revision = _with_database(lambda db: db.upgrade_schema())
    print(f"database at revision {revision} (head)")
    return 0


def db_current(args: argparse.Namespace) -> int:
    from storage.migrations import head

    revision = _with_database(lambda db: db.schema_revision())
    latest = head()
    state = "up to date" if revision == latest else f"behind: head is {latest}; run `genai db upgrade`"
    print(f"database at revision {revision or 'none'} ({state})")
    return 0 if revision == latest else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genai", description="genai-platform: chat and image APIs for many apps")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error at start")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server")
    serve_parser.add_argument("--host", help="bind address (default 127.0.0.1, setting GENAI_HOST)")
    serve_parser.add_argument("--port", type=int, help="port (default 8000, setting GENAI_PORT)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (default 1, setting GENAI_WORKERS)")
    serve_parser.set_defaults(handler=serve)
    commands.add_parser(
        "worker", help="run fine-tuning jobs from the queue (genai serve starts one; run more on other machines)"
    ).set_defaults(handler=worker)

    models = commands.add_parser("models", help="an app's tuned models").add_subparsers(
        dest="models_command", required=True
    )
    listing = models.add_parser("list", help="an app's tuned models, and which is its default")
    listing.add_argument("--app", required=True, help="the app's name or id")
    listing.set_defaults(handler=models_list)
    promote = models.add_parser(
        "promote", help="make a model the app's default, when its evaluation run passes the gates"
    )
    promote.add_argument("model", help="the model (ft:...) to promote")
    promote.add_argument("--app", required=True, help="the app's name or id")
    promote.add_argument("--run", required=True, metavar="DIR", help="`genai eval run --model MODEL`'s directory")
    promote.add_argument(
        "--gate", action="append", default=[], metavar="NAME>=X",
        help="a threshold the run must meet (contains>=0.8, similarity_score>=0.7, error_rate<=0); repeatable",
    )  # fmt: skip
    promote.add_argument(
        "--baseline", metavar="DIR", help="the current model's run on the same dataset: the model must be no worse"
    )
    promote.set_defaults(handler=models_promote)
    demote = models.add_parser("demote", help="the app goes back to the platform's default model")
    demote.add_argument("--app", required=True)
    demote.set_defaults(handler=models_demote)

    apps = commands.add_parser("apps", help="client apps").add_subparsers(dest="apps_command", required=True)
    create = apps.add_parser("create", help="create an app")
    create.add_argument("name")
    create.add_argument("--system-prompt", help="default system prompt of the app")
    create.add_argument("--models", nargs="+", help="model routes the app may use (default: all)")
    create.add_argument("--rpm", type=int, help="default requests per minute of its keys")
    create.add_argument("--tpm", type=int, help="default tokens per minute of its keys")
    create.add_argument(
        "--budget", type=_budget, metavar="AMOUNT", help="monthly budget (UTC months), shared by all its keys"
    )
    create.add_argument("--no-cache", action="store_true", help="never answer its requests from the semantic cache")
    create.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        type=_origin,
        metavar="ORIGIN",
        help="a browser origin (https://app.example.com, http://127.0.0.1:5173; * for all) whose pages may call with "
        "its keys; repeat for several",
    )
    _add_safety_options(create)
    create.set_defaults(handler=apps_create)
    apps.add_parser("list", help="list apps").set_defaults(handler=apps_list)
    update = apps.add_parser("update", help="change an app's safety settings, system prompt, cache or CORS origins")
    update.add_argument("name", help="the app's name or id")
    update.add_argument("--system-prompt", help="default system prompt ('' removes it)")
    update.add_argument("--cache", choices=["on", "off"], help="the semantic cache for its requests")
    cors = update.add_mutually_exclusive_group()
    cors.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        type=_origin,
        metavar="ORIGIN",
        help="the browser origins whose pages may call with its keys (replaces its list); repeat for several",
    )
    cors.add_argument("--no-cors-origins", action="store_true", help="remove its CORS origins")
    _add_safety_options(update)
    update.set_defaults(handler=apps_update)

    feedback = commands.add_parser("feedback", help="ratings of answers").add_subparsers(
        dest="feedback_command", required=True
    )
    export = feedback.add_parser("export", help="rated answers as an evaluation dataset (JSONL on stdout)")
    export.add_argument("--since", help="rated at or after (unix seconds or an ISO date)")
    export.add_argument("--until", help="rated before (unix seconds or an ISO date)")
    export.add_argument("--app", help="one app's ratings (name or id; default: every app's)")
    export.add_argument("--min-score", type=float, help="lowest score (thumbs are 1 and -1)")
    export.add_argument("--max-score", type=float, help="highest score")
    export.add_argument("--model", help="answers of this model route")
    export.add_argument(
        "--format", choices=["eval", "fine-tune"], default="eval",
        help="eval: an evaluation dataset (default); fine-tune: OpenAI's chat fine-tuning JSONL of the well-rated "
        "answers and the corrected ones, for POST /v1/files with purpose fine-tune",
    )  # fmt: skip
    export.set_defaults(handler=feedback_export)

    database = commands.add_parser("db", help="the database schema").add_subparsers(dest="db_command", required=True)
    database.add_parser("upgrade", help="migrate to the newest schema (genai serve does this at start)").set_defaults(
        handler=db_upgrade
    )
    database.add_parser("current", help="print the schema revision; exit 1 when behind").set_defaults(
        handler=db_current
    )

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key for an app and print it (once)")
    create.add_argument("--app", required=True)
    create.add_argument("--name")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the app's)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: the app's)")
    create.add_argument(
        "--budget", type=_budget, metavar="AMOUNT", help="the key's own monthly budget, checked besides its app's"
    )
    create.add_argument("--expires", type=float, metavar="DAYS", help="expire after this many days")
    create.set_defaults(handler=keys_create)
    listing = keys.add_parser("list", help="list keys (prefixes only)")
    listing.add_argument("--app")
    listing.set_defaults(handler=keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its prefix or id")
    revoke.add_argument("prefix")
    revoke.set_defaults(handler=keys_revoke)

    from evals.cli import add_eval_commands  # genai eval run / compare (evals' own module: it imports server lazily)

    add_eval_commands(commands, _with_services)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging(os.environ.get("GENAI_LOG_LEVEL", "info"))
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except APIError as error:  # not found, already exists, ...
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # a setting that does not parse, a service that does not answer: one line, no traceback
        problem = None if args.debug else _startup_problem(exc)
        if problem is None:
            raise
        print(f"error: {problem} (genai --debug ... shows the traceback)", file=sys.stderr)
        return 1


def _startup_problem(exc: BaseException) -> str | None:
    if (problem := settings_problem(exc)) is not None:
        return problem
    try:
        settings = Settings()
    except Exception:
        return None
    return unreachable(exc, settings.resolved_database_url, settings.redis_url)


if __name__ == "__main__":
    sys.exit(main())
