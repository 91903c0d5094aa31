"""Side by side with LiteLLM's proxy (issue #14): the same mock upstream, the same load client, one run.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/vs_litellm.py                 # about 5 minutes on 2 cores
    .venv/bin/python bench/vs_litellm.py --workers 1     # one worker each only
    .venv/bin/python bench/vs_litellm.py --database postgresql   # the platform on a fresh PostgreSQL database

LiteLLM's proxy (``litellm[proxy]``, ``--litellm-version``, default 1.108.7) is installed into its own virtualenv
(``.cache/litellm-venv``) the first time; nothing of it is imported here. Both gateways route model ``mock`` to
``bench/mock_upstream.py`` (a fixed short reply). For one and for two workers each, this drives, with the client of
``bench/harness.py`` (raw asyncio + httptools, one keep-alive connection per concurrent worker):

* p50 and p99 at concurrency 1 (requests alternate between the targets), plain and streamed to ``[DONE]``;
* requests/s and p99 at concurrency 32 (segments L P C C P L, so that drift in the machine's load cancels out);

for LiteLLM (stateless), the platform stateless, and the platform continuing a server-side conversation (Redis
memory). The platform runs with every node on but unused by these requests: the semantic cache on (every request a
miss), the input guard and moderation in ``flag`` mode, no vector store named. Prints each figure, the ratios
platform / LiteLLM, the targets of #14, and the platform's resident memory per worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway_overhead import Target, forget_conversations, fresh_conversations, latency_c1, throughput
from harness import (
    ROOT,
    Children,
    add_common_args,
    child_env,
    free_port,
    percentile,
    platform_env,
    run,
    start_mock_upstream,
    start_platform,
    wait_http,
)

from tests.postgres import fresh_postgres_database

LITELLM_VENV = ROOT / ".cache" / "litellm-venv"
# LiteLLM refuses to start without a master key; with one (and no database) it checks each request's key, as the
# platform checks its own: both sides authenticate every request.
LITELLM_KEY = "sk-bench-" + secrets.token_hex(16)


def ensure_litellm(version: str) -> Path:
    """LiteLLM's proxy in its own virtualenv (installed once); its ``litellm`` command."""
    command = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / f".installed-{version}"
    if not stamp.exists():
        print(f"installing litellm[proxy]=={version} into {LITELLM_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", f"litellm[proxy]=={version}"], check=True
        )
        stamp.touch()
    return command


def start_litellm(children: Children, command: Path, upstream_url: str, workers: int) -> str:
    config = children.workdir / "litellm.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": "mock",
                        "litellm_params": {"model": "openai/mock", "api_base": f"{upstream_url}/v1", "api_key": "sk-mock"},
                    }
                ],
                "litellm_settings": {"drop_params": True, "telemetry": False},
            }
        )
    )
    port = free_port()
    env = child_env(
        LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="true", LITELLM_MASTER_KEY=LITELLM_KEY
    )
    name = f"litellm-{workers}w"
    process = children.popen(
        name,
        [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)],
        env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health/liveliness", process, children.workdir / f"{name}.log", timeout=180)
    return url


def serving_pid(port: int) -> int:
    """The pid of the ``serve`` process started on ``port`` (start_platform keeps no handle)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and str(port).encode() in argv:
                return int(entry.name)
    raise RuntimeError(f"no serve process on port {port}")


def resident_mib(pid: int) -> list[float]:
    """Resident memory (MiB) of ``pid`` and each of its descendants that is a Python process (the workers)."""
    found = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        if "python" in cmdline and "llama" not in cmdline and "chroma" not in cmdline:
            found.append(rss / 1024)
        children_file = Path(f"/proc/{current}/task/{current}/children")
        if children_file.exists():
            pending += [int(child) for child in children_file.read_text().split()]
    return found


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    litellm = ensure_litellm(args.litellm_version)
    upstream_url, _ = start_mock_upstream(children)
    routes = [{"name": "mock", "base_url": f"{upstream_url}/v1", "max_retries": 0}]
    results: dict[str, Any] = {}
    created: list[str] = []
    databases = contextlib.ExitStack()
    try:
        for workers in args.workers:
            lite_url = start_litellm(children, litellm, upstream_url, workers)
            database = (
                fresh_postgres_database() if args.database == "postgresql" else contextlib.nullcontext(None)
            )
            database_url = databases.enter_context(database)  # dropped at the end of the run
            env = platform_env(
                args, children.workdir / f"data-{workers}w", GENAI_MODEL_ROUTES=json.dumps(routes),
                GENAI_WORKERS=str(workers), GENAI_START_WORKER="false",
                **({"GENAI_DATABASE_URL": database_url} if database_url else {}),
            )  # fmt: skip
            port = free_port()
            url, key = start_platform(children, f"platform-{workers}w", port, env, roots["platform"])
            lite = Target("litellm", f"{lite_url}/v1", args.client, LITELLM_KEY)
            stateless = Target("platform", f"{url}/v1", args.client, key)
            conversing = Target("conversation", f"{url}/v1", args.client, key)
            targets = [lite, stateless, conversing]
            print(f"{workers} worker(s): LiteLLM at {lite_url}, the platform at {url}", flush=True)
            for stream in (False, True):
                mode = "stream" if stream else "plain"
                created += fresh_conversations([conversing], args.requests // 4)
                lat = asyncio.run(latency_c1(targets, stream, args.requests, args.warmup))
                created += fresh_conversations([conversing], args.concurrency)
                thr = asyncio.run(throughput(targets, stream, args.concurrency, args.segment_warmup, args.seconds))
                results[(workers, mode)] = {"c1": lat, "cn": thr}
                print(f"  {mode}: done", flush=True)
            results[(workers, "rss")] = resident_mib(serving_pid(port))
            children.stop(f"platform-{workers}w")
            children.stop(f"litellm-{workers}w")
    finally:
        children.stop("mock-upstream")
        asyncio.run(forget_conversations(args.redis_url, created))
        children.stop_all()  # the platforms, before their databases are dropped
        databases.close()
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    rows = []
    for workers in args.workers:
        for mode in ("plain", "stream"):
            got = results[(workers, mode)]
            for name in ("litellm", "platform", "conversation"):
                c1 = got["c1"][name]
                cn = got["cn"][name]
                rows.append((workers, mode, name, percentile(c1, 50), percentile(c1, 99), cn["rps"], percentile(cn["latencies"], 99)))
    print(f"{'workers':>7} {'mode':6} {'target':13} {'p50 c=1':>9} {'p99 c=1':>9} {'rps c=' + str(args.concurrency):>9} {'p99 c=' + str(args.concurrency):>10}")
    for workers, mode, name, p50, p99, rps, p99n in rows:
        print(f"{workers:>7} {mode:6} {name:13} {p50:8.2f}ms {p99:8.2f}ms {rps:9.1f} {p99n:9.1f}ms")
    print("\nratios, platform / LiteLLM (targets of #14: p50 <= 0.33, rps >= 3, p99 at c=32 <= 1; a conversation turn adds <= 3 ms at p50)")
    for workers in args.workers:
        for mode in ("plain", "stream"):
            got = results[(workers, mode)]
            lite, plat, conv = (got["c1"][n] for n in ("litellm", "platform", "conversation"))
            p50 = percentile(plat, 50) / percentile(lite, 50)
            rps = got["cn"]["platform"]["rps"] / got["cn"]["litellm"]["rps"]
            p99 = percentile(got["cn"]["platform"]["latencies"], 99) / percentile(got["cn"]["litellm"]["latencies"], 99)
            turn = percentile(conv, 50) - percentile(plat, 50)
            print(
                f"  {workers} worker(s) {mode:6}: p50 {p50:.2f} {'MET' if p50 <= 1 / 3 else 'NOT MET'}; "
                f"rps {rps:.2f} {'MET' if rps >= 3 else 'NOT MET'}; p99 {p99:.2f} {'MET' if p99 <= 1 else 'NOT MET'}; "
                f"conversation turn +{turn:.2f} ms {'MET' if turn <= 3 else 'NOT MET'}"
            )
    for workers in args.workers:
        rss = results[(workers, "rss")]
        print(f"platform resident memory, {workers} worker(s): " + ", ".join(f"{mib:.0f} MiB" for mib in rss) + " (supervisor first)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--litellm-version", default="1.108.7")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare (default 1 2)")
    parser.add_argument("--requests", type=int, default=200, help="requests per target at concurrency 1 (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target at concurrency 32")
    parser.add_argument("--segment-warmup", type=float, default=2.0)
    parser.add_argument(
        "--database", choices=("sqlite", "postgresql"), default="sqlite",
        help="the platform's database: SQLite in its data dir (default), or a fresh database on the local PostgreSQL",
    )  # fmt: skip
    args = parser.parse_args(argv)
    plan = [
        f"LiteLLM proxy {args.litellm_version} (own venv {LITELLM_VENV}) and the platform, {args.workers} worker(s) each",
        f"the platform's database: {args.database}",
        f"concurrency 1: {args.requests} requests per target; concurrency {args.concurrency}: {args.seconds:g} s per target",
    ]
    return run(args, "Side by side with LiteLLM's proxy", plan, {"platform": args.platform_ref}, measure, report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
