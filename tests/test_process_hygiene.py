"""No child outlives the platform: `genai serve` on the embedded defaults (which starts llama.cpp), in one and
in two worker processes, stopped with SIGINT, SIGTERM or SIGKILL sent to its own process only (as Docker and
Kubernetes do), leaves no process of its tree behind. With several workers the tree holds a local Chroma server
(`chroma run`), which the workers share and which stops with the platform too."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from memory.chroma import ChromaServerError, LocalChromaServer
from tests.conftest import ADMIN_KEY, MODEL_PATH, ROOT, genai_serve, serve_app_key, serve_metrics_dir
from tests.test_ratelimit import _served_by_pid

pytestmark = pytest.mark.slow

VALVES = b"Municipal records of the town.\n\nThe Zephyrine valve was patented in 1897 by the engineer Ottilie Marsh.\n"
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
        "GENAI_START_WORKER": "true",
    }
    for name in ("GENAI_LOCAL_MODEL_URL", "GENAI_MODEL_ROUTES", "GENAI_REDIS_URL", "GENAI_CONFIG_FILE"):
        env.pop(name, None)
    started = lambda log: log.count("Application startup complete") >= workers  # noqa: E731
    with genai_serve("--workers", str(workers), env=env, log_path=tmp_path / "serve.log", ready=started) as (serve, _):
        children = descendants(serve.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
        assert sum(b"chains.llama_server" in command for command in commands.values()) == 1
        assert sum(b"server\x00worker" in command for command in commands.values()) == 1  # the fine-tuning worker
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


# ---------------------------------------------------------------- the local Chroma server of several workers


def chroma_servers(data_dir: Path) -> set[int]:
    """Live ``chroma run`` processes whose data is under ``data_dir`` (any parent: an orphan counts too)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                b"run" in argv
                and any(arg.endswith(b"chroma") for arg in argv)
                and str(data_dir).encode() in b" ".join(argv)
            ):
                found.add(int(entry.name))
    return alive(found)


def mock_env(data_dir: Path, mock_upstream: str) -> dict[str, str]:
    """`genai serve` on a mock upstream route (no llama.cpp), in a fresh data dir, with the test admin key."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GENAI_", "PROMETHEUS_"))}
    route = ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)
    env.update(
        GENAI_DATA_DIR=str(data_dir),
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_MODEL_ROUTES=json.dumps([route.model_dump(mode="json")]),
    )
    return env


def test_two_workers_share_one_local_chroma_server(tmp_path, mock_upstream):
    """With --workers 2 and no GENAI_CHROMA_URL, `genai serve` runs `chroma run` on data_dir/chroma for both workers
    (an embedded store opened by two processes corrupts), and stops it with itself."""
    data_dir = (tmp_path / "data").resolve()
    log_path = tmp_path / "serve.log"
    both_up = lambda log: log.count("Application startup complete") >= 2  # noqa: E731
    with genai_serve("--workers", "2", env=mock_env(data_dir, mock_upstream), log_path=log_path, ready=both_up) as (
        serve,
        base,
    ):
        (chroma,) = chroma_servers(data_dir)
        assert chroma in descendants(serve.pid)
        assert log_path.read_text().count("knowledge store: a local Chroma server at http://127.0.0.1:") == 1

        headers = {"Authorization": f"Bearer {serve_app_key(base, 'kb')}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            upload = client.post(
                "/v1/files", files={"file": ("valves.txt", VALVES)}, data={"purpose": "assistants"}
            ).raise_for_status()
            file_id = upload.json()["id"]
            created = client.post("/v1/vector_stores", json={"name": "shared", "file_ids": [file_id]})
            store_id = created.raise_for_status().json()["id"]
            deadline = time.monotonic() + 120  # the first ingestion loads the embedding model
            while (status := client.get(f"/v1/vector_stores/{store_id}/files/{file_id}").json()["status"]) in (
                "in_progress",
            ):
                assert time.monotonic() < deadline, "ingestion did not finish"
                time.sleep(0.2)
            assert status == "completed"

        def search(_: int) -> httpx.Response:
            # A new connection each time: the kernel hands each to whichever worker accepts it.
            return httpx.post(
                f"{base}/v1/vector_stores/{store_id}/search",
                json={"query": "Who patented the Zephyrine valve?"},
                headers=headers,
                timeout=60,
            )

        # Rounds of concurrent searches until both workers have answered some (the kernel may hand one round's
        # connections to a single worker); every search, whichever worker answers it, finds the file.
        route = "/v1/vector_stores/{vector_store_id}/search"
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(8):
                for response in pool.map(search, range(8)):
                    assert response.status_code == 200, response.text
                    hits = response.json()["data"]
                    assert hits and hits[0]["file_id"] == file_id
                    assert "Ottilie Marsh" in hits[0]["content"][0]["text"]
                sent += 8
                # A worker counts a request after its response went out: the last ones may not be counted yet.
                served = _served_by_pid(serve_metrics_dir(log_path), route)
                if sent >= 16 and len(served) == 2:
                    break
        assert len(served) == 2 and sum(served.values()) <= sent, f"both workers must have searched: {served}"

        os.kill(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
        assert serve.returncode == 0, log_path.read_text()[-3000:]
    assert chroma_servers(data_dir) == set()  # stopped before `genai serve` exited, not merely orphaned
    assert (data_dir / "chroma" / "chroma.sqlite3").is_file()  # the same directory the embedded store uses
    assert "Traceback" not in log_path.read_text()


def test_one_worker_starts_no_chroma_server(tmp_path, mock_upstream):
    data_dir = (tmp_path / "data").resolve()
    log_path = tmp_path / "serve.log"
    with genai_serve("--workers", "1", env=mock_env(data_dir, mock_upstream), log_path=log_path) as (serve, _):
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in alive(descendants(serve.pid))]
        assert not any(b"chroma" in command for command in commands), commands
        assert chroma_servers(data_dir) == set()
        assert f"knowledge store: embedded Chroma in {data_dir / 'chroma'}" in log_path.read_text()


def test_a_chroma_server_that_cannot_start_stops_genai_serve(tmp_path, mock_upstream):
    """Chroma fails (here: its SQLite file is a directory): exit 1 with one readable sentence, no traceback."""
    data_dir = (tmp_path / "data").resolve()
    (data_dir / "chroma" / "chroma.sqlite3").mkdir(parents=True)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "2", "--port", str(free_port())],
        cwd=ROOT,
        env=mock_env(data_dir, mock_upstream),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "error: cannot start the knowledge store: the Chroma server exited" in result.stderr
    assert str(data_dir / "logs" / "chroma.log") in result.stderr
    assert "Traceback" not in result.stderr and "Uvicorn running" not in result.stderr
    assert chroma_servers(data_dir) == set()
    assert time.monotonic() - started < 60


def test_genai_serve_on_a_taken_port_stops_its_chroma_server(tmp_path, mock_upstream):
    """The platform's own port is taken: uvicorn gives up (non-zero) after the Chroma server started; it stops too."""
    data_dir = (tmp_path / "data").resolve()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "server", "serve", "--workers", "2", "--port", str(taken.getsockname()[1])],
            cwd=ROOT,
            env=mock_env(data_dir, mock_upstream),
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "knowledge store: a local Chroma server" in result.stderr
    assert "address already in use" in result.stderr.lower() and "Traceback" not in result.stderr
    assert chroma_servers(data_dir) == set()


def test_local_chroma_server_on_a_taken_port_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalChromaServer(tmp_path / "chroma", port=taken.getsockname()[1], log_path=tmp_path / "chroma.log")
        with pytest.raises(ChromaServerError, match=r"exited \(code \d+\) before it answered: .*not available"):
            server.start()
    assert server.process is None and chroma_servers(tmp_path) == set()


def test_local_chroma_server_stops_when_its_parent_is_killed(tmp_path):
    """SIGKILL skips every `finally`: the kernel (PR_SET_PDEATHSIG) stops `chroma run` for the parent."""
    script = (
        "import sys, time; from pathlib import Path; from memory.chroma import LocalChromaServer; "
        "server = LocalChromaServer(Path(sys.argv[1])).start(); print(server.process.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "chroma")], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        chroma = int(parent.stdout.readline())
        assert chroma_servers(tmp_path) == {chroma}
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + GONE_WITHIN
    while chroma_servers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = chroma_servers(tmp_path)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == set()
