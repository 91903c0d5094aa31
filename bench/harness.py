"""What the benchmarks in this folder share: child processes, ports, the platform, the load client.

``gateway_overhead.py`` and ``local_model_tokens.py`` import it as a sibling module (a
script's own folder is first on ``sys.path``). It puts the project root on ``sys.path``
too, for the benchmarks' imports of the platform's packages.

* ``Children``: child processes in their own sessions, stopped in reverse order on exit,
  exception, Ctrl-C or SIGTERM; ``free_port``, ``child_env``, ``wait_http``; the benchmarks'
  own ``redis-server`` (``start_redis``) and mock upstream (``start_mock_upstream``).
* The platform: ``platform_source`` (the working tree, or a ``git archive`` of a ref),
  ``start_platform`` (``python -m server.cli serve``, after ``provision_key`` made an app
  and an API key in its fresh database, for either source layout).
* The load client: ``connection`` (raw asyncio + httptools, or httpx), ``check``; ``WORDS`` for made-up messages.
* ``percentile``; ``add_common_args`` and ``run``, which prints the machine and the load,
  runs a benchmark among its children and keeps the logs when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform as platform_module
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httptools  # noqa: E402  (installed with uvicorn[standard])
import httpx  # noqa: E402

from chains.local_model_process import stop_process  # noqa: E402

if TYPE_CHECKING:
    from chains.local_model_process import LocalModelServer

REDIS_URL = "redis://127.0.0.1:6379/14"


# --------------------------------------------------------------------------- processes


class Children:
    """Child processes, stopped in reverse order on exit (normal, exception, Ctrl-C, SIGTERM)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack: list[tuple[str, Callable[[], None]]] = []

    def __enter__(self) -> Children:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()

    @staticmethod
    def _on_signal(signum, _frame) -> None:
        raise SystemExit(128 + signum)

    def popen(self, name: str, command: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        log.close()

        def stop() -> None:
            stop_process(process, timeout=10.0)

        self._stack.append((name, stop))
        return process

    def local_model(self, server: LocalModelServer) -> LocalModelServer:
        self._stack.append(("llama.cpp", server.stop))
        return server.start()

    def stop(self, name: str) -> None:
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index][0] == name:
                _, stop = self._stack.pop(index)
                stop()

    def stop_all(self) -> None:
        while self._stack:
            _, stop = self._stack.pop()
            with contextlib.suppress(Exception):
                stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**genai: str) -> dict[str, str]:
    """The environment without any GENAI_ setting of the caller, plus ours; no tracing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(genai)
    env.update(PYTHONUNBUFFERED="1", LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false")
    return env


def start_redis(children: Children, port: int, timeout: float = 30.0) -> subprocess.Popen:
    """A ``redis-server`` of the benchmark's own on ``port`` (keeping nothing on disk, so that it can be killed and
    started again there empty), once it answers PING."""
    import redis

    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = children.popen("redis", command, child_env())
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                log = (children.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with code {process.returncode}\n{log}")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return process
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {port} not ready within {timeout:g} s")
            time.sleep(0.02)
    finally:
        client.close()


def start_mock_upstream(children: Children) -> tuple[str, subprocess.Popen]:
    """``mock_upstream.py`` on a free port, answering; its base URL (``http://127.0.0.1:P``, the API under ``/v1``)
    and its process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", str(port)]
    process = children.popen("mock-upstream", command, child_env())
    wait_http(f"{url}/v1/models", process, children.workdir / "mock-upstream.log")
    return url, process


# Words that user messages of the benchmarks are made of (seeded choices: the same text in every run).
WORDS = (
    "the river stone garden window market winter letter forest engine harbor silver candle mountain village bridge "
    "teacher morning island basket ladder thunder meadow lantern pocket orchard kettle compass blanket quiet old new "
    "and of to in is was for with on at by from about under over between people city road school music story "
    "light water paper table friend family summer history science language travel weather kitchen library"
).split()


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{url}: the process exited with code {process.returncode}\n{tail}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout:g} s (last: {last})")


# --------------------------------------------------------------------------- the platform


# Run in the platform's source tree with its environment: when the platform has API keys,
# create an app and a key for it in the fresh database and print the key. The source tree
# decides which layout (the editable install would find the working tree's packages):
# storage/ (storage.tenants, storage.engine) or, before it, memory/ (memory.tenants, memory.db).
PROVISION = r"""
import asyncio, pathlib

tree = pathlib.Path.cwd()
if (tree / "storage" / "tenants.py").exists():
    from storage.engine import Database
    from storage.tenants import TenantStore
elif (tree / "memory" / "tenants.py").exists():
    from memory.db import Database
    from memory.tenants import TenantStore
else:
    TenantStore = None  # a version without API keys
from server.settings import Settings

async def main():
    if TenantStore is None:
        return print("")
    db = Database(Settings().resolved_database_url)
    try:
        # Migrations where the version has them (genai serve upgrades the same way), else create_all.
        await (db.upgrade_schema() if hasattr(db, "upgrade_schema") else db.create_schema())
        tenants = TenantStore(db)
        await tenants.create_app("bench")
        # Limits far above what the run reaches, so every request is counted in Redis (RPM before, TPM after).
        print((await tenants.create_key("bench", name="bench", rpm=1_000_000, tpm=100_000_000)).key)
    finally:
        await db.close()

asyncio.run(main())
"""


def provision_key(root: Path, env: dict[str, str]) -> str | None:
    """An API key of a fresh app (no limits) when the platform knows API keys, else None."""
    done = subprocess.run(
        [sys.executable, "-c", PROVISION], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not create an API key for the benchmark:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return lines[-1].strip() if lines and lines[-1].strip() else None


def platform_env(args: argparse.Namespace, data_dir: Path, **genai: str) -> dict[str, str]:
    """A platform's environment: ``genai`` settings, Redis, its own data dir, the log level asked for; one worker
    unless ``genai`` sets ``GENAI_WORKERS`` (with Redis, genai serve would start one per core)."""
    return child_env(
        **{"GENAI_WORKERS": "1", **genai},
        GENAI_REDIS_URL=args.redis_url,
        GENAI_DATA_DIR=str(data_dir),
        **({"GENAI_LOG_LEVEL": args.platform_log_level} if args.platform_log_level else {}),
    )


def start_platform(children: Children, name: str, port: int, env: dict[str, str], root: Path) -> tuple[str, str | None]:
    """The platform (``genai serve``) from ``root`` on ``port``, ready; its URL and an API key (or None)."""
    Path(env["GENAI_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    api_key = provision_key(root, env)
    command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = children.popen(name, command, env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", process, children.workdir / f"{name}.log")
    return url, api_key


def platform_source(ref: str | None, target: Path) -> tuple[Path, str]:
    """Where a platform runs from, and a description: the working tree, or ``git archive ref`` in ``target``."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=True).stdout.strip()

    if ref:
        try:
            commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"{ref!r} is not a commit of {ROOT}: {exc.stderr.strip()}") from None
        target.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return target, f"git archive of {ref} ({commit[:10]}) in {target}"
    try:
        head = git("rev-parse", "--short=10", "HEAD")
        dirty = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
        state = f"HEAD {head}" + (f" + uncommitted changes in {len(dirty)} files" if dirty else ", clean")
    except (subprocess.CalledProcessError, FileNotFoundError):
        state = "not a git checkout"
    return ROOT, f"working tree {ROOT} ({state})"


# --------------------------------------------------------------------------- HTTP client


@dataclass
class Reply:
    status: int
    body: bytes
    first_byte: float  # perf_counter when the first body bytes arrived
    done: float  # perf_counter when the whole response (end of stream) arrived


class RawConnection:
    """One keep-alive HTTP/1.1 connection, parsed with httptools: far cheaper than a
    general client, so that on a 2-core machine the load generator steals little CPU."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        parsed = httpx.URL(base_url)
        self.host, self.port = parsed.host, parsed.port
        self.prefix = parsed.path.rstrip("/")
        self.auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._body: list[bytes] = []
        self._first_byte = 0.0
        self._complete = False

    # httptools callbacks
    def on_body(self, data: bytes) -> None:
        if not self._body:
            self._first_byte = time.perf_counter()
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._complete = True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, path: str, payload: bytes) -> Reply:
        reused = self.writer is not None
        try:
            return await self._post(path, payload)
        except (ConnectionError, asyncio.IncompleteReadError, httptools.HttpParserError):
            await self.close()
            if not reused:
                raise
            return await self._post(path, payload)  # the server closed an idle keep-alive connection

    async def _post(self, path: str, payload: bytes) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: */*\r\n{self.auth}Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self._body, self._complete, self._first_byte = [], False, 0.0
        parser = httptools.HttpResponseParser(self)
        self.writer.write(head + payload)
        while not self._complete:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed")
            parser.feed_data(data)
        done = time.perf_counter()
        if not parser.should_keep_alive():
            await self.close()
        return Reply(parser.get_status_code(), b"".join(self._body), self._first_byte or done, done)


class HttpxConnection:
    """The same interface over one ``httpx.AsyncClient`` (``--client httpx``)."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=300, limits=httpx.Limits(max_keepalive_connections=1))
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    async def close(self) -> None:
        await self.client.aclose()

    async def post(self, path: str, payload: bytes) -> Reply:
        body: list[bytes] = []
        first = 0.0
        url = self.client.base_url.path.rstrip("/") + path
        async with self.client.stream("POST", url, content=payload, headers=self.headers) as response:
            async for data in response.aiter_raw():
                if not body:
                    first = time.perf_counter()
                body.append(data)
        done = time.perf_counter()
        return Reply(response.status_code, b"".join(body), first or done, done)


def connection(kind: str, base_url: str, api_key: str | None = None):
    return RawConnection(base_url, api_key) if kind == "raw" else HttpxConnection(base_url, api_key)


def check(reply: Reply, stream: bool, what: str) -> None:
    if reply.status != 200:
        raise RuntimeError(f"{what}: HTTP {reply.status}: {reply.body[:500]!r}")
    if stream and not reply.body.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"{what}: the stream did not end with [DONE]: {reply.body[-500:]!r}")


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --------------------------------------------------------------------------- running a benchmark


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark here has: load client, Redis, the platform's log level and source, logs."""
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="load client (default raw asyncio + httptools)")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"Redis for the platform's memory (default {REDIS_URL})")
    parser.add_argument(
        "--platform-log-level",
        help="GENAI_LOG_LEVEL for the platform (default: its own default, info, with an access log line per request)",
    )
    parser.add_argument(
        "--platform-ref",
        help="run the platform from `git archive REF` instead of the working tree (e.g. HEAD while the tree is being edited)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the child processes' logs")


def run(
    args: argparse.Namespace,
    title: str,
    plan: list[str],
    refs: dict[str, str | None],
    measure: Callable[[argparse.Namespace, Children, dict[str, Path]], Any],
    report: Callable[[Any, argparse.Namespace], None],
) -> int:
    """Print the machine and the plan, ``measure`` among child processes, then ``report``.

    ``refs`` names the platforms' sources (``{"platform": args.platform_ref}``, None for the
    working tree); ``measure`` gets their roots by the same names. The children's logs go
    to a temporary directory, kept with ``--keep-logs`` or when the run fails.
    """
    workdir = Path(tempfile.mkdtemp(prefix="genai-bench-"))
    started = time.perf_counter()
    keep = args.keep_logs
    try:
        sources = {name: platform_source(ref, workdir / f"{name}-src") for name, ref in refs.items()}
        print(title)
        print(
            f"  machine: {os.cpu_count()} CPUs (usable {len(os.sched_getaffinity(0))}), {platform_module.machine()}, "
            f"Python {platform_module.python_version()}, load average {os.getloadavg()[0]:.2f}"
        )
        cpus = len(os.sched_getaffinity(0))
        if os.getloadavg()[0] > 0.5 * cpus:
            print(f"  WARNING: load average {os.getloadavg()[0]:.2f} on {cpus} CPUs before the run: other processes compete, figures will be noisy")
        print(f"  client: {args.client} (one keep-alive connection per concurrent worker)")
        for line in plan:
            print(f"  {line}")
        level = f"GENAI_LOG_LEVEL={args.platform_log_level}" if args.platform_log_level else "default log level"
        print(f"  platform: {sys.executable} -m server.cli serve (1 worker, {level}, logs to a file)")
        for name, (_, description) in sources.items():
            print(f"  {name} code: {description}")
        print(f"  logs: {workdir}")
        print(flush=True)
        with Children(workdir) as children:
            try:
                results = measure(args, children, {name: root for name, (root, _) in sources.items()})
            except KeyboardInterrupt:
                print("\ninterrupted: stopping child processes", file=sys.stderr)
                return 130
    except Exception:
        keep = True  # the child processes' logs tell what went wrong
        print(f"\nthe benchmark failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)
    print()
    print(f"total time {time.perf_counter() - started:.0f} s, load average now {os.getloadavg()[0]:.2f}")
    return 0
