"""Chaos under load on a cluster (issue #15): a replica SIGKILLed and restarted, a rolling restart of every replica
with SIGTERM, Redis restarted, while 16 clients hold conversations through the balancer.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/cluster_chaos.py              # about 2.5 minutes
    .venv/bin/python bench/cluster_chaos.py --replicas 2
    .venv/bin/python bench/cluster_chaos.py --keep-logs  # keep every process's log and nginx's access log

The cluster is ``tests/cluster/cluster.py``'s: nginx (Debian's; ``scripts/ensure-services`` installs it) in front
of ``--replicas`` ``genai serve`` (one worker each, ``GENAI_DRAIN_SECONDS=1``), a fresh PostgreSQL database, its
own Redis and a Chroma server; nginx checks the replicas passively (a refused connection goes to the next replica
and keeps the refusing one out for 5 s). The model is the scripted upstream in this process: a plain answer at
once, a streamed one a chunk every 50 ms (about half a second).

16 clients (``--concurrency``) run conversations of 4 turns (a first turn with ``conversation_id: "new"``, then
follow-ups with the returned id), every other turn streamed, every turn with a unique text and its own
``Idempotency-Key``; like well-behaved clients they retry a turn with the same key on a connection error, a cut
stream, 409, 429, 5xx (honouring a short ``Retry-After``), at most 8 attempts over about 16 s.

Timeline: 8 s of steady load; SIGKILL one replica; 8 s later it is started again; once it is ready and 6 s passed
(nginx tries it again), a rolling restart (each replica in turn: SIGTERM, drained, stopped, started, ready, 6 s);
5 s later Redis stops and starts again (empty, same port); 8 s more, then the load stops.

It prints requests answered and errors by status (per phase, first attempts and retries apart), how nginx treated
the killed replica (its attempts on it in the access log: the first refusal, after which it sends it nothing for
5 s, then one probe every 5 s, each passed on to another replica), and, from PostgreSQL afterwards, turns lost (answered, not stored) and duplicated (a user message
stored twice). Targets: zero lost or duplicated, no 500, and no failed request at all during the rolling restart.
A benchmark: it prints the figures and whether the targets are met; it does not fail.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from chaos import retry_after  # noqa: E402  (bench/chaos.py: a short Retry-After, at most 3 s)

from tests.cluster.cluster import FAIL_TIMEOUT, Cluster, nginx_available  # noqa: E402
from tests.scripted_upstream import fault_route, scripted_route, serve_scripted_upstream  # noqa: E402

RETRYABLE = {"conn error", "timeout", "cut stream", "409", "429", "500", "502", "503", "504"}
MAX_ATTEMPTS = 8  # over about 16 s: a turn held by a replica that died is taken over after 10 s (storage/processes.py)


@dataclass
class Attempt:
    sent: float  # seconds since the load started
    status: str  # "200", "502", ...; "conn error", "timeout" or "cut stream" when no complete response came
    streamed: bool
    replayed: bool = False


@dataclass
class Turn:
    content: str
    key: str
    first: bool
    streamed: bool
    conversation_id: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "running"  # answered, gave up, refused


class Load:
    """``concurrency`` clients running conversations through the balancer until ``stopping``."""

    def __init__(self, url: str, key: str, concurrency: int, turns: int, t0: float) -> None:
        self.url, self.key, self.concurrency, self.turns_each, self.t0 = url, key, concurrency, turns, t0
        self.turns: list[Turn] = []
        self.stopping = False

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self) -> None:
        await asyncio.gather(*(self.client(n) for n in range(self.concurrency)))

    async def client(self, index: int) -> None:
        timeout = httpx.Timeout(30.0, connect=5.0)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers) as http:
            conversation = 0
            while not self.stopping:
                conversation_id = None
                for n in range(self.turns_each):
                    if self.stopping:
                        break
                    turn = Turn(f"c{index}-{conversation} turn {n} {uuid.uuid4().hex[:8]}", str(uuid.uuid4()), n == 0,
                                (index + n) % 2 == 1, conversation_id)  # fmt: skip
                    self.turns.append(turn)
                    await self.send(http, turn)
                    if turn.first:
                        if turn.outcome != "answered":
                            break
                        conversation_id = turn.conversation_id
                conversation += 1

    async def send(self, http: httpx.AsyncClient, turn: Turn) -> None:
        body = {
            "model": "slow" if turn.streamed else "scripted",
            "messages": [{"role": "user", "content": turn.content}],
            "conversation_id": turn.conversation_id or "new",
            "stream": turn.streamed,
        }
        for attempt in range(MAX_ATTEMPTS):
            sent = self.now()
            wait = min(0.25 * 2**attempt, 4.0) * random.uniform(0.5, 1.0)
            status, response = await self.attempt(http, body, turn.key)
            replayed = response is not None and response.headers.get("idempotent-replayed") == "true"
            turn.attempts.append(Attempt(sent, status, turn.streamed, replayed))
            if status == "200":
                if turn.first:
                    turn.conversation_id = response.headers.get("x-conversation-id")
                turn.outcome = "answered"
                return
            if status not in RETRYABLE:
                turn.outcome = "refused"
                return
            if response is not None:
                wait = retry_after(response) or wait
            if attempt + 1 < MAX_ATTEMPTS:
                await asyncio.sleep(wait)
        turn.outcome = "gave up"

    async def attempt(self, http: httpx.AsyncClient, body: dict, key: str) -> tuple[str, httpx.Response | None]:
        """One request: its status ("200" only for a complete answer) and the response, if one came."""
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body, headers={"Idempotency-Key": key}) as r:
                text = (await r.aread()).decode()
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.TransportError:  # refused, reset, or a body cut off
            return ("cut stream" if body["stream"] else "conn error"), None
        if r.status_code == 200 and body["stream"]:
            # A stream answers 200 before the model does: complete only with its end and no error event.
            if not text.rstrip().endswith("data: [DONE]") or '"error"' in text:
                return "cut stream", r
        return str(r.status_code), r


# --------------------------------------------------------------------------- the timeline


class Timeline:
    """Runs the faults in a thread while the load runs; the phases' start times (seconds since the load began)."""

    def __init__(self, cluster: Cluster, load: Load, scale: float) -> None:
        self.cluster, self.load, self.scale = cluster, load, scale
        self.phases: list[tuple[str, float]] = []
        self.killed: dict[str, tuple[float, float]] = {}  # address: (killed, started again), monotonic
        self.error: BaseException | None = None

    def mark(self, phase: str) -> None:
        self.phases.append((phase, self.load.now()))
        answered = sum(turn.outcome == "answered" for turn in self.load.turns)
        print(f"  [{self.load.now():6.1f} s] {phase}   ({answered} turns answered so far)", flush=True)

    def pause(self, seconds: float) -> None:
        time.sleep(seconds * self.scale)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported, and the load stopped
            self.error = exc
        finally:
            self.load.stopping = True

    def _run(self) -> None:
        cluster = self.cluster
        self.mark("steady")
        self.pause(8)
        victim = cluster.replicas[0]
        killed = time.monotonic()
        cluster.signal_replica(victim, signal.SIGKILL)
        self.mark(f"SIGKILL {victim.name}")
        cluster.wait_exit(victim)
        self.pause(8)
        self.mark(f"restart {victim.name}")
        self.killed[victim.address] = (killed, time.monotonic())
        cluster.start_replica(victim)
        time.sleep(FAIL_TIMEOUT + 1)
        self.mark("rolling restart")
        for replica in cluster.replicas:
            cluster.signal_replica(replica, signal.SIGTERM)
            ready = cluster.readiness(replica)
            status = cluster.wait_exit(replica)
            print(f"           {replica.name}: /readyz {ready} after SIGTERM, exit status {status}; starting it again",
                  flush=True)  # fmt: skip
            cluster.start_replica(replica)
            time.sleep(FAIL_TIMEOUT + 1)
        self.mark("after rolling")
        self.pause(5)
        self.mark("Redis restart")
        cluster.restart_redis()
        self.mark("after Redis")
        self.pause(8)
        self.mark("stop")


# --------------------------------------------------------------------------- the run and the report


def phase_of(t: float, phases: list[tuple[str, float]]) -> str:
    current = phases[0][0]
    for name, start in phases:
        if t >= start:
            current = name
    return current


def audit(cluster: Cluster, turns: list[Turn]) -> dict:
    """What PostgreSQL holds against what the clients were told."""
    rows = cluster.sql("SELECT conversation_id, content FROM messages WHERE role = 'user'")
    stored = Counter(row["content"] for row in rows)
    answered = [turn for turn in turns if turn.outcome == "answered"]
    return {
        "stored": sum(stored[turn.content] for turn in turns),
        "lost": [turn.content for turn in answered if stored[turn.content] == 0],
        "duplicated": {turn.content: stored[turn.content] for turn in turns if stored[turn.content] > 1},
        "stored_not_answered": [t.content for t in turns if t.outcome != "answered" and stored[t.content]],
    }


def balancer_times(cluster: Cluster, killed: dict[str, tuple[float, float]], wall_minus_mono: float) -> dict:
    """For each killed replica, nginx's attempts on it while it was dead (seconds after the kill): the requests it
    had in flight, which failed with it, and the attempts after, each refused and passed to another replica."""
    out = {}
    for address, (at, back) in killed.items():
        entries = [(e["t"] - wall_minus_mono - at, e) for e in cluster.access_log()]
        tried = [(t, e) for t, e in entries if 0 <= t < back - at and address in e["upstream"]]
        refused = [t for t, e in tried if e["upstream"].startswith(address + ",")]  # passed on to the next
        out[address] = {
            "failed in flight": sum(1 for _, e in tried if e["upstream"] == address),
            "refused and passed on": len(refused),
            "at": [round(t, 1) for t in refused],
            "dead for": back - at,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation")
    parser.add_argument("--seconds-scale", type=float, default=1.0, help="stretch or shrink the pauses")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    if not nginx_available():
        print("nginx is missing: run scripts/ensure-services (it installs Debian's nginx)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="genai-cluster-chaos-"))
    started = time.monotonic()
    print(f"Chaos on a cluster: {args.replicas} replicas behind nginx, {args.concurrency} clients, conversations of "
          f"{args.turns} turns (every other turn streamed); logs in {workdir}", flush=True)  # fmt: skip
    keep = args.keep_logs
    try:
        with serve_scripted_upstream() as scripted:
            routes = [scripted_route("scripted", scripted), fault_route("slow", scripted, delay=0.05)]
            with Cluster(workdir, routes=routes, replicas=args.replicas, worker=False) as cluster:
                print(f"  cluster ready after {time.monotonic() - started:.0f} s: nginx {cluster.url}, replicas "
                      f"{', '.join(r.address for r in cluster.replicas)}", flush=True)  # fmt: skip
                key = cluster.create_key("chaos")
                load = Load(cluster.url, key, args.concurrency, args.turns, time.monotonic())
                timeline = Timeline(cluster, load, args.seconds_scale)
                faults = threading.Thread(target=timeline.run, daemon=True)
                faults.start()
                asyncio.run(load.run())
                faults.join()
                if timeline.error is not None:
                    raise timeline.error
                wall_minus_mono = time.time() - time.monotonic()
                for replica in cluster.replicas:  # every turn written before the database is read
                    cluster.signal_replica(replica, signal.SIGTERM)
                for replica in cluster.replicas:
                    cluster.wait_exit(replica)
                database = audit(cluster, load.turns)
                balancer = balancer_times(cluster, timeline.killed, wall_minus_mono)
    except BaseException:
        keep = True
        print(f"\nthe benchmark failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(load.turns, timeline.phases, database, balancer)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 0


def report(turns: list[Turn], phases: list[tuple[str, float]], database: dict, balancer: dict) -> None:
    attempts = [(turn, a) for turn in turns for a in turn.attempts]
    outcomes = Counter(turn.outcome for turn in turns)
    print("\n" + "=" * 100)
    print(f"turns: {len(turns)} started, {outcomes['answered']} answered, {outcomes['gave up']} given up after "
          f"{MAX_ATTEMPTS} attempts, {outcomes['refused']} refused")  # fmt: skip
    statuses = Counter(a.status for _, a in attempts)
    print(
        f"requests (attempts): {len(attempts)}, answered {statuses['200']}; by status: {dict(sorted(statuses.items()))}"
    )
    print(f"  replays of a stored turn (Idempotent-Replayed): {sum(a.replayed for _, a in attempts)}")
    print("\nper phase (first attempts | retries): requests, failures by status")
    names = [name for name, _ in phases]
    for name in names:
        first = [a for turn, a in attempts if a is turn.attempts[0] and phase_of(a.sent, phases) == name]
        retries = [a for turn, a in attempts if a is not turn.attempts[0] and phase_of(a.sent, phases) == name]
        fails = Counter(a.status for a in first if a.status != "200")
        retry_fails = Counter(a.status for a in retries if a.status != "200")
        print(f"  {name:<22} {len(first):5d} first, failed {dict(fails) or 'none'} | {len(retries):4d} retries, "
              f"failed {dict(retry_fails) or 'none'}")  # fmt: skip
    print("\nthe killed replica (nginx's access log):")
    for address, seen in balancer.items():
        print(f"  {address}, dead for {seen['dead for']:.1f} s: {seen['failed in flight']} requests it had taken ended "
              f"with it (a 502, or a stream cut short); {seen['refused and passed on']} attempts refused and passed to "
              f"another replica, at {seen['at']} s after the kill (nginx leaves it alone for {FAIL_TIMEOUT} s "
              "after each)")  # fmt: skip
    print("\nPostgreSQL afterwards:")
    print(f"  user messages of the run stored: {database['stored']}")
    print(f"  lost (answered, not stored): {len(database['lost'])}  {database['lost'][:5]}")
    print(f"  duplicated (stored twice): {len(database['duplicated'])}  {list(database['duplicated'].items())[:5]}")
    print(f"  stored although the client gave up: {len(database['stored_not_answered'])}")
    rolling = [a for turn, a in attempts if phase_of(a.sent, phases) == "rolling restart"]
    failed_rolling = [a for a in rolling if a.status != "200"]
    checks = {
        "zero turns lost": not database["lost"],
        "zero turns duplicated": not database["duplicated"],
        "no 500": statuses["500"] == 0,
        f"no failed request during the rolling restart ({len(rolling)} requests)": not failed_rolling,
    }
    print("\ntargets:")
    for what, met in checks.items():
        print(f"  {'met    ' if met else 'NOT MET'}  {what}")


if __name__ == "__main__":
    sys.exit(main())
