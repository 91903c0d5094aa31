"""What the rate limiter costs per request against a real Redis: admission (budgets, the requests window, the tokens
window) plus the charge afterwards, for the committed implementation (``git show <ref>:server/gateway/rate_limits.py``,
the ``limits`` library's sliding window counter) and for the working tree's (one Lua script each), in the same run.

    python bench/rate_limit_calls.py [--calls 2000] [--rounds 3] [--ref 13fdbeb] [--redis-url redis://127.0.0.1:6379/14]

Prints, for each, the round trips to Redis per request (counted on redis-py's connections) and the microseconds per
request (admit + spend, one after the other, the best of ``--rounds`` alternating rounds), then the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType

from harness import REDIS_URL, ROOT  # also puts the project root on sys.path
from redis.asyncio.connection import Connection
from starlette.requests import Request

from server.gateway import rate_limits as new_rate_limits
from storage.tenants import Caller


def committed_module(ref: str, workdir: Path) -> ModuleType:
    """The rate limiter as committed at ``ref``, imported from a file of its own (it imports the project's packages)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:server/gateway/rate_limits.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = workdir / "committed_rate_limits.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("committed_rate_limits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def limited_caller() -> Caller:
    """A fresh key with every check on (requests, tokens, both budgets), limits far from reached."""
    return Caller(
        key_id=f"bench-{uuid.uuid4().hex}",
        key_prefix="sk-bench1234",
        is_admin=False,
        app_id=f"bench-{uuid.uuid4().hex}",
        app_name="bench",
        rpm=10**9,
        tpm=10**12,
        app_budget=10.0**9,
        key_budget=10.0**9,
    )


async def one_request(limiter, caller: Caller) -> None:
    await limiter.admit(Request({"type": "http"}), caller, chat=True)
    await limiter.spend(caller, tokens=50, cost=0.001)


class Counted:
    """Counts the round trips of every redis-py asyncio connection (the ``limits`` library's storage's too)."""

    def __enter__(self) -> Counted:
        self.round_trips = 0
        self._original = Connection.send_packed_command

        async def counted(connection, command, check_health: bool = True) -> None:
            self.round_trips += 1
            await self._original(connection, command, check_health)

        Connection.send_packed_command = counted
        return self

    def __exit__(self, *_) -> None:
        Connection.send_packed_command = self._original


async def round_trips(limiter, requests: int = 20) -> float:
    caller = limited_caller()
    await one_request(limiter, caller)  # connects, loads the scripts
    with Counted() as counted:
        for _ in range(requests):
            await one_request(limiter, caller)
    return counted.round_trips / requests


async def timed(limiter, calls: int) -> float:
    """Microseconds per request (admit + spend), on a fresh key after a warm-up."""
    caller = limited_caller()
    for _ in range(50):
        await one_request(limiter, caller)
    start = time.perf_counter()
    for _ in range(calls):
        await one_request(limiter, caller)
    return (time.perf_counter() - start) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ref",
        default="13fdbeb",
        help="the commit of the implementation to compare with (default: the last on `limits`)",
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        old_module = committed_module(args.ref, Path(workdir))
    prefix = f"bench-ratelimit-{uuid.uuid4().hex[:8]}"
    limiters = {
        f"{args.ref} (limits library)": old_module.RateLimiter(args.redis_url, prefix=f"{prefix}-old"),
        "working tree (Lua scripts)": new_rate_limits.RateLimiter(args.redis_url, prefix=f"{prefix}-new"),
    }
    print(
        f"redis {args.redis_url}, {args.calls} requests (admit with budgets, rpm and tpm, then spend) x {args.rounds}"
    )
    try:
        trips = {name: await round_trips(limiter) for name, limiter in limiters.items()}
        best = {name: float("inf") for name in limiters}
        for _ in range(args.rounds):  # alternate, so that both see the same machine
            for name, limiter in limiters.items():
                best[name] = min(best[name], await timed(limiter, args.calls))
    finally:
        for limiter in limiters.values():
            await limiter.aclose()
    for name in limiters:
        print(f"{name:32} {trips[name]:4.1f} round trips/request  {best[name]:8.1f} µs/request")
    old, new = best.values()
    print(f"ratio old/new: {old / new:.2f}x")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
