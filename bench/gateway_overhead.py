"""How much the platform adds in front of a model server: latency and throughput.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/gateway_overhead.py                        # ~1 minute on 2 idle cores
    .venv/bin/python bench/gateway_overhead.py --baseline-ref 2a8ba80   # before and after, one run

A mock OpenAI-compatible upstream (``bench/mock_upstream.py``, fixed short reply, no
model) and the platform (``python -m server.cli serve``, the ``genai serve`` entry point)
run as separate processes; the platform routes model ``mock`` to the upstream and keeps
conversation memory in Redis. The same request bodies go to the upstream directly and,
with a ``conversation_id``, to the platform:

* latency at concurrency 1 (p50, p99; direct and platform requests alternate);
* requests per second at concurrency 32 (direct and platform segments in the order
  D, P, P, D, so that drift in the machine's load cancels out);

each for plain JSON and for streamed (``"stream": true``, timed to the end of the stream)
requests. Target: the platform adds at most 8 ms at p50, concurrency 1.

``--baseline-ref REF`` also runs a platform from ``git archive REF`` (own port, data
directory and API key, same upstream and Redis) in the same run: requests rotate
direct, baseline, platform at concurrency 1, segments go D B P P B D at concurrency 32,
and the table adds a baseline column and the ratio platform/baseline.

When a platform has API keys, an app and a key are created in its fresh temporary
database before it starts, and every request carries a key. Redis memory keys of the
run's conversations are deleted at the end (DB 14 by default). ``--platform-ref HEAD``
runs the platform from ``git archive HEAD`` instead of the working tree. Every child
process is stopped on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import (
    Children,
    add_common_args,
    check,
    connection,
    free_port,
    percentile,
    platform_env,
    run,
    start_mock_upstream,
    start_platform,
)

MEMORY_PREFIX = "genai:memory:"  # memory.history.RedisMemory's key prefix
TARGET_ADDED_P50_MS = 8.0


@dataclass
class Target:
    """Where requests go and how their bodies look."""

    name: str
    base_url: str
    client: str
    api_key: str | None = None  # the platform's key is sent to the upstream too, so both sides carry one
    conversations: list[str] = field(default_factory=list)  # platforms only
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


def fresh_conversations(platforms: list[Target], count: int) -> list[str]:
    """``count`` new conversations on each platform, which its requests continue from now on; all their ids."""
    for platform in platforms:
        platform.conversations = asyncio.run(new_conversations(platform, count))
    return [cid for platform in platforms for cid in platform.conversations]


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


async def latency_c1(targets: list[Target], stream: bool, requests: int, warmup: int) -> dict[str, list[float]]:
    """Sequential requests, the targets taking turns; the order rotates every round
    (D P, P D, ...; with a baseline D B P, B P D, P D B, ...)."""
    conns = {t.name: connection(t.client, t.base_url, t.api_key) for t in targets}
    timings: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for i in range(warmup + requests):
            shift = i % len(targets)
            for target in targets[shift:] + targets[:shift]:
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


async def throughput(targets: list[Target], stream: bool, concurrency: int, warmup_s: float, seconds: float) -> dict[str, dict[str, Any]]:
    """Segments of ``seconds / 2`` each, the targets in order and back (D P P D; D B P P B D);
    rps = completions in the windows / their length."""
    results = {t.name: {"count": 0, "seconds": 0.0, "latencies": []} for t in targets}
    for target in targets + targets[::-1]:
        count, latencies = await throughput_segment(target, stream, concurrency, warmup_s, seconds / 2)
        results[target.name]["count"] += count
        results[target.name]["seconds"] += seconds / 2
        results[target.name]["latencies"] += latencies
    for result in results.values():
        result["rps"] = result["count"] / result["seconds"]
    return results


def forwarded(platform: Target, upstream_url: str) -> dict[str, Any]:
    """What the platform forwards for a continued conversation (memory + the new turn)."""
    platform.conversations = platform.conversations[:1]
    headers = {"Content-Type": "application/json"}
    if platform.api_key:
        headers["Authorization"] = f"Bearer {platform.api_key}"
    httpx.post(
        f"{platform.base_url}/chat/completions", content=platform.body(False), headers=headers, timeout=30
    ).raise_for_status()
    last = httpx.get(f"{upstream_url}/_last", timeout=5).json()
    return {"messages": len(last.get("messages") or []), "keys": sorted(last)}


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    upstream_url, upstream = start_mock_upstream(children)
    print(f"mock upstream   {upstream_url}  (pid {upstream.pid})")
    routes = [{"name": "mock", "base_url": f"{upstream_url}/v1", "max_retries": 0}]

    platforms: list[Target] = []
    # The baseline first, so that the platform's key is the one the direct side carries.
    for name in ("baseline", "platform"):
        if name not in roots:
            continue
        extra = dict(setting.split("=", 1) for setting in args.platform_setting) if name == "platform" else {}
        env = platform_env(args, children.workdir / f"data-{name}", GENAI_MODEL_ROUTES=json.dumps(routes), **extra)
        url, api_key = start_platform(children, f"platform-{name}", free_port(), env, roots[name])
        print(f"{name:16s}{url}  -> model `mock` at {upstream_url}/v1, Redis memory {args.redis_url}")
        print(f"                {'an app API key made for the run (rpm and tpm limits counted in Redis)' if api_key else 'no API key (this version has none)'}")
        platforms.append(Target(name, f"{url}/v1", args.client, api_key))
    print(flush=True)

    direct = Target("direct", f"{upstream_url}/v1", args.client, platforms[-1].api_key)
    targets = [direct, *platforms]
    created: list[str] = []
    results: dict[str, Any] = {}
    try:
        for stream in (False, True):
            mode = "stream" if stream else "plain"
            # Fresh conversations per phase, so that the history the platform loads stays short
            # and alike across phases (about requests / conversations turns each).
            created += fresh_conversations(platforms, args.conversations)
            t0 = time.perf_counter()
            lat = asyncio.run(latency_c1(targets, stream, args.requests, args.warmup))
            hist_c1 = {p.name: asyncio.run(history_lengths(args.redis_url, p.conversations)) for p in platforms}
            print(f"  {mode:6s} c=1   {args.requests} + {args.warmup} warm-up requests each side: {time.perf_counter() - t0:5.1f} s", flush=True)

            created += fresh_conversations(platforms, args.concurrency)
            t0 = time.perf_counter()
            thr = asyncio.run(throughput(targets, stream, args.concurrency, args.segment_warmup, args.seconds))
            hist_cn = {p.name: asyncio.run(history_lengths(args.redis_url, p.conversations)) for p in platforms}
            print(f"  {mode:6s} c={args.concurrency}  {args.seconds:g} s measured each side: {time.perf_counter() - t0:5.1f} s", flush=True)
            results[mode] = {"c1": lat, "cn": thr, "history_c1": hist_c1, "history_cn": hist_cn}
        results["forwarded"] = {p.name: forwarded(p, upstream_url) for p in platforms}
    finally:
        # The platforms first: after an interrupt, requests still in flight there would
        # rebuild the memory lists from SQL after they were deleted.
        for platform in platforms:
            children.stop(f"platform-{platform.name}")
        children.stop("mock-upstream")
        asyncio.run(forget_conversations(args.redis_url, created))
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    baseline = "baseline" in results["forwarded"]
    sides = ["direct", "baseline", "platform"] if baseline else ["direct", "platform"]
    width = 74
    print()
    print("=" * width)
    print("Part 1: gateway overhead (mock upstream; platform with Redis memory, conversation_id set)")
    print("=" * width)
    print(f"{'':28s}{''.join(f'{side:>12s}' for side in sides)}{'added / ratio':>20s}" + (f"{'plat/base':>12s}" if baseline else ""))
    verdicts = []
    for mode in ("plain", "stream"):
        r = results[mode]
        label = "plain JSON" if mode == "plain" else "stream (to [DONE])"
        cn = r["cn"]
        figures = {
            side: {
                "p50": percentile(r["c1"][side], 50),
                "p99": percentile(r["c1"][side], 99),
                "rps": cn[side]["rps"],
                "cn_p50": percentile(cn[side]["latencies"], 50),
            }
            for side in sides
        }
        d, p = figures["direct"], figures["platform"]
        print(f"{label}")
        rows = [
            ("c=1   p50 latency, ms", "p50", "{:12.2f}"),
            ("c=1   p99 latency, ms", "p99", "{:12.2f}"),
            (f"c={args.concurrency}  requests/s", "rps", "{:12.1f}"),
            (f"c={args.concurrency}  p50 latency, ms", "cn_p50", "{:12.2f}"),
        ]
        for title, key, fmt in rows:
            added = f"{p[key] / d[key]:17.3f} x" if key == "rps" else f"{p[key] - d[key]:+17.2f} ms"
            tail = f"{p[key] / figures['baseline'][key]:12.3f}" if baseline else ""
            print(f"  {title:26s}{''.join(fmt.format(figures[side][key]) for side in sides)}{added}{tail}")
        for side in sides[1:]:
            h1, hn = r["history_c1"][side], r["history_cn"][side]
            print(
                f"  {side + ' ' if baseline else ''}memory: {len(h1)} conversations at c=1 ending with {min(h1)}-{max(h1)} messages each; "
                f"{len(hn)} at c={args.concurrency} ending with {min(hn)}-{max(hn)}"
            )
            added = figures[side]["p50"] - d["p50"]
            verdicts.append((label, side, added, figures[side]["rps"] / d["rps"], added <= TARGET_ADDED_P50_MS))
    print("-" * width)
    print(f"Target: the platform adds at most {TARGET_ADDED_P50_MS:g} ms at p50, concurrency 1.")
    for label, side, added, ratio, ok in sorted(verdicts, key=lambda v: sides.index(v[1])):
        print(
            f"  {label:20s}{f' {side}' if baseline else ''} added p50 {added:+7.2f} ms  ->  {'MET' if ok else 'NOT MET'};  "
            f"rps ratio ({side}/direct) at c={args.concurrency}: {ratio:.3f}"
        )
    for side, last in results["forwarded"].items():
        print(
            f"  ({side + ': ' if baseline else ''}a continued conversation's request reached the upstream with {last['messages']} messages, "
            f"memory + the new turn; fields {', '.join(last['keys'])})"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway overhead benchmark: the platform against a mock upstream.")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per side at concurrency 1 (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per side at concurrency 1 (default 30)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrency of the throughput runs (default 32)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per side of each throughput run (default 6)")
    parser.add_argument("--segment-warmup", type=float, default=1.0, help="unmeasured seconds at the start of each throughput segment")
    parser.add_argument(
        "--platform-setting",
        action="append",
        default=[],
        metavar="GENAI_X=VALUE",
        help="a setting of the platform side only (repeatable), e.g. GENAI_PII_POLICY='{}' for every check on",
    )
    parser.add_argument("--conversations", type=int, default=32, help="conversations per concurrency-1 phase (default 32)")
    add_common_args(parser)
    parser.add_argument(
        "--baseline-ref",
        help="also run a platform from `git archive REF` and measure it in the same run, interleaved (before and after)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    order = "D B P P B D" if args.baseline_ref else "D P P D"
    plan = [
        f"part 1: c=1 {args.requests} requests + {args.warmup} warm-up per side and mode, alternating; "
        f"c={args.concurrency} {args.seconds:g} s per side and mode ({order} segments, {args.segment_warmup:g} s warm-up each)",
        f"        conversations: {args.conversations} per c=1 phase, {args.concurrency} per c={args.concurrency} phase (one per worker)",
    ]
    refs = {"platform": args.platform_ref}
    if args.baseline_ref:
        refs["baseline"] = args.baseline_ref
    return run(args, "genai-platform gateway overhead benchmark", plan, refs, measure, report)


if __name__ == "__main__":
    sys.exit(main())
