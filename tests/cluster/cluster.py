"""A cluster on loopback, built as the README's operator's guide builds one: nginx (Debian's) balancing several
``genai serve`` replicas, on one PostgreSQL database, one Redis server, one Chroma server (``chroma run``), with one
``genai worker`` for fine-tuning jobs and one data directory shared by all (uploaded files). The cluster tests
(``tests/cluster/``) and the chaos benchmark (``bench/cluster_chaos.py``) run it.

nginx's open-source edition checks its upstreams passively, as deploy/nginx.conf sets it up: a connection refused
(or not answered within ``proxy_connect_timeout``) is passed to the next replica, nothing having been sent, and the
replica that refused gets no request for ``fail_timeout`` seconds. It does not follow ``/readyz``; it need not for a
rolling restart: a replica that gets SIGTERM serves on for ``GENAI_DRAIN_SECONDS``, then stops completing new TCP
handshakes, accepts what is queued, and only then closes its port (``server/drain.py``), so no request that nginx
sent it is cut off; the requests in flight finish within the shutdown grace period.

Every process runs in its own session and logs into the cluster's work directory; ``Cluster.stop`` stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from chains.local_model_process import free_port, stop_process
from chains.model_routes import ModelRoute
from memory.chroma import LocalChromaServer
from tests.conftest import outside_env
from tests.postgres import fresh_postgres_database

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "sk-admin-cluster-0123456789abcdef0123456789"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
FAIL_TIMEOUT = 5  # seconds nginx sends nothing to a replica that refused a connection (deploy/nginx.conf's)


def nginx_available() -> bool:
    return Path(NGINX).exists()


def clean_env() -> dict[str, str]:
    """This process's environment without any GENAI_ setting, metrics directory or tracing."""
    env = outside_env()
    env.update(PYTHONUNBUFFERED="1", LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false")
    return env


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """``check()``'s first truthy value within ``timeout`` seconds (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            if value := check():
                return value
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:g} s (last: {last!r})")
        time.sleep(interval)


@dataclass
class Replica:
    """One ``genai serve`` of the cluster, on its own port."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


NGINX_CONF = """\
# The cluster's nginx (tests/cluster/cluster.py): deploy/nginx.conf's choices, with paths in the work directory.
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    log_format cluster escape=json '{{"t":$msec,"status":$status,"upstream":"$upstream_addr",'
        '"upstream_status":"$upstream_status","uri":"$request_uri","request_id":"$http_x_request_id"}}';
    upstream genai {{
        include {work}/upstreams.conf;
        keepalive 32;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        access_log {work}/nginx-access.log cluster;
        client_max_body_size 25m;
        location / {{
            proxy_pass http://genai;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # A refused or failed connection goes to the next replica; a request that reached one is never sent
            # to another (a chat turn could be stored twice).
            proxy_next_upstream error timeout;
            proxy_connect_timeout 3s;
            proxy_buffering off;
            proxy_read_timeout 300s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


class Cluster:
    """nginx, ``replicas`` x ``genai serve``, PostgreSQL, Redis, ``chroma run`` and ``genai worker`` (module
    docstring). ``routes``: the platform's model routes; ``settings``: more GENAI_ settings for every process."""

    def __init__(
        self,
        workdir: Path,
        *,
        routes: list[ModelRoute],
        replicas: int = 3,
        settings: dict[str, str] | None = None,
        worker: bool = True,
    ) -> None:
        self.workdir = workdir
        self.routes = routes
        self.settings = settings or {}
        self.with_worker = worker
        self.replicas = [
            Replica(f"replica-{n}", free_port(), workdir / f"replica-{n}.log") for n in range(1, replicas + 1)
        ]
        self.nginx_port = free_port()
        self.redis_port = free_port()
        self.database_url = ""
        self.chroma_url = ""
        self.worker: subprocess.Popen | None = None
        self.redis: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self._stack = contextlib.ExitStack()
        self._logs: list = []

    # ------------------------------------------------------------------ whole

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The balancer's URL: what clients use."""
        return f"http://127.0.0.1:{self.nginx_port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.database_url = self._stack.enter_context(fresh_postgres_database())
        self.start_redis()
        chroma = LocalChromaServer(self.workdir / "chroma", log_path=self.workdir / "chroma.log")
        self.chroma_url = self._stack.enter_context(chroma).url
        self.migrate()
        for replica in self.replicas:
            self.start_replica(replica, wait=False)
        for replica in self.replicas:
            self.wait_ready(replica)
        if self.with_worker:
            self.start_worker()
        self.start_nginx()

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.process is not None:
                stop_process(replica.process, timeout=30)
        if self.worker is not None:
            stop_process(self.worker, timeout=30)
        if self.nginx is not None:
            stop_process(self.nginx, timeout=10)
        self.stop_redis()
        self._stack.close()  # the Chroma server, then the database
        for log in self._logs:
            log.close()
        self._logs.clear()

    def env(self) -> dict[str, str]:
        """The settings every process of the cluster shares."""
        return {
            **clean_env(),
            "GENAI_DATA_DIR": str(self.workdir / "data"),
            "GENAI_DATABASE_URL": self.database_url,
            "GENAI_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "GENAI_CHROMA_URL": self.chroma_url,
            "GENAI_ADMIN_KEY": ADMIN_KEY,
            "GENAI_MODEL_ROUTES": json.dumps([r.model_dump(mode="json", exclude_none=True) for r in self.routes]),
            "GENAI_WORKERS": "1",
            "GENAI_START_WORKER": "false",
            "GENAI_DRAIN_SECONDS": "5",  # deploy/compose.yaml's: longer than nginx's upstream keepalive_timeout
            "GENAI_SHUTDOWN_GRACE_SECONDS": "10",
            "GENAI_STARTUP_WAIT_SECONDS": "60",
            **self.settings,
        }

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env or self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def migrate(self) -> None:
        """``genai db upgrade``, once, before the replicas start (as a deployment's migration step does)."""
        done = subprocess.run(
            [sys.executable, "-m", "server", "db", "upgrade"],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    # ------------------------------------------------------------------ replicas

    def start_replica(self, replica: Replica, *, wait: bool = True) -> None:
        argv = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(replica.port)]
        replica.process = self._spawn(replica.name, argv)
        replica.starts += 1
        if wait:
            self.wait_ready(replica)

    def wait_ready(self, replica: Replica, timeout: float = 180.0) -> None:
        def ready() -> bool:
            if not replica.running:
                raise RuntimeError(f"{replica.name} exited:\n{replica.log.read_text(errors='replace')[-3000:]}")
            return httpx.get(f"{replica.url}/readyz", timeout=5).status_code == 200

        wait_until(ready, timeout, f"{replica.name} ready", interval=0.2)

    def signal_replica(self, replica: Replica, signum: int) -> None:
        assert replica.process is not None
        os.killpg(replica.process.pid, signum)

    def wait_exit(self, replica: Replica, timeout: float = 60.0) -> int:
        assert replica.process is not None
        return replica.process.wait(timeout=timeout)

    def readiness(self, replica: Replica) -> int | None:
        """The status of ``replica``'s ``/readyz``; None when it does not answer."""
        try:
            return httpx.get(f"{replica.url}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return None

    # ------------------------------------------------------------------ worker, Redis, nginx

    def start_worker(self) -> None:
        env = {**self.env(), "GENAI_WORKER_POLL_SECONDS": "0.2", "GENAI_FINE_TUNING_POLL_SECONDS": "0.05"}
        self.worker = self._spawn("worker", [sys.executable, "-m", "server", "worker"], env)

    def start_redis(self) -> None:
        argv = [REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.redis = self._spawn("redis", argv)

        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        wait_until(pong, 20, "redis-server answering")

    def stop_redis(self, signum: int = signal.SIGTERM) -> None:
        if self.redis is not None and self.redis.poll() is None:
            os.killpg(self.redis.pid, signum)
            self.redis.wait(timeout=20)
        self.redis = None

    def restart_redis(self) -> None:
        """Redis stops and comes back empty on the same port (it keeps nothing on disk here)."""
        self.stop_redis()
        self.start_redis()

    def start_nginx(self) -> None:
        for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "nginx-tmp" / temp).mkdir(parents=True, exist_ok=True)
        servers = "".join(f"server {r.address} max_fails=1 fail_timeout={FAIL_TIMEOUT}s;\n" for r in self.replicas)
        (self.workdir / "upstreams.conf").write_text(servers)
        conf = self.workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.workdir, port=self.nginx_port))
        user = "" if os.geteuid() != 0 else "user root;\n"  # as root, workers would run as nobody: no access here
        conf.write_text(user + conf.read_text())
        checked = subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        self.nginx = self._spawn("nginx", [NGINX, "-c", str(conf), "-g", "daemon off;"], clean_env())
        wait_until(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200, 20, "nginx answering")

    def access_log(self) -> list[dict]:
        """nginx's access log: one dict per request (t, status, upstream, upstream_status, uri, request_id)."""
        path = self.workdir / "nginx-access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------------ clients and checks

    def admin(self, base: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=base or self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def create_key(self, app: str, **limits) -> str:
        """An API key of app ``app`` (created when missing), made through the balancer."""
        with self.admin() as admin:
            created = admin.post("/admin/apps", json={"name": app})
            assert created.status_code in (200, 201, 409), created.text
            response = admin.post("/admin/keys", json={"app": app, **limits})
            response.raise_for_status()
            return response.json()["key"]

    def sql(self, query: str, *args) -> list[dict]:
        """Rows of ``query`` on the cluster's database."""
        import asyncpg

        url = self.database_url.replace("postgresql+asyncpg://", "postgresql://")

        async def run() -> list[dict]:
            conn = await asyncpg.connect(url)
            try:
                return [dict(row) for row in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())


@contextlib.contextmanager
def cluster(workdir: Path, **kwargs) -> Iterator[Cluster]:
    with Cluster(workdir, **kwargs) as running:
        yield running
