"""Chaos benchmark (issue #11): a conversational load while Redis dies and deployments fail, hang and recover.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/chaos.py                       # ~1.5 minutes
    .venv/bin/python bench/chaos.py --seconds-scale 0.5   # the same timeline, twice as fast
    .venv/bin/python bench/chaos.py --keep-logs           # keep the platform's log and database

The platform (``genai serve``, 2 workers, its own SQLite data directory) gets its own Redis server on a free port
(rate limits of the run's API key, conversation memory, the circuit breakers the workers share) and one route,
``chaos``, with two deployments ``a`` and ``b``: ``tests.controlled_upstream.ControlledUpstream`` servers in this
process, whose behaviour the timeline switches. 16 clients run conversations (a first turn with
``conversation_id: "new"``, then follow-ups with the returned id), every turn with a unique text and its own
``Idempotency-Key``; like well-behaved clients they retry a turn with the same key on a connection error, 409, 429,
500, 502, 503 or 504 (honouring a short ``Retry-After``), at most 6 attempts, then give it up. They wait 5 s for a
response (``--client-timeout``), less than the route's limit: some retries overlap the request they repeat, which
exercises the platform's 409 and replay. A short warm-up (left out of every figure) precedes the timeline.

Timeline (seconds, times ``--seconds-scale``): 0 normal; 10 Redis SIGKILLed; 22 Redis restarted (empty, same
port); 30 deployment a answers 500; 42 a recovers; 48 deployment b hangs; 58 b recovers; 65 the load stops.

Afterwards the platform's database is compared with what the clients were told: turns answered but not stored
(lost), user messages stored twice (duplicated), turns stored although the client gave up on them; and what the
deployments received tells whether each model call carried the whole conversation. Targets: zero lost, zero
duplicated, no 500. A benchmark: it prints the figures and whether the targets are met, it does not fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from harness import (
    Children,
    add_common_args,
    free_port,
    percentile,
    platform_env,
    run,
    start_platform,
    start_redis,
)

from tests.controlled_upstream import ControlledUpstream, controlled_upstream

ROUTE = "chaos"
# The route: a hung deployment is given up after 2 s, the whole call after 15 s; three failures in a row open a
# deployment's breaker for 3 s.
ROUTE_SETTINGS: dict[str, Any] = {
    "timeout": 15.0,
    "first_byte_timeout": 2.0,
    "connect_timeout": 1.0,
    "max_retries": 2,
    "retry_backoff": 0.1,
    "breaker_failures": 3,
    "breaker_cooldown": 3.0,
}
WORKERS = 2

# The client's retry policy: what a well-behaved client retries (with the same Idempotency-Key), how often, how long.
RETRYABLE = {"conn error", "timeout", "409", "429", "500", "502", "503", "504"}
MAX_ATTEMPTS = 6
MAX_RETRY_AFTER = 3.0
# How long a client waits for a response by default: less than the route's whole-call limit, as an impatient client
# (or a proxy) does, so that some retries overlap the request they repeat (the platform's 409 and replay path).
CLIENT_TIMEOUT = 5.0

TARGETS = "zero turns lost, zero duplicated, no 500"


# --------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the load starts, before --seconds-scale
    phase: str  # the phase it begins (the fault it applies is named after it)
    action: str  # what happens, for the log


TIMELINE = (
    Step(0, "normal", "load starts"),
    Step(10, "redis down", "SIGKILL Redis"),
    Step(22, "redis back", "restart Redis (empty)"),
    Step(30, "a failing", "deployment a -> fail (500)"),
    Step(42, "a recovered", "deployment a -> ok"),
    Step(48, "b hanging", "deployment b -> hang"),
    Step(58, "b recovered", "deployment b -> ok"),
    Step(65, "drain", "stop the load (turns in flight finish)"),
)


@dataclass(frozen=True)
class Span:
    phase: str
    start: float
    end: float  # inf for the last


def spans(scale: float) -> list[Span]:
    """The phases with their scaled start and end, in order."""
    starts = [step.at * scale for step in TIMELINE] + [float("inf")]
    return [Span(step.phase, starts[i], starts[i + 1]) for i, step in enumerate(TIMELINE)]


def phase_of(t: float, phases: list[Span]) -> str:
    return next(span.phase for span in reversed(phases) if t >= span.start)


def span_named(phases: list[Span], name: str) -> Span:
    return next(span for span in phases if span.phase == name)


class Clock:
    """Seconds since the load started; also converts the deployments' monotonic arrival stamps."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()  # the same instant on the wall clock, for the platform log's timestamps

    def now(self) -> float:
        return time.monotonic() - self.t0

    def since_start(self, stamps: Iterable[float]) -> list[float]:
        return [stamp - self.t0 for stamp in stamps]


# --------------------------------------------------------------------------- the faults


class RedisChild:
    """The platform's own Redis, a child process on a fixed port, so that it can be killed and restarted there."""

    def __init__(self, children: Children, port: int) -> None:
        self.children = children
        self.port = port
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> float:
        """Start it; seconds until it answers PING."""
        started = time.monotonic()
        self.process = start_redis(self.children, self.port)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; what a crashed or OOM-killed Redis does to its clients."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.children.stop("redis")  # forgets it (it is gone already)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Faults:
    """Applies each step of the timeline to Redis and the two deployments."""

    def __init__(self, redis_child: RedisChild, a: ControlledUpstream, b: ControlledUpstream) -> None:
        self.redis = redis_child
        self.a, self.b = a, b
        self.redis_ready_after: float | None = None

    async def apply(self, phase: str) -> str:
        """Apply the fault that begins ``phase``; a note for the log."""
        if phase == "redis down":
            pid = self.redis.pid
            self.redis.kill()
            return f"(pid {pid})"
        if phase == "redis back":
            self.redis_ready_after = await asyncio.to_thread(self.redis.start)
            return f"(pid {self.redis.pid}, answering after {self.redis_ready_after:.2f} s)"
        modes = {"a failing": (self.a, "fail"), "a recovered": (self.a, "ok")}
        modes |= {"b hanging": (self.b, "hang"), "b recovered": (self.b, "ok")}
        if phase in modes:
            upstream, mode = modes[phase]
            upstream.set(mode)
        return ""


# --------------------------------------------------------------------------- the load


@dataclass
class Attempt:
    sent: float  # seconds after the load started
    latency: float  # seconds
    status: str  # "200", "503", ...; "conn error" or "timeout" when no response came
    deployment: str | None = None
    replayed: bool = False
    error: str | None = None  # the error's message (or the exception) when it was not a 200


@dataclass
class Turn:
    client: int
    content: str  # unique: how the turn is found in the database and at the deployments
    key: str  # its Idempotency-Key, the same for every attempt
    first: bool  # the conversation's first turn (conversation_id "new")
    started: float
    conversation_id: str | None = None  # the client's (for a first turn: the one returned)
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "running"  # answered, gave up, refused (an error not worth a retry)
    ended: float = 0.0

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Load:
    """``concurrency`` clients running conversations of ``turns`` turns until ``stopping``."""

    def __init__(
        self, url: str, api_key: str | None, clock: Clock, concurrency: int, turns: int, timeout: float
    ) -> None:
        self.timeout = timeout
        self.url = f"{url}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.clock = clock
        self.concurrency = concurrency
        self.turns_per_conversation = turns
        self.turns: list[Turn] = []
        self.stopping = False

    async def run(self) -> None:
        await asyncio.gather(*(self.client(index) for index in range(self.concurrency)))

    async def client(self, index: int) -> None:
        """Conversations, one after another; a follow-up turn given up does not end its conversation (the user
        goes on), a first turn given up does (there is no conversation to go on with)."""
        timeout = httpx.Timeout(self.timeout, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout, headers=self.headers) as http:
            conversation = 0
            while not self.stopping:
                conversation_id: str | None = None
                for n in range(self.turns_per_conversation):
                    if self.stopping:
                        break
                    turn = Turn(index, f"c{index}-{conversation} turn {n}", str(uuid.uuid4()), n == 0, self.clock.now())
                    turn.conversation_id = conversation_id
                    self.turns.append(turn)
                    await self.send(http, turn)
                    if turn.first:
                        if turn.outcome != "answered":
                            break
                        conversation_id = turn.conversation_id
                conversation += 1

    async def send(self, http: httpx.AsyncClient, turn: Turn) -> None:
        """One turn: the same request with the same key until it is answered, refused, or MAX_ATTEMPTS ran out."""
        body = {
            "model": ROUTE,
            "messages": [{"role": "user", "content": turn.content}],
            "conversation_id": turn.conversation_id or "new",
            "max_tokens": 16,
        }
        headers = {"Idempotency-Key": turn.key}
        for attempt in range(MAX_ATTEMPTS):
            sent = self.clock.now()
            wait = min(0.25 * 2**attempt, 2.0) * random.uniform(0.5, 1.0)
            try:
                response = await http.post(self.url, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                turn.attempts.append(Attempt(sent, self.clock.now() - sent, "timeout", error=repr(exc)))
            except httpx.TransportError as exc:
                turn.attempts.append(Attempt(sent, self.clock.now() - sent, "conn error", error=repr(exc)))
            else:
                status = str(response.status_code)
                deployment = response.headers.get("x-deployment")
                replayed = response.headers.get("idempotent-replayed") == "true"
                error = None if status == "200" else error_message(response)
                turn.attempts.append(Attempt(sent, self.clock.now() - sent, status, deployment, replayed, error))
                if status == "200":
                    if turn.first:
                        turn.conversation_id = response.json().get("conversation_id")
                    turn.outcome, turn.ended = "answered", self.clock.now()
                    return
                if status not in RETRYABLE:
                    turn.outcome, turn.ended = "refused", self.clock.now()
                    return
                wait = retry_after(response) or wait
            if attempt + 1 < MAX_ATTEMPTS:
                await asyncio.sleep(wait)
        turn.outcome, turn.ended = "gave up", self.clock.now()


def error_message(response: httpx.Response) -> str:
    """An error response's message (OpenAI's shape), to tell the report why it failed."""
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return response.text[:200]


def retry_after(response: httpx.Response) -> float | None:
    """The response's Retry-After in seconds, at most MAX_RETRY_AFTER (a client does not wait minutes)."""
    try:
        return min(max(float(response.headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None


@dataclass
class Poll:
    t: float  # when the answer came (seconds after the load started)
    status: str  # ok, degraded, unavailable, or the error
    failing: tuple[str, ...]  # the checks that are not ok


async def poll_readyz(url: str, clock: Clock, polls: list[Poll], stop: asyncio.Event) -> None:
    """GET /readyz every 0.5 s: when the platform noticed each fault, and its end."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        while not stop.is_set():
            sent = clock.now()
            try:
                body = (await http.get(f"{url}/readyz")).json()
                checks = body.get("checks") or {}
                failing = tuple(sorted(name for name, state in checks.items() if state != "ok"))
                polls.append(Poll(clock.now(), str(body.get("status")), failing))
            except (httpx.HTTPError, ValueError) as exc:
                polls.append(Poll(clock.now(), type(exc).__name__, ()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.5 - (clock.now() - sent), 0.0))


async def warm_up(url: str, api_key: str | None, concurrency: int, turns: int = 3) -> set[str]:
    """A few conversations before the clock starts, so that the first phase does not measure the workers' first
    requests (lazy imports, connection pools); their turns are left out of the audit by their conversation ids."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def conversation(index: int, http: httpx.AsyncClient) -> str:
        conversation_id = "new"
        for n in range(turns):
            body = {
                "model": ROUTE,
                "messages": [{"role": "user", "content": f"warm-up {index} turn {n}"}],
                "conversation_id": conversation_id,
                "max_tokens": 16,
            }
            response = await http.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            conversation_id = response.json()["conversation_id"]
        return conversation_id

    async with httpx.AsyncClient(timeout=60.0, headers=headers) as http:
        return set(await asyncio.gather(*(conversation(index, http) for index in range(concurrency))))


async def drive(load: Load, faults: Faults, url: str, clock: Clock, scale: float) -> list[Poll]:
    """Run the load and the readiness poller, applying the timeline's steps on time; the /readyz polls."""
    polls: list[Poll] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(poll_readyz(url, clock, polls, stop))
    clients = asyncio.create_task(load.run())
    for step in TIMELINE:
        await asyncio.sleep(max(step.at * scale - clock.now(), 0.0))
        if step.phase == "drain":
            load.stopping = True
        note = await faults.apply(step.phase)
        print(
            f"  [{clock.now():5.1f} s] {step.action} {note}".rstrip() + f"   so far: {progress(load.turns)}", flush=True
        )
    await clients
    print(f"  [{clock.now():5.1f} s] load drained   {progress(load.turns)}", flush=True)
    stop.set()
    await poller
    return polls


def progress(turns: list[Turn]) -> str:
    outcomes = Counter(turn.outcome for turn in turns)
    errors = Counter(a.status for turn in turns for a in turn.attempts if a.status != "200")
    return (
        f"{outcomes['answered']} turns answered, {outcomes['gave up']} given up; errors {dict(errors) or 'none'}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )


# --------------------------------------------------------------------------- the run


def route_config(a: ControlledUpstream, b: ControlledUpstream) -> dict[str, Any]:
    """The one route, `chaos`, over both deployments (GENAI_MODEL_ROUTES)."""
    return {
        "name": ROUTE,
        "deployments": [{"name": "a", "base_url": a.url}, {"name": "b", "base_url": b.url}],
        **ROUTE_SETTINGS,
    }


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    """Redis, the deployments and the platform; a warm-up, then the timeline under load; then, with the platform
    stopped (every turn written), the audit of its database. Everything the report needs, before the workdir goes."""
    redis_child = RedisChild(children, free_port())
    redis_child.start()
    args.redis_url = redis_child.url
    with controlled_upstream("a") as a, controlled_upstream("b") as b:
        a.delay = b.delay = args.delay
        data_dir = children.workdir / "data"
        env = platform_env(
            args,
            data_dir,
            GENAI_MODEL_ROUTES=json.dumps([route_config(a, b)]),
            GENAI_DEFAULT_MODEL=ROUTE,
            GENAI_WORKERS=str(WORKERS),
            GENAI_CACHE_ENABLED="false",
        )
        url, api_key = start_platform(children, "platform", free_port(), env, roots["platform"])
        print(f"redis           {redis_child.url}  (pid {redis_child.pid}; killed and restarted on this port)")
        print(f"deployments     a {a.url}, b {b.url}  (in this process, {args.delay:g} s per answer)")
        print(f"platform        {url}  ({WORKERS} workers, route `{ROUTE}`: {json.dumps(ROUTE_SETTINGS)})")
        print(flush=True)
        warm = asyncio.run(warm_up(url, api_key, args.concurrency))
        a.arrivals.clear()
        b.arrivals.clear()
        a.histories.clear()
        b.histories.clear()
        clock = Clock()
        load = Load(url, api_key, clock, args.concurrency, args.turns, args.client_timeout)
        faults = Faults(redis_child, a, b)
        polls = asyncio.run(drive(load, faults, url, clock, args.seconds_scale))
        children.stop("platform")  # every turn written before the database is read
        arrivals = {u.name: clock.since_start(u.arrivals) for u in (a, b)}
        histories = [*a.histories, *b.histories]
    children.stop("redis")
    database = audit_database(data_dir / "genai.db", load.turns, histories, warm)
    return {
        "turns": load.turns,
        "polls": polls,
        "arrivals": arrivals,
        "database": database,
        "phases": spans(args.seconds_scale),
        "redis_ready_after": faults.redis_ready_after,
        "log": log_summary(children.workdir / "platform.log", clock.wall0),
        "workdir": children.workdir,
    }


# --------------------------------------------------------------------------- what the database holds


def audit_database(
    path: Path, turns: list[Turn], histories: list[tuple[str, int]], warm_up: set[str]
) -> dict[str, Any]:
    """Compare what the clients were told with the stored turns; and whether each model call got its whole
    conversation (the deployments saw as many user messages as the conversation had stored turns before it, +1).
    The warm-up's conversations are left out."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TEMP TABLE warm_up (id TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO warm_up VALUES (?)", [(conversation,) for conversation in warm_up])
        users = db.execute(
            "SELECT conversation_id, content FROM messages WHERE role = 'user' "
            "AND conversation_id NOT IN (SELECT id FROM warm_up) ORDER BY id"
        ).fetchall()
        usage = "FROM usage WHERE coalesce(conversation_id, '') NOT IN (SELECT id FROM warm_up)"
        usage_status = Counter(dict(db.execute(f"SELECT status, count(*) {usage} GROUP BY status").fetchall()))
        usage_deployment = db.execute(
            f"SELECT coalesce(deployment, '-'), status, count(*) {usage} GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    stored = Counter(content for _, content in users)
    stored_in = {content: conversation for conversation, content in users}
    answered = [turn for turn in turns if turn.outcome == "answered"]
    position: dict[str, int] = {}
    per_conversation: Counter[str] = Counter()
    for conversation, content in users:
        position.setdefault(content, per_conversation[conversation])
        per_conversation[conversation] += 1
    seen = defaultdict(list)
    for content, count in histories:
        seen[content].append(count)
    checked = [c for c in seen if c in position]
    short = [c for c, counts in seen.items() if c in position and any(n < position[c] + 1 for n in counts)]
    long = [c for c, counts in seen.items() if c in position and any(n > position[c] + 1 for n in counts)]
    return {
        "stored_turns": len(users),
        "lost": [turn for turn in answered if stored[turn.content] == 0],
        "duplicated": {content: n for content, n in stored.items() if n > 1},
        "stored_given_up": [turn for turn in turns if turn.outcome != "answered" and stored[turn.content] > 0],
        "misplaced": [
            turn
            for turn in answered
            if turn.content in stored_in and turn.conversation_id and stored_in[turn.content] != turn.conversation_id
        ],
        "history_checked": len(checked),
        "history_follow_ups": sum(position[c] > 0 for c in checked),
        "short_history": short,
        "long_history": long,
        "usage_status": usage_status,
        "usage_deployment": usage_deployment,
    }


@dataclass
class LogEntry:
    count: int = 0
    first: float | None = None  # seconds after the load started (None: no timestamp)
    last: float | None = None


def log_summary(path: Path, wall0: float) -> dict[str, LogEntry]:
    """The platform log's warnings and errors by level and message, with when they first and last appeared (JSON
    lines with an ISO ``ts``; plain lines with a traceback or ERROR counted as they are)."""
    entries: dict[str, LogEntry] = defaultdict(LogEntry)
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                entries[f"(plain) {line[:140]}"].count += 1
            continue
        if not isinstance(record, dict):
            continue
        level = str(record.get("level") or record.get("levelname") or "").upper()
        if level not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        entry = entries[f"{level}: {str(record.get('message') or record.get('msg'))[:120]}"]
        entry.count += 1
        with contextlib.suppress(TypeError, ValueError):
            t = datetime.fromisoformat(record["ts"]).timestamp() - wall0
            entry.first = t if entry.first is None else entry.first
            entry.last = t
    return entries


# --------------------------------------------------------------------------- figures


def attempts_in(turns: list[Turn], span: Span) -> list[Attempt]:
    return [a for turn in turns for a in turn.attempts if span.start <= a.sent < span.end]


def turns_in(turns: list[Turn], span: Span) -> list[Turn]:
    return [turn for turn in turns if span.start <= turn.started < span.end]


def fmt_counts(counts: Counter | dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "none"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f}"


def breaker_window(arrivals: list[float], others: list[float], span: Span, cooldown: float) -> dict[str, Any]:
    """When a faulty deployment stopped receiving requests: its last arrival before the first pause of at least
    half a cooldown during which the other deployment kept receiving them (so a stall of the whole platform does not
    count); how many requests it got until then, and how many in the rest of the fault (the breaker's probes)."""
    inside = [t for t in arrivals if span.start <= t < span.end]
    for index, t in enumerate(inside):
        following = inside[index + 1] if index + 1 < len(inside) else span.end
        served_elsewhere = sum(t < other < following for other in others)
        if following - t >= cooldown / 2 and served_elsewhere >= 5:
            return {
                "stopped": t - span.start,
                "before": index + 1,
                "probes": len(inside) - index - 1,
                "elsewhere": served_elsewhere,
            }
    return {"stopped": None, "before": len(inside), "probes": 0, "elsewhere": 0}


def readyz_window(polls: list[Poll], check: str, fault: float, recovered: float) -> tuple[float | None, float | None]:
    """Seconds from the fault until /readyz showed ``check`` failing, and from the recovery until it was ok again."""
    down = next((p.t - fault for p in polls if fault <= p.t < recovered and check in p.failing), None)
    back = next((p.t - recovered for p in polls if p.t >= recovered and check not in p.failing), None)
    return down, back


def transitions(polls: list[Poll]) -> list[Poll]:
    changes: list[Poll] = []
    for poll in polls:
        if not changes or (poll.status, poll.failing) != (changes[-1].status, changes[-1].failing):
            changes.append(poll)
    return changes


def after(value: float | None) -> str:
    return "never" if value is None else f"after {value:.1f} s"


# --------------------------------------------------------------------------- the report


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    turns: list[Turn] = results["turns"]
    width = 100
    print()
    print("=" * width)
    print(f"Chaos: {args.concurrency} clients, conversations of {args.turns} turns, Redis killed, a fails, b hangs")
    print("=" * width)
    report_totals(turns)
    report_phases(turns, results["phases"])
    report_errors(turns, results["phases"])
    report_failover(results, args)
    report_database(results["database"])
    report_log(results, args.keep_logs)
    report_targets(turns, results["database"])


def report_totals(turns: list[Turn]) -> None:
    attempts = [a for turn in turns for a in turn.attempts]
    outcomes = Counter(turn.outcome for turn in turns)
    statuses = Counter(a.status for a in attempts)
    replays = sum(a.replayed for a in attempts)
    print(
        f"turns: {len(turns)} started, {outcomes['answered']} answered (final 200), {outcomes['gave up']} given up "
        f"after {MAX_ATTEMPTS} attempts, {outcomes['refused']} refused (not retried)"
    )
    print(f"HTTP responses (retried ones included): {len(attempts)}; by status: {fmt_counts(statuses)}")
    print(f"  500: {statuses['500']};  replays (Idempotent-Replayed: true): {replays};  turns retried at least once: "
          f"{sum(len(turn.attempts) > 1 for turn in turns)}")  # fmt: skip
    print()


def report_phases(turns: list[Turn], phases: list[Span]) -> None:
    """Per phase: answered, errors, latency of the HTTP responses (sent in the phase), the deployments' shares, and
    the slowest turn (started in the phase, retries included)."""
    print(
        f"{'phase':12s}{'from':>6s}{'answered':>9s}  {'p50 ms':>7s}{'p95 ms':>7s}{'max ms':>7s}"
        f"{'turn max':>9s}{'a/b share':>12s}   errors by status (incl. retried)"
    )
    for span in phases:
        attempts = attempts_in(turns, span)
        if not attempts:
            continue
        ok = [a for a in attempts if a.status == "200"]
        latencies = [a.latency for a in attempts]
        served = Counter(a.deployment for a in ok)
        share = f"{served['a'] / len(ok):4.0%}/{served['b'] / len(ok):4.0%}" if ok else "-"
        started = [turn for turn in turns_in(turns, span) if turn.ended]
        slowest = max((turn.latency for turn in started), default=0.0)
        errors = Counter(a.status for a in attempts if a.status != "200")
        figures = f"{ms(percentile(latencies, 50))}{ms(percentile(latencies, 95))}{ms(max(latencies))}"
        print(
            f"{span.phase:12s}{span.start:6.1f}{len(ok):9d}  {figures}{ms(slowest):>9s}{share:>12s}   "
            f"{fmt_counts(errors)}"
        )
    print()


def report_errors(turns: list[Turn], phases: list[Span]) -> None:
    """What the error responses said, by status and the phase they were sent in."""
    messages = Counter(
        (a.status, phase_of(a.sent, phases), (a.error or "")[:110]) for turn in turns for a in turn.attempts if a.error
    )
    if not messages:
        return
    print("Error responses (status, phase sent in, message):")
    for (status, phase, message), n in sorted(messages.items(), key=lambda item: -item[1])[:12]:
        print(f"  {n:5d} x {status} in {phase}: {message}")
    print()


def report_failover(results: dict[str, Any], args: argparse.Namespace) -> None:
    turns, polls, phases = results["turns"], results["polls"], results["phases"]
    cooldown = ROUTE_SETTINGS["breaker_cooldown"]
    print("Time to fail over")
    for name, fault in (("a", "a failing"), ("b", "b hanging")):
        span = span_named(phases, fault)
        other = "b" if name == "a" else "a"
        window = breaker_window(results["arrivals"][name], results["arrivals"][other], span, cooldown)
        attempts = attempts_in(turns, span)
        errors = Counter(a.status for a in attempts if a.status != "200")
        slowest = max((turn.latency for turn in turns_in(turns, span) if turn.ended), default=0.0)
        down, back = readyz_window(polls, f"model:{ROUTE} deployment:{name}", span.start, span.end)
        what = "fails (500)" if name == "a" else "hangs"
        stopped = (
            f"its last request {window['stopped']:.2f} s after the fault ({window['before']} requests; then "
            f"{other} got {window['elsewhere']} before {name}'s next), then {window['probes']} in the "
            f"{span.end - span.start - window['stopped']:.1f} s left (breaker probes)"
            if window["stopped"] is not None
            else f"it never stopped receiving requests ({window['before']} during the fault)"
        )
        print(f"  {name} {what} at {span.start:.1f} s, recovers at {span.end:.1f} s: {stopped}")
        print(
            f"      clients: worst response {max((a.latency for a in attempts), default=0):.2f} s, worst turn "
            f"{slowest:.2f} s, errors {fmt_counts(errors)}; /readyz: failing {after(down)}, ok again "
            f"{after(back)} after the recovery"
        )
    span = span_named(phases, "redis down")
    attempts = attempts_in(turns, span)
    errors = Counter(a.status for a in attempts if a.status != "200")
    slowest = max((turn.latency for turn in turns_in(turns, span) if turn.ended), default=0.0)
    down, back = readyz_window(polls, "redis", span.start, span.end)
    ready = results["redis_ready_after"]
    answering = f"answering after {ready:.2f} s" if ready is not None else "not restarted"
    print(
        f"  Redis SIGKILLed at {span.start:.1f} s, restarted at {span.end:.1f} s ({answering}): "
        f"/readyz degraded {after(down)}, redis ok again {after(back)}"
    )
    print(
        f"      during the outage: {len(attempts)} responses, errors {fmt_counts(errors)}, worst response "
        f"{max((a.latency for a in attempts), default=0):.2f} s, worst turn {slowest:.2f} s"
    )
    print("  /readyz transitions (polled every 0.5 s):")
    for poll in transitions(polls):
        failing = f"  failing: {', '.join(poll.failing)}" if poll.failing else ""
        print(f"    {poll.t:5.1f} s  {phase_of(poll.t, phases):12s} {poll.status}{failing}")
    print()


def report_database(database: dict[str, Any]) -> None:
    print(f"The platform's database: {database['stored_turns']} user turns stored")
    rows = [
        ("turns lost (answered 200, not stored)", database["lost"]),
        ("turns duplicated (a user message stored more than once)", database["duplicated"]),
        ("turns stored although the client was told they failed", database["stored_given_up"]),
        ("turns stored in another conversation than the client's", database["misplaced"]),
        ("model calls missing earlier turns of their conversation", database["short_history"]),
        ("model calls with more turns than their conversation had", database["long_history"]),
    ]
    for label, found in rows:
        examples = [item.content if isinstance(item, Turn) else item for item in list(found)[:3]]
        print(f"  {label:60s}{len(found):6d}" + (f"   e.g. {examples}" if examples else ""))
    print(
        f"  (history checked for the {database['history_checked']} stored turns the deployments saw, "
        f"{database['history_follow_ups']} of them follow-ups)"
    )
    print(f"  usage records by status: {fmt_counts(database['usage_status'])}")
    by_deployment = ", ".join(f"{deployment} {status}: {n}" for deployment, status, n in database["usage_deployment"])
    print(f"  usage records by deployment: {by_deployment or 'none'}")
    print()


def report_log(results: dict[str, Any], kept: bool) -> None:
    entries: dict[str, LogEntry] = results["log"]
    total = sum(entry.count for entry in entries.values())
    print(f"Platform log: {total} warnings and errors" + (" (count, first and last time, message):" if total else ""))
    for message, entry in sorted(entries.items(), key=lambda item: -item[1].count)[:10]:
        when = f"{entry.first:5.1f}-{entry.last:5.1f} s" if entry.first is not None and entry.last is not None else ""
        print(f"  {entry.count:5d} x {when:>13s}  {message}")
    if len(entries) > 10:
        print(f"  ... and {len(entries) - 10} other messages")
    log = results["workdir"] / "platform.log"
    print(f"  (the log: {log})" if kept else "  (--keep-logs keeps the log and the database)")
    print()


def report_targets(turns: list[Turn], database: dict[str, Any]) -> None:
    five_hundreds = sum(a.status == "500" for turn in turns for a in turn.attempts)
    verdicts = [
        ("zero turns lost", len(database["lost"]) == 0, len(database["lost"])),
        ("zero turns duplicated", len(database["duplicated"]) == 0, len(database["duplicated"])),
        ("no 500", five_hundreds == 0, five_hundreds),
    ]
    print("-" * 100)
    print(f"Targets: {TARGETS}.")
    for label, met, value in verdicts:
        print(f"  {label:24s} {value:6d}  ->  {'MET' if met else 'NOT MET'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chaos benchmark: load while Redis and the deployments fail.")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--turns", type=int, default=5, help="turns per conversation (default 5)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each deployment takes to answer (0.05)")
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=CLIENT_TIMEOUT,
        help=f"seconds a client waits for a response before it retries (default {CLIENT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--seconds-scale",
        type=float,
        default=1.0,
        help="multiplies every time of the timeline (default 1: 65 s); below ~0.5 a recovery phase is shorter than "
        "the breaker's 3 s cooldown",
    )
    add_common_args(parser)
    parser.set_defaults(client="httpx", redis_url=None)
    args = parser.parse_args(argv)
    if args.client != "httpx":
        parser.error("the chaos clients read response headers: only --client httpx")
    if args.redis_url is not None:
        parser.error("the benchmark runs (and kills) its own Redis: --redis-url does not apply")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timeline = "; ".join(f"{step.at * args.seconds_scale:g} s {step.action}" for step in TIMELINE)
    plan = [
        f"chaos: {args.concurrency} clients, conversations of {args.turns} turns, an Idempotency-Key per turn, "
        f"{args.client_timeout:g} s client timeout",
        f"       retry on {', '.join(sorted(RETRYABLE))} (Retry-After up to {MAX_RETRY_AFTER:g} s), "
        f"{MAX_ATTEMPTS} attempts",
        f"timeline: {timeline}",
        f"its own Redis (SIGKILLed, restarted); deployments a and b in this process; platform with {WORKERS} workers "
        "(GENAI_WORKERS), semantic cache off",
    ]
    return run(
        args, "genai-platform chaos benchmark (issue #11)", plan, {"platform": args.platform_ref}, measure, report
    )


if __name__ == "__main__":
    sys.exit(main())
