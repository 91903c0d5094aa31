"""How much the platform adds in front of a model server: latency, throughput, tokens per second.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/gateway_overhead.py            # both parts (~2.5 minutes on 2 idle cores)
    .venv/bin/python bench/gateway_overhead.py --skip-local-model
    .venv/bin/python bench/gateway_overhead.py --local-model   # only the local-model part

Part 1, gateway overhead. A mock OpenAI-compatible upstream (``bench/mock_upstream.py``,
fixed short reply, no model) and the platform (``python -m server.cli serve``, the
``genai serve`` entry point) run as separate processes; the platform routes model
``mock`` to the upstream and keeps conversation memory in Redis. The same request
bodies go to the upstream directly and, with a ``conversation_id``, to the platform:

* latency at concurrency 1 (p50, p99; direct and platform requests alternate);
* requests per second at concurrency 32 (direct and platform segments in the order
  D, P, P, D, so that drift in the machine's load cancels out);

each for plain JSON and for streamed (``"stream": true``, timed to the end of the stream)
requests. Target: the platform adds at most 8 ms at p50, concurrency 1.

Part 2, local model. The local llama.cpp server (Gemma 3 270M) and a platform on the
embedded defaults pointed at it (``GENAI_LOCAL_MODEL_URL``). Streamed requests with the
same prompts and generation parameters alternate direct and platform request by
request, cycling through the prompts; completion tokens come from the ``usage`` of
non-streaming requests, which give the same text at temperature 0. Target: platform
tokens/s within 5% of direct.

When the platform has API keys, an app and a key are created in its fresh temporary
database before it starts, and every request (both sides) carries the key. Redis
memory keys of the run's conversations are deleted at the end (DB 14 by default).
``--platform-ref HEAD`` runs the platform from ``git archive HEAD`` instead of the
working tree. Every child process is stopped on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httptools  # noqa: E402  (installed with uvicorn[standard])
import httpx  # noqa: E402
import orjson  # noqa: E402

from chains.local_model import LOCAL_MODEL_NAME  # noqa: E402
from chains.local_model_process import LocalModelServer  # noqa: E402

MODEL_PATH = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
REDIS_URL = "redis://127.0.0.1:6379/14"
MEMORY_PREFIX = "genai:memory:"  # memory.history.RedisMemory's key prefix
TARGET_ADDED_P50_MS = 8.0
TARGET_TOKENS_RATIO = 0.95

# Part 2: prompts that give long single-paragraph answers from the base model (its chat
# format always stops at a blank line; see chains/llama_server.py).
LOCAL_PROMPTS = [
    "Describe a busy city market in great detail: the stalls, the smells, the sounds, the people and the goods for sale.",
    "Write a long essay about the ocean and the creatures that live in it.",
    "Tell the long story of a young sailor who crosses the Atlantic alone in a small boat.",
]
assert len(LOCAL_PROMPTS) % 2 == 1, "an odd number of prompts, so that alternating sides cover every prompt"
# The platform's local route adds repeat_penalty and top_k (chains.local_model.LOCAL_DEFAULTS);
# direct requests send the same values, so both sides generate the same tokens.
LOCAL_PARAMS = {"max_tokens": 128, "temperature": 0.0, "top_p": 0.9, "stop": []}
LOCAL_DIRECT_EXTRA = {"repeat_penalty": 1.2, "top_k": 40}


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
            terminate(process)

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


def terminate(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process we started (by its pid), SIGKILL it when it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


# Run in the platform's source tree with its environment: when the platform has API keys
# (memory.tenants), create an app and a key for it in the fresh database and print the key.
PROVISION = r"""
import asyncio, pathlib
import memory
from server.settings import Settings
from storage.engine import Database

async def main():
    # Look in this source tree only (the editable install would find the working tree's module).
    if not (pathlib.Path(memory.__file__).parent / "tenants.py").exists():
        return print("")
    from storage.tenants import TenantStore
    db = Database(Settings().resolved_database_url)
    try:
        await db.create_schema()
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


def start_platform(children: Children, name: str, port: int, env: dict[str, str], root: Path) -> tuple[str, str | None]:
    """The platform (``genai serve``) from ``root`` on ``port``, ready; its URL and an API key (or None)."""
    Path(env["GENAI_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    api_key = provision_key(root, env)
    command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = children.popen(name, command, env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", process, children.workdir / f"{name}.log")
    return url, api_key


def platform_source(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """Where the platform runs from, and a description: the working tree, or a ``git archive`` of a ref."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=True).stdout.strip()

    if args.platform_ref:
        commit = git("rev-parse", "--verify", f"{args.platform_ref}^{{commit}}")
        target = workdir / "platform-src"
        target.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return target, f"git archive of {args.platform_ref} ({commit[:10]}) in {target}"
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


def sse_contents(body: bytes) -> list[str]:
    """The non-empty content deltas of an SSE chat stream."""
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            event = orjson.loads(line[6:])
            for choice in event.get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    out.append(content)
    return out


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


# --------------------------------------------------------------------------- part 1


@dataclass
class Target:
    """Where requests go and how their bodies look."""

    name: str
    base_url: str
    client: str
    api_key: str | None = None  # sent to both sides alike
    conversations: list[str] = field(default_factory=list)  # platform only
    counter: int = 0

    def body(self, stream: bool, slot: int | None = None) -> bytes:
        self.counter += 1
        payload: dict[str, Any] = {
            "model": "mock",
            "messages": [{"role": "user", "content": f"Hello there, this is benchmark message {self.counter}."}],
            "stream": stream,
        }
        if self.conversations:
            index = self.counter if slot is None else slot
            payload["conversation_id"] = self.conversations[index % len(self.conversations)]
        return orjson.dumps(payload)


async def new_conversations(platform: Target, count: int) -> list[str]:
    conn = connection(platform.client, platform.base_url, platform.api_key)
    ids = []
    try:
        for n in range(count):
            payload = {
                "model": "mock",
                "messages": [{"role": "user", "content": f"Start of benchmark conversation {n}."}],
                "conversation_id": "new",
            }
            reply = await conn.post("/chat/completions", orjson.dumps(payload))
            check(reply, False, "create conversation")
            ids.append(orjson.loads(reply.body)["conversation_id"])
    finally:
        await conn.close()
    return ids


async def history_lengths(redis_url: str, ids: list[str]) -> list[int]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        return [await redis.llen(MEMORY_PREFIX + cid) for cid in ids]
    finally:
        await redis.aclose()


async def forget_conversations(redis_url: str, ids: list[str]) -> None:
    from redis.asyncio import Redis

    if not ids:
        return
    redis = Redis.from_url(redis_url)
    try:
        for start in range(0, len(ids), 500):
            await redis.delete(*(MEMORY_PREFIX + cid for cid in ids[start : start + 500]))
    finally:
        await redis.aclose()


async def latency_c1(direct: Target, platform: Target, stream: bool, requests: int, warmup: int) -> dict[str, list[float]]:
    """Sequential requests, direct and platform alternating (order flipped every pair)."""
    conns = {t.name: connection(t.client, t.base_url, t.api_key) for t in (direct, platform)}
    timings: dict[str, list[float]] = {direct.name: [], platform.name: []}
    try:
        for i in range(warmup + requests):
            pair = (direct, platform) if i % 2 == 0 else (platform, direct)
            for target in pair:
                body = target.body(stream)
                started = time.perf_counter()
                reply = await conns[target.name].post("/chat/completions", body)
                check(reply, stream, target.name)
                if i >= warmup:
                    timings[target.name].append((reply.done - started) * 1000)
    finally:
        for conn in conns.values():
            await conn.close()
    return timings


async def throughput_segment(target: Target, stream: bool, concurrency: int, warmup_s: float, seconds: float) -> tuple[int, list[float]]:
    """``concurrency`` workers, each on its own connection (and conversation), for warm-up + seconds."""
    conns = [connection(target.client, target.base_url, target.api_key) for _ in range(concurrency)]
    begin = time.perf_counter()
    window = (begin + warmup_s, begin + warmup_s + seconds)
    done: list[tuple[float, float]] = []

    async def worker(slot: int) -> None:
        while True:
            started = time.perf_counter()
            if started >= window[1]:
                return
            reply = await conns[slot].post("/chat/completions", target.body(stream, slot))
            check(reply, stream, target.name)
            done.append((started, reply.done))

    try:
        await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    finally:
        for conn in conns:
            await conn.close()
    inside = [(s, e) for s, e in done if window[0] <= e <= window[1]]
    return len(inside), [(e - s) * 1000 for s, e in inside if s >= window[0]]


async def throughput(direct: Target, platform: Target, stream: bool, concurrency: int, warmup_s: float, seconds: float) -> dict[str, dict[str, Any]]:
    """Segments D, P, P, D of ``seconds / 2`` each; rps = completions in the windows / their length."""
    results = {t.name: {"count": 0, "seconds": 0.0, "latencies": []} for t in (direct, platform)}
    for target in (direct, platform, platform, direct):
        count, latencies = await throughput_segment(target, stream, concurrency, warmup_s, seconds / 2)
        results[target.name]["count"] += count
        results[target.name]["seconds"] += seconds / 2
        results[target.name]["latencies"] += latencies
    for result in results.values():
        result["rps"] = result["count"] / result["seconds"]
    return results


def part_gateway(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    upstream_port, platform_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    upstream = children.popen(
        "mock-upstream", [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", str(upstream_port)], child_env()
    )
    wait_http(f"{upstream_url}/v1/models", upstream, children.workdir / "mock-upstream.log")

    routes = [{"name": "mock", "base_url": f"{upstream_url}/v1", "max_retries": 0}]
    env = child_env(
        GENAI_MODEL_ROUTES=json.dumps(routes),
        GENAI_REDIS_URL=args.redis_url,
        GENAI_DATA_DIR=str(children.workdir / "data-gateway"),
        **({"GENAI_LOG_LEVEL": args.platform_log_level} if args.platform_log_level else {}),
    )
    platform_url, api_key = start_platform(children, "platform-gateway", platform_port, env, args.platform_root)
    print(f"mock upstream   {upstream_url}  (pid {upstream.pid})")
    print(f"platform        {platform_url}  -> model `mock` at {upstream_url}/v1, Redis memory {args.redis_url}")
    print(f"                {'an app API key made for the run (rpm and tpm limits counted in Redis)' if api_key else 'no API key (this version has none)'}")
    print(flush=True)

    direct = Target("direct", f"{upstream_url}/v1", args.client, api_key)
    gateway = Target("platform", f"{platform_url}/v1", args.client, api_key)
    created: list[str] = []
    results: dict[str, Any] = {}
    try:
        for stream in (False, True):
            mode = "stream" if stream else "plain"
            # Fresh conversations per phase, so that the history the platform loads stays short
            # and alike across phases (about requests / conversations turns each).
            gateway.conversations = asyncio.run(new_conversations(gateway, args.conversations))
            created += gateway.conversations
            t0 = time.perf_counter()
            lat = asyncio.run(latency_c1(direct, gateway, stream, args.requests, args.warmup))
            hist_c1 = asyncio.run(history_lengths(args.redis_url, gateway.conversations))
            print(f"  {mode:6s} c=1   {args.requests} + {args.warmup} warm-up requests each side: {time.perf_counter() - t0:5.1f} s", flush=True)

            gateway.conversations = asyncio.run(new_conversations(gateway, args.concurrency))
            created += gateway.conversations
            t0 = time.perf_counter()
            thr = asyncio.run(throughput(direct, gateway, stream, args.concurrency, args.segment_warmup, args.seconds))
            hist_cn = asyncio.run(history_lengths(args.redis_url, gateway.conversations))
            print(f"  {mode:6s} c={args.concurrency}  {args.seconds:g} s measured each side: {time.perf_counter() - t0:5.1f} s", flush=True)
            results[mode] = {"c1": lat, "cn": thr, "history_c1": hist_c1, "history_cn": hist_cn}

        # What the platform forwards for a continued conversation (memory + the new turn).
        gateway.conversations = gateway.conversations[:1]
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        httpx.post(
            f"{gateway.base_url}/chat/completions", content=gateway.body(False), headers=headers, timeout=30
        ).raise_for_status()
        forwarded = httpx.get(f"{upstream_url}/_last", timeout=5).json()
        results["forwarded_messages"] = len(forwarded.get("messages") or [])
        results["forwarded_keys"] = sorted(forwarded)
    finally:
        # The platform first: after an interrupt, requests still in flight there would
        # rebuild the memory lists from SQL after they were deleted.
        children.stop("platform-gateway")
        children.stop("mock-upstream")
        asyncio.run(forget_conversations(args.redis_url, created))
    return results


def report_gateway(results: dict[str, Any], args: argparse.Namespace) -> None:
    width = 74
    print()
    print("=" * width)
    print("Part 1: gateway overhead (mock upstream; platform with Redis memory, conversation_id set)")
    print("=" * width)
    print(f"{'':28s}{'direct':>12s}{'platform':>12s}{'added / ratio':>20s}")
    verdicts = []
    for mode in ("plain", "stream"):
        r = results[mode]
        label = "plain JSON" if mode == "plain" else "stream (to [DONE])"
        d, p = r["c1"]["direct"], r["c1"]["platform"]
        dp50, pp50 = percentile(d, 50), percentile(p, 50)
        dp99, pp99 = percentile(d, 99), percentile(p, 99)
        cn = r["cn"]
        drps, prps = cn["direct"]["rps"], cn["platform"]["rps"]
        dl50, pl50 = percentile(cn["direct"]["latencies"], 50), percentile(cn["platform"]["latencies"], 50)
        print(f"{label}")
        print(f"  {'c=1   p50 latency, ms':26s}{dp50:12.2f}{pp50:12.2f}{pp50 - dp50:+17.2f} ms")
        print(f"  {'c=1   p99 latency, ms':26s}{dp99:12.2f}{pp99:12.2f}{pp99 - dp99:+17.2f} ms")
        print(f"  {f'c={args.concurrency}  requests/s':26s}{drps:12.1f}{prps:12.1f}{prps / drps:17.3f} x")
        print(f"  {f'c={args.concurrency}  p50 latency, ms':26s}{dl50:12.2f}{pl50:12.2f}{pl50 - dl50:+17.2f} ms")
        h1, hn = r["history_c1"], r["history_cn"]
        print(
            f"  memory: {len(h1)} conversations at c=1 ending with {min(h1)}-{max(h1)} messages each; "
            f"{len(hn)} at c={args.concurrency} ending with {min(hn)}-{max(hn)}"
        )
        added = pp50 - dp50
        ok = added <= TARGET_ADDED_P50_MS
        verdicts.append((label, added, prps / drps, ok))
    print("-" * width)
    print(f"Target: the platform adds at most {TARGET_ADDED_P50_MS:g} ms at p50, concurrency 1.")
    for label, added, ratio, ok in verdicts:
        print(
            f"  {label:20s} added p50 {added:+7.2f} ms  ->  {'MET' if ok else 'NOT MET'};  "
            f"rps ratio (platform/direct) at c={args.concurrency}: {ratio:.3f}"
        )
    print(
        f"  (a continued conversation's request reached the upstream with {results['forwarded_messages']} messages, "
        f"memory + the new turn; fields {', '.join(results['forwarded_keys'])})"
    )


# --------------------------------------------------------------------------- part 2


@dataclass
class Generation:
    side: str
    prompt: int
    seconds: float
    first_byte_s: float
    tokens: int
    chunks: int
    text: str
    matched: bool  # the streamed text is the non-streaming reference's: its usage counts its tokens
    window: int  # in a window, each side streams every prompt once, the sides alternating


def normalized(text: str) -> str:
    return " ".join(text.split())


async def local_runs(
    direct_url: str,
    platform_url: str,
    windows: int,
    client: str,
    api_key: str | None,
    count_tokens: Callable[[str], int],
    budget_s: float,
) -> tuple[list[Generation], dict[int, dict[str, Any]]]:
    """Non-streaming references, then timed streams in windows of D P D P D P requests.

    llama.cpp reuses the KV cache of the previous request's common prefix, and a different
    split of the prompt evaluation can tip a greedy choice. So requests always cycle through
    the prompts in the same order: each request for prompt i follows a request for prompt
    i-1 (on either side) and both sides generate the same tokens. With an odd number of
    prompts and the sides alternating request by request, a window of 2 x prompts requests
    streams every prompt once per side, the two sides never more than a request apart.
    """
    conns = {"direct": connection(client, direct_url, api_key), "platform": connection(client, platform_url, api_key)}

    def body(side: str, prompt: str, stream: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": LOCAL_MODEL_NAME,
            "messages": [{"role": "user", "content": prompt}],
            **LOCAL_PARAMS,
            "stream": stream,
        }
        if side == "direct":
            payload.update(LOCAL_DIRECT_EXTRA)
        return orjson.dumps(payload)

    async def plain(side: str, prompt: str) -> dict[str, Any]:
        reply = await conns[side].post("/chat/completions", body(side, prompt, False))
        check(reply, False, f"{side} local model")
        data = orjson.loads(reply.body)
        choice = data["choices"][0]
        return {"tokens": data["usage"]["completion_tokens"], "text": choice["message"]["content"], "finish": choice["finish_reason"]}

    reference: dict[int, dict[str, Any]] = {index: {} for index in range(len(LOCAL_PROMPTS))}
    runs: list[Generation] = []
    try:
        for prompt in LOCAL_PROMPTS:  # warm-up: model pages, the platform's tokenizer, the cache cycle
            await plain("direct", prompt)
        for side in ("direct", "platform"):
            for index, prompt in enumerate(LOCAL_PROMPTS):
                reference[index][side] = await plain(side, prompt)
        deadline = time.perf_counter() + budget_s
        count = len(LOCAL_PROMPTS)
        sides = ("direct", "platform")
        for window in range(windows):
            if runs and time.perf_counter() > deadline:
                break  # out of time, at a window boundary: both sides ran every prompt as often
            for step in range(2 * count):
                index, prompt = step % count, LOCAL_PROMPTS[step % count]
                side = sides[(step + window) % 2]
                started = time.perf_counter()
                reply = await conns[side].post("/chat/completions", body(side, prompt, True))
                check(reply, True, f"{side} local model (stream)")
                contents = sse_contents(reply.body)
                text = "".join(contents)
                ref = reference[index][side]
                matched = normalized(text) == normalized(ref["text"])
                runs.append(
                    Generation(
                        side=side,
                        prompt=index,
                        seconds=reply.done - started,
                        first_byte_s=reply.first_byte - started,
                        tokens=ref["tokens"] if matched else count_tokens(text),
                        chunks=len(contents),
                        text=text,
                        matched=matched,
                        window=window,
                    )
                )
    finally:
        for conn in conns.values():
            await conn.close()
    return runs, reference


def gguf_token_counter(path: Path) -> Callable[[str], int]:
    """Tokens of a text by the model's own vocabulary (only for streams that differ from their reference)."""
    vocab = None

    def count(text: str) -> int:
        nonlocal vocab
        if vocab is None:  # loaded on first use: it writes llama.cpp's notices to stderr
            from llama_cpp import Llama

            vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        return len(vocab.tokenize((" " + text.strip()).encode("utf-8"), add_bos=False))

    return count


def part_local(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    t0 = time.perf_counter()
    server = LocalModelServer(
        MODEL_PATH, context_window=2048, threads=2, log_path=children.workdir / "llama-server.log"
    )
    children.local_model(server)
    print(f"llama.cpp       {server.base_url}  (pid {server.process.pid}, ready in {time.perf_counter() - t0:.1f} s)")
    port = free_port()
    env = child_env(
        GENAI_LOCAL_MODEL_URL=server.base_url,
        GENAI_LOCAL_MODEL_PATH=str(MODEL_PATH),
        GENAI_LOCAL_MODEL_CONTEXT="2048",
        GENAI_REDIS_URL=args.redis_url,
        GENAI_DATA_DIR=str(children.workdir / "data-local"),
        **({"GENAI_LOG_LEVEL": args.platform_log_level} if args.platform_log_level else {}),
    )
    platform_url, api_key = start_platform(children, "platform-local", port, env, args.platform_root)
    print(f"platform        {platform_url}  -> {LOCAL_MODEL_NAME} at {server.base_url} (embedded defaults)")
    print(flush=True)
    try:
        t0 = time.perf_counter()
        runs, reference = asyncio.run(
            local_runs(
                server.base_url,
                f"{platform_url}/v1",
                args.local_windows,
                args.client,
                api_key,
                gguf_token_counter(MODEL_PATH),
                args.local_budget,
            )
        )
        print(
            f"  {len(runs)} streamed generations + {3 * len(LOCAL_PROMPTS)} non-streaming (warm-up, references): "
            f"{time.perf_counter() - t0:5.1f} s",
            flush=True,
        )
    finally:
        children.stop("platform-local")
        children.stop("llama.cpp")
    return {"runs": runs, "reference": reference}


def report_local(results: dict[str, Any], args: argparse.Namespace) -> None:
    runs: list[Generation] = results["runs"]
    reference = results["reference"]
    width = 74
    print()
    print("=" * width)
    print(f"Part 2: local model ({LOCAL_MODEL_NAME} under llama.cpp, 2 threads), streamed end to end")
    print("=" * width)
    params = {**LOCAL_PARAMS, **LOCAL_DIRECT_EXTRA}
    print(f"generation: {json.dumps(params)}")
    windows = len({r.window for r in runs})
    print(
        f"{len(LOCAL_PROMPTS)} prompts, cycled; direct and platform alternate request by request; "
        f"{windows} of {args.local_windows} windows run"
        + (f" (time budget {args.local_budget:g} s reached)" if windows < args.local_windows else "")
    )
    for index, ref in reference.items():
        same = normalized(ref["direct"]["text"]) == normalized(ref["platform"]["text"])
        print(
            f"  prompt {index}: {ref['direct']['tokens']} completion tokens direct, {ref['platform']['tokens']} via platform "
            f"(finish {ref['direct']['finish']}/{ref['platform']['finish']}; same text: {'yes' if same else 'NO'})"
        )
    summary = {}
    for side in ("direct", "platform"):
        mine = [r for r in runs if r.side == side]
        tokens = sum(r.tokens for r in mine)
        seconds = sum(r.seconds for r in mine)
        decode_tokens = sum(r.tokens - 1 for r in mine)
        decode_seconds = sum(r.seconds - r.first_byte_s for r in mine)
        per_run = sorted(r.tokens / r.seconds for r in mine)
        summary[side] = {
            "n": len(mine),
            "matched": sum(r.matched for r in mine),
            "tokens": tokens / len(mine),
            "chunks": sum(r.chunks for r in mine) / len(mine),
            "first_ms": 1000 * sum(r.first_byte_s for r in mine) / len(mine),
            "seconds": seconds / len(mine),
            "tps": tokens / seconds,
            "decode_tps": decode_tokens / decode_seconds,
            "median_run_tps": percentile(per_run, 50),
        }
    d, p = summary["direct"], summary["platform"]
    print()
    print(f"{'':34s}{'llama.cpp':>12s}{'platform':>12s}{'ratio':>10s}")
    rows = [
        ("streamed requests", "n", "{:12d}", False),
        ("  same text as reference", "matched", "{:12d}", False),
        ("completion tokens / request", "tokens", "{:12.1f}", False),
        ("content chunks / request", "chunks", "{:12.1f}", False),
        ("time to first byte, ms", "first_ms", "{:12.1f}", True),
        ("time to end of stream, s", "seconds", "{:12.3f}", True),
        ("tokens/s end to end (sum/sum)", "tps", "{:12.2f}", True),
        ("tokens/s after first byte", "decode_tps", "{:12.2f}", True),
        ("tokens/s, median request", "median_run_tps", "{:12.2f}", True),
    ]
    for label, key, fmt, ratio in rows:
        tail = f"{p[key] / d[key]:10.3f}" if ratio else ""
        print(f"  {label:32s}{fmt.format(d[key])}{fmt.format(p[key])}{tail}")
    window_ratios = []
    for window in sorted({r.window for r in runs}):
        tps = {}
        for side in ("direct", "platform"):
            mine = [r for r in runs if r.window == window and r.side == side]
            tps[side] = sum(r.tokens for r in mine) / sum(r.seconds for r in mine)
        window_ratios.append(tps["platform"] / tps["direct"])
    print(
        f"  {'tokens/s ratio per window':32s}{'':24s}{percentile(window_ratios, 50):10.3f}"
        f"  (median of {len(window_ratios)}: {', '.join(f'{x:.3f}' for x in window_ratios)})"
    )
    ratio = p["tps"] / d["tps"]
    ok = ratio >= TARGET_TOKENS_RATIO
    print("-" * width)
    print(f"Target: platform tokens/s within {100 * (1 - TARGET_TOKENS_RATIO):.0f}% of llama.cpp directly.")
    print(f"  end-to-end tokens/s ratio {ratio:.3f} ({100 * (ratio - 1):+.1f}%)  ->  {'MET' if ok else 'NOT MET'}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway overhead and local-model tokens/s benchmark.")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per side at concurrency 1 (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per side at concurrency 1 (default 30)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrency of the throughput runs (default 32)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per side of each throughput run (default 6)")
    parser.add_argument("--segment-warmup", type=float, default=1.0, help="unmeasured seconds at the start of each throughput segment")
    parser.add_argument("--conversations", type=int, default=32, help="conversations per concurrency-1 phase (default 32)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="load client (default raw asyncio + httptools)")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"Redis for the platform's memory (default {REDIS_URL})")
    parser.add_argument(
        "--platform-log-level",
        help="GENAI_LOG_LEVEL for the platform (default: its own default, info, with an access log line per request)",
    )
    parser.add_argument(
        "--local-windows", type=int, default=4, help="part 2 windows: each side streams every prompt once (default 4)"
    )
    parser.add_argument(
        "--local-budget",
        type=float,
        default=150.0,
        help="seconds of timed streams in part 2 after which no new window starts (default 150)",
    )
    parser.add_argument(
        "--platform-ref",
        help="run the platform from `git archive REF` instead of the working tree (e.g. HEAD while the tree is being edited)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the child processes' logs")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--local-model", action="store_true", help="run only part 2 (local model tokens/s)")
    parts.add_argument("--skip-local-model", action="store_true", help="run only part 1 (gateway overhead)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_gateway = not args.local_model
    run_local = not args.skip_local_model
    workdir = Path(tempfile.mkdtemp(prefix="genai-bench-"))
    started = time.perf_counter()
    args.platform_root, source = platform_source(args, workdir)
    print("genai-platform gateway overhead benchmark")
    print(
        f"  machine: {os.cpu_count()} CPUs (usable {len(os.sched_getaffinity(0))}), {platform_module.machine()}, "
        f"Python {platform_module.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    cpus = len(os.sched_getaffinity(0))
    if os.getloadavg()[0] > 0.5 * cpus:
        print(f"  WARNING: load average {os.getloadavg()[0]:.2f} on {cpus} CPUs before the run: other processes compete, figures will be noisy")
    print(f"  client: {args.client} (one keep-alive connection per concurrent worker)")
    if run_gateway:
        print(
            f"  part 1: c=1 {args.requests} requests + {args.warmup} warm-up per side and mode, alternating; "
            f"c={args.concurrency} {args.seconds:g} s per side and mode (D P P D segments, {args.segment_warmup:g} s warm-up each)"
        )
        print(f"          conversations: {args.conversations} per c=1 phase, {args.concurrency} per c={args.concurrency} phase (one per worker)")
    if run_local:
        print(
            f"  part 2: {len(LOCAL_PROMPTS)} prompts x {args.local_windows} windows, direct and platform alternating, streamed "
            f"(at most ~{args.local_budget:g} s); model {MODEL_PATH.name}"
        )
    level = f"GENAI_LOG_LEVEL={args.platform_log_level}" if args.platform_log_level else "default log level"
    print(f"  platform: {sys.executable} -m server.cli serve (1 worker, {level}, logs to a file)")
    print(f"  platform code: {source}")
    print(f"  logs: {workdir}")
    print(flush=True)

    keep = args.keep_logs
    try:
        with Children(workdir) as children:
            try:
                gateway = part_gateway(args, children) if run_gateway else None
                local = part_local(args, children) if run_local else None
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
    if gateway:
        report_gateway(gateway, args)
    if local:
        report_local(local, args)
    print()
    print(f"total time {time.perf_counter() - started:.0f} s, load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
