"""Sizing (issue #15): Redis memory and PostgreSQL disk per 1000 server-side conversations.

Run from the project root with the project's virtualenv (PostgreSQL on 127.0.0.1:5432, trust auth, user
``postgres``; ``redis-server`` on the PATH)::

    .venv/bin/python bench/cluster_memory.py                 # 1000 conversations of 4 turns, about a minute
    .venv/bin/python bench/cluster_memory.py --quick         # 100 conversations of 2 turns (a smoke run)
    .venv/bin/python bench/cluster_memory.py --conversations 5000 --turns 10

Starts its own ``redis-server`` on a free port (no persistence), so that ``INFO memory`` counts only this run, a
fresh database on the local PostgreSQL (dropped afterwards), ``bench/mock_upstream.py`` as the model route ``mock``
(a fixed reply of about 70 characters) and ``genai serve`` (one worker, the semantic cache off, no fine-tuning
worker) on both. Then creates ``--conversations`` conversations of ``--turns`` turns each through the
OpenAI-compatible API (``conversation_id: "new"``, then the id the answer carries), user messages of about
``--message-chars`` characters, ``--concurrency`` conversations at a time (httpx), each turn with an
``Idempotency-Key`` as a retrying client sends it (``--no-idempotency-key`` for clients that send none).

Prints, before and after (usage records are buffered for ``GENAI_USAGE_FLUSH_SECONDS``: it waits a second first),
per 1000 conversations and per conversation: Redis ``used_memory`` and ``used_memory_dataset`` deltas, the keys
(by prefix) and ``MEMORY USAGE`` of a conversation's list, the TTL of a memory key (``GENAI_MEMORY_TTL_SECONDS``:
Redis holds only the conversations active within it); ``pg_database_size`` and the per-table
``pg_total_relation_size`` deltas of conversations, messages, usage and idempotency_keys, and what their heaps hold
(``pgstattuple``: live and dead tuples, free space; the turns' UPDATEs of ``conversations`` leave dead tuples until
autovacuum makes their space reusable); the platform's resident memory
(every process of ``genai serve``) before and after. It prints figures and asserts nothing. ``--redis-url`` and
``--client`` of the common options are not used (its own Redis; httpx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from harness import (
    WORDS,
    Children,
    add_common_args,
    free_port,
    platform_env,
    run,
    start_mock_upstream,
    start_platform,
    start_redis,
)
from vs_litellm import resident_mib, serving_pid

from tests.postgres import fresh_postgres_database

TABLES = ("conversations", "messages", "usage", "idempotency_keys")  # storage/tables.py
MEMORY_PREFIX = "genai:memory:"  # memory.history.RedisMemory's key prefix


def user_message(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars - 1:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return (" ".join(words))[: chars - 1] + "?"


# --------------------------------------------------------------------------- Redis and PostgreSQL figures


async def redis_figures(url: str) -> dict[str, Any]:
    """``INFO memory``'s figures, the keys by prefix, and a sample of the memory keys' size, encoding and TTL."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        info = await redis.info("memory")
        prefixes: Counter[str] = Counter()
        memory_keys: list[bytes] = []
        async for key in redis.scan_iter(count=1000):
            text = key.decode(errors="replace")
            if text.startswith(MEMORY_PREFIX):
                prefixes[MEMORY_PREFIX + ("*:stale" if text.endswith(":stale") else "*")] += 1
                if not text.endswith(":stale"):
                    memory_keys.append(key)
            else:
                prefixes[":".join(text.split(":")[:2]) + ":*"] += 1
        sample = memory_keys[:200]
        usage = [await redis.memory_usage(key, samples=0) or 0 for key in sample]
        lengths = [await redis.llen(key) for key in sample]
        encodings = Counter([(await redis.object("encoding", key) or b"?").decode() for key in sample])
        ttl = await redis.ttl(sample[0]) if sample else None
        return {
            "used_memory": info["used_memory"],
            "used_memory_dataset": info["used_memory_dataset"],
            "used_memory_overhead": info["used_memory_overhead"],
            "mem_clients_normal": info["mem_clients_normal"],
            "used_memory_scripts": info.get("used_memory_scripts", 0),
            "keys": sum(prefixes.values()),
            "prefixes": prefixes,
            "memory_keys": len(memory_keys),
            "key_bytes": sum(usage) / len(usage) if usage else 0.0,
            "list_length": sum(lengths) / len(lengths) if lengths else 0.0,
            "encodings": encodings,
            "ttl": ttl,
        }
    finally:
        await redis.aclose()


async def postgres_figures(database_url: str) -> dict[str, Any]:
    """``pg_database_size`` and, per table, its rows and total (heap + indexes + TOAST) and index sizes."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = {}
        for table in TABLES:
            row = await conn.fetchrow(
                f"SELECT count(*) AS rows, pg_total_relation_size('{table}') AS total, "
                f"pg_indexes_size('{table}') AS indexes FROM {table}"
            )
            tables[table] = dict(row)
        database = await conn.fetchval("SELECT pg_database_size(current_database())")
        return {"database": database, "tables": tables}
    finally:
        await conn.close()


async def heap_figures(database_url: str) -> dict[str, dict[str, int]] | None:
    """Per table, what its heap holds (pgstattuple): live and dead tuples' bytes, free space; None without the
    extension. Run last: creating the extension adds to the database."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        except asyncpg.PostgresError:
            return None
        heaps = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT table_len, tuple_len, dead_tuple_count, dead_tuple_len, free_space FROM pgstattuple($1)", table
            )
            heaps[table] = dict(row)
        return heaps
    finally:
        await conn.close()


def platform_rss(port: int) -> float:
    """The resident memory (MiB) of every Python process of ``genai serve`` on ``port``."""
    return sum(resident_mib(serving_pid(port)))


# --------------------------------------------------------------------------- the load


async def converse(args: argparse.Namespace, url: str, api_key: str | None) -> dict[str, Any]:
    """``args.conversations`` conversations of ``args.turns`` turns, ``args.concurrency`` at a time."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(15)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(args.conversations):
        queue.put_nowait(index)
    ids: list[str] = []
    chars = {"user": 0, "assistant": 0}
    counts = {"user": 0, "assistant": 0}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async with httpx.AsyncClient(base_url=f"{url}/v1", timeout=120, limits=limits, headers=headers) as client:

        async def turn(conversation: str, text: str) -> str:
            extra = {"Idempotency-Key": uuid.uuid4().hex} if args.idempotency_key else {}
            body = {
                "model": "mock",
                "messages": [{"role": "user", "content": text}],
                "conversation_id": conversation,
            }
            response = await client.post("/chat/completions", json=body, headers=extra)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
            answer = response.json()
            chars["user"] += len(text)
            chars["assistant"] += len(answer["choices"][0]["message"]["content"] or "")
            counts["user"] += 1
            counts["assistant"] += 1
            if not answer.get("conversation_id"):
                raise RuntimeError(f"no conversation_id in the answer: {response.text[:500]}")
            return answer["conversation_id"]

        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                conversation = "new"
                for _ in range(args.turns):
                    conversation = await turn(conversation, user_message(rng, args.message_chars))
                ids.append(conversation)
                if len(ids) % max(1, args.conversations // 10) == 0:
                    print(f"  {len(ids)} conversations", flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return {
        "ids": ids,
        "user_chars": chars["user"] / max(counts["user"], 1),
        "assistant_chars": chars["assistant"] / max(counts["assistant"], 1),
    }


# --------------------------------------------------------------------------- the benchmark


def warm_up(url: str, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": "mock", "messages": [{"role": "user", "content": "warm up"}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"warm-up: HTTP {response.status_code}: {response.text[:500]}")


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    redis_port = free_port()
    start_redis(children, redis_port)
    args.redis_url = f"redis://127.0.0.1:{redis_port}/0"
    upstream_url, _ = start_mock_upstream(children)
    routes = [{"name": "mock", "base_url": f"{upstream_url}/v1", "max_retries": 0}]
    with fresh_postgres_database() as database_url:
        try:
            env = platform_env(
                args, children.workdir / "data", GENAI_MODEL_ROUTES=json.dumps(routes), GENAI_DATABASE_URL=database_url,
                GENAI_CACHE_ENABLED="false", GENAI_START_WORKER="false",
            )  # fmt: skip
            port = free_port()
            url, key = start_platform(children, "platform", port, env, roots["platform"])
            print(f"redis {args.redis_url}, platform {url}, database {database_url.rsplit('/', 1)[1]}", flush=True)
            warm_up(url, key)  # a stateless request: the first request's lazy imports are not counted as memory
            before = {
                "redis": asyncio.run(redis_figures(args.redis_url)),
                "postgres": asyncio.run(postgres_figures(database_url)),
                "rss": platform_rss(port),
            }
            started = time.perf_counter()
            load = asyncio.run(converse(args, url, key))
            seconds = time.perf_counter() - started
            time.sleep(1.0)  # the usage records' buffer (GENAI_USAGE_FLUSH_SECONDS, 0.2 s)
            after = {
                "redis": asyncio.run(redis_figures(args.redis_url)),
                "postgres": asyncio.run(postgres_figures(database_url)),
                "rss": platform_rss(port),
            }
            heaps = asyncio.run(heap_figures(database_url))
        finally:
            children.stop_all()  # the platform, before its database is dropped
    return {"before": before, "after": after, "heaps": heaps, "load": load, "seconds": seconds}


def size(value: float) -> str:
    """Bytes as B, KiB, MiB or GiB (signed)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    before, after, heaps, load = results["before"], results["after"], results["heaps"], results["load"]
    n = len(load["ids"])
    messages = 2 * n * args.turns
    per_k = 1000 / n
    width = 96
    print()
    print("=" * width)
    print(
        f"{n} conversations of {args.turns} turns ({messages} messages) in {results['seconds']:.1f} s "
        f"({n * args.turns / results['seconds']:.0f} turns/s); average characters per message: "
        f"user {load['user_chars']:.0f}, assistant {load['assistant_chars']:.0f}, "
        f"both {(load['user_chars'] + load['assistant_chars']) / 2:.0f}"
    )
    print("=" * width)
    header = f"  {'':34s}{'before':>12s}{'after':>12s}{'delta':>12s}{'per 1000 conv.':>16s}{'per conv.':>11s}"

    rb, ra = before["redis"], after["redis"]
    print("Redis (its own redis-server, no persistence; used_memory = dataset + overhead)")
    print(header)
    fields = ("used_memory", "used_memory_dataset", "used_memory_overhead", "mem_clients_normal", "used_memory_scripts")
    for field in fields:
        label = f"  of which {field}" if field in ("mem_clients_normal", "used_memory_scripts") else field
        delta = ra[field] - rb[field]
        print(
            f"  {label:34s}{size(rb[field]):>12s}{size(ra[field]):>12s}{size(delta):>12s}"
            f"{size(delta * per_k):>16s}{size(delta / n):>11s}"
        )
    print(
        "  (mem_clients_normal: the buffers of the platform's pooled connections, which grow with concurrency, not "
        "with conversations)"
    )
    delta_keys = ra["keys"] - rb["keys"]
    print(
        f"  {'keys':34s}{rb['keys']:>12d}{ra['keys']:>12d}{delta_keys:>12d}{delta_keys * per_k:>16.0f}{delta_keys / n:>11.2f}"
    )
    for prefix, count in sorted(ra["prefixes"].items()):
        print(f"    {prefix:32s}{rb['prefixes'].get(prefix, 0):>12d}{count:>12d}")
    encodings = ", ".join(f"{name} {count}" for name, count in ra["encodings"].most_common())
    print(
        f"  a conversation's list: {ra['list_length']:.1f} messages, MEMORY USAGE {size(ra['key_bytes'])} "
        f"({size(ra['key_bytes'] / max(ra['list_length'], 1))} a message; encoding: {encodings}); "
        f"used_memory per stored message {size((ra['used_memory'] - rb['used_memory']) / messages)}"
    )
    ttl = ra["ttl"]
    if ttl is not None and ttl >= 0:
        print(
            f"  TTL of a memory key: {ttl} s ({ttl / 86400:.1f} days, GENAI_MEMORY_TTL_SECONDS): Redis holds only the "
            "conversations with a turn within it; an expired one is rebuilt from the database on its next turn"
        )
    else:
        print(f"  TTL of a memory key: {ttl} (no memory key, or no expiry)")

    pb, pa = before["postgres"], after["postgres"]
    print()
    print("PostgreSQL (a fresh database; total = heap + indexes + TOAST + free space and visibility maps)")
    print(
        f"  {'':34s}{'rows':>8s}{'before':>12s}{'after':>12s}{'delta':>12s}{'per 1000 conv.':>16s}{'per conv.':>11s}"
        f"{'indexes':>10s}"
    )
    for table in TABLES:
        b, a = pb["tables"][table], pa["tables"][table]
        delta = a["total"] - b["total"]
        share = (a["indexes"] - b["indexes"]) / delta if delta else 0.0
        print(
            f"  {table:34s}{a['rows']:>8d}{size(b['total']):>12s}{size(a['total']):>12s}{size(delta):>12s}"
            f"{size(delta * per_k):>16s}{size(delta / n):>11s}{100 * share:>9.0f}%"
        )
    delta = pa["database"] - pb["database"]
    print(
        f"  {'pg_database_size':34s}{'':>8s}{size(pb['database']):>12s}{size(pa['database']):>12s}{size(delta):>12s}"
        f"{size(delta * per_k):>16s}{size(delta / n):>11s}"
    )
    message_delta = pa["tables"]["messages"]["total"] - pb["tables"]["messages"]["total"]
    print(f"  messages: {size(message_delta / messages)} per stored message (row, indexes)")
    if heaps is None:
        print("  (pgstattuple is not available: live and dead tuples not shown)")
    else:
        print(
            "  heaps (pgstattuple): live tuples, dead tuples (turns' UPDATEs, until VACUUM makes them reusable), free"
        )
        for table in TABLES:
            heap = heaps[table]
            print(
                f"    {table:32s}{size(heap['table_len']):>12s}: live {size(heap['tuple_len']):>11s} "
                f"({size(heap['tuple_len'] / n)} per conv.), dead {heap['dead_tuple_count']:>6d} "
                f"{size(heap['dead_tuple_len']):>11s}, free {size(heap['free_space']):>11s}"
            )

    print()
    print(
        f"platform resident memory (genai serve, all its processes): {before['rss']:.0f} MiB before, "
        f"{after['rss']:.0f} MiB after ({after['rss'] - before['rss']:+.0f} MiB)"
    )
    if not args.idempotency_key:
        print("no Idempotency-Key sent: idempotency_keys holds nothing (--no-idempotency-key)")
    else:
        print(
            "idempotency_keys: one row (with the whole reply) per turn sent with an Idempotency-Key, kept 24 h for "
            "retries; each serving process deletes the expired ones every 10 minutes (storage/idempotency.py): "
            "the table holds about a day of turns"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--conversations", type=int, default=1000, help="conversations to create (default 1000)")
    parser.add_argument("--turns", type=int, default=4, help="turns of each conversation (default 4)")
    parser.add_argument("--message-chars", type=int, default=200, help="characters of each user message (default 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="conversations at a time (default 16)")
    parser.add_argument(
        "--no-idempotency-key", dest="idempotency_key", action="store_false",
        help="send no Idempotency-Key (by default each turn has one, as a retrying client sends it)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 conversations of 2 turns")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations, args.turns = 100, 2
    args.client = "httpx"  # what converse() uses, whatever --client says
    plan = [
        f"{args.conversations} conversations of {args.turns} turns, user messages of ~{args.message_chars} characters, "
        f"concurrency {args.concurrency} (httpx), Idempotency-Key per turn: {'yes' if args.idempotency_key else 'no'}",
        "own redis-server (free port, no persistence), a fresh PostgreSQL database, the mock upstream as route mock",
    ]
    return run(
        args,
        "Redis memory and PostgreSQL disk per 1000 conversations (#15)",
        plan,
        {"platform": args.platform_ref},
        measure,
        report,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
