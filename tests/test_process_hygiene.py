"""No child outlives the platform: `genai serve` on the embedded defaults (which starts llama.cpp), in one and
in two worker processes, stopped with SIGINT, SIGTERM or SIGKILL sent to its own process only (as Docker and
Kubernetes do), leaves no process of its tree behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, MODEL_PATH, genai_serve

pytestmark = pytest.mark.slow

GONE_WITHIN = 15.0  # seconds: graceful shutdowns, and the children's once-a-half-second look at their parent


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            table[int(entry.name)] = (int(ppid), state)
    return table


def descendants(pid: int) -> set[int]:
    table = process_table()
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, (parent, _) in table.items() if parent in frontier}
        found |= children
        frontier = children
    return found


def alive(pids: set[int]) -> set[int]:
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_no_child_outlives_genai_serve(tmp_path, workers, stop_signal):
    env = {
        **os.environ,
        "GENAI_DATA_DIR": str(tmp_path / "data"),
        "GENAI_LOCAL_MODEL_PATH": str(MODEL_PATH),
        "GENAI_LOCAL_MODEL_CONTEXT": "1024",
        "GENAI_ADMIN_KEY": ADMIN_KEY,
    }
    for name in ("GENAI_LOCAL_MODEL_URL", "GENAI_MODEL_ROUTES", "GENAI_REDIS_URL", "GENAI_CONFIG_FILE"):
        env.pop(name, None)
    started = lambda log: log.count("Application startup complete") >= workers  # noqa: E731
    with genai_serve("--workers", str(workers), env=env, log_path=tmp_path / "serve.log", ready=started) as (serve, _):
        children = descendants(serve.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
        assert sum(b"chains.llama_server" in command for command in commands.values()) == 1
        assert len(children) >= 1 + (workers if workers > 1 else 0)  # llama.cpp, and the workers when several

        os.kill(serve.pid, stop_signal)
        serve.wait(timeout=30)
        deadline = time.monotonic() + GONE_WITHIN
        while alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = {pid: commands[pid][:120] for pid in alive(children)}
        for pid in survivors:  # leave the machine clean for the next test, then fail
            os.kill(pid, signal.SIGKILL)
        assert survivors == {}
    if stop_signal != signal.SIGKILL:
        assert serve.returncode in (0, 128 + stop_signal, -stop_signal, 1), serve.returncode
