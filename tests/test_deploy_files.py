"""The reference deployment files (Dockerfile, deploy/): valid for their own tools, and doing what their comments say.

No container engine or cluster runs here, so each file is checked by the tool that reads it without one:
deploy/compose.yaml by `docker-compose config` (Debian's docker-compose 1.29, installed by scripts/ensure-services),
deploy/kubernetes/ by kubernetes-validate (the Kubernetes API's JSON schemas, bundled: no network), deploy/nginx.conf
by `nginx -t`, and the Dockerfile by dockerfile-parse. Then the promises across files: the same settings on every
replica, probes on the right paths, grace periods longer than the drain and the shutdown grace, the pins of
pyproject.toml and the Makefile, and commands the CLI has.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from server.cli import build_parser
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
NGINX_CONF = DEPLOY / "nginx.conf"

# What the compose file needs from the environment of `docker compose` (placeholders here).
COMPOSE_ENV = {"POSTGRES_PASSWORD": "pg-test-password", "GENAI_ADMIN_KEY": "admin-test-key"}
# The settings every process of one deployment must agree on.
SHARED_SETTINGS = (
    "GENAI_DATABASE_URL",
    "GENAI_REDIS_URL",
    "GENAI_CHROMA_URL",
    "GENAI_DATA_DIR",
    "GENAI_ADMIN_KEY",
    "GENAI_PII_HASH_SALT",
)
GENAI_SETTINGS = {f"GENAI_{name.upper()}" for name in Settings.model_fields}


def _seconds(duration: str | int | float) -> float:
    """A compose duration (``30s``, ``1m30s``, ``2m``, ``500ms``) or a number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _size(value: str) -> int:
    """An nginx size (``21m``, ``512k``, ``1g``, ``100``) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def _is_cli_command(argv: list[str]) -> bool:
    """Whether ``genai ARGV`` is a command the CLI has (argparse exits on anything else)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- compose


def _docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is missing: scripts/ensure-services installs Debian's (`make services`)")
    # Only the variables given: none of the caller's GENAI_*, COMPOSE_* or DOCKER_*, and no deploy/.env
    # (--env-file names an empty one), so that the result depends on the file alone.
    clean = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    with tempfile.TemporaryDirectory(prefix="genai-compose-") as tmp:
        env_file = Path(tmp) / "empty.env"
        env_file.touch()
        return subprocess.run(
            [executable, "--env-file", str(env_file), "--project-directory", str(DEPLOY)]
            + ["-f", str(DEPLOY / "compose.yaml"), *args],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=DEPLOY,
        )


@pytest.fixture(scope="module")
def compose() -> dict:
    """deploy/compose.yaml as `docker-compose config` resolves it (anchors merged, variables filled in)."""
    quiet = _docker_compose("config", "-q", env=COMPOSE_ENV)
    assert quiet.returncode == 0, quiet.stderr
    resolved = _docker_compose("config", env=COMPOSE_ENV)
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)


def _replicas(compose: dict) -> dict[str, dict]:
    return {name: service for name, service in compose["services"].items() if re.fullmatch(r"genai-\d+", name)}


def test_compose_needs_its_secrets():
    """Without POSTGRES_PASSWORD (or the admin key) the file does not resolve, rather than running with an empty one."""
    for missing in COMPOSE_ENV:
        result = _docker_compose("config", "-q", env={k: v for k, v in COMPOSE_ENV.items() if k != missing})
        assert result.returncode != 0
        assert missing in result.stderr


def test_compose_every_process_shares_the_same_state(compose):
    services = compose["services"]
    replicas = _replicas(compose)
    assert len(replicas) >= 2
    processes = {**replicas, "worker": services["worker"], "migrate": services["migrate"]}
    environments = {name: service["environment"] for name, service in processes.items()}
    for setting in SHARED_SETTINGS:
        values = {name: env.get(setting) for name, env in environments.items()}
        assert len(set(values.values())) == 1, f"{setting} differs: {values}"
    env = environments["genai-1"]
    database = urlsplit(env["GENAI_DATABASE_URL"])
    assert database.scheme == "postgresql+asyncpg"
    assert database.hostname == "postgres" and database.port == 5432
    assert database.password == COMPOSE_ENV["POSTGRES_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == COMPOSE_ENV["POSTGRES_PASSWORD"]
    assert env["GENAI_ADMIN_KEY"] == COMPOSE_ENV["GENAI_ADMIN_KEY"]
    assert urlsplit(env["GENAI_REDIS_URL"]).hostname == "redis"
    assert urlsplit(env["GENAI_CHROMA_URL"]).hostname == "chroma"
    for name, environment in environments.items():
        assert environment["GENAI_START_WORKER"] == "false", name
        assert environment["GENAI_HOST"] == "0.0.0.0", name
        # Every GENAI_* name is a setting the platform reads (a misspelt one would be ignored silently).
        assert set(k for k in environment if k.startswith("GENAI_")) <= GENAI_SETTINGS, name
    # One data volume, mounted at the data directory by every replica and the worker.
    for name in [*replicas, "worker"]:
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        assert mounts.get(env["GENAI_DATA_DIR"]) == "genai-data", name
    assert "genai-data" in compose["volumes"]


def _settings_from(environment: dict[str, str], monkeypatch) -> Settings:
    """The platform's settings as a process with exactly these GENAI_* variables reads them."""
    for name in [k for k in os.environ if k.startswith("GENAI_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_compose_settings_parse(compose, monkeypatch):
    env = compose["services"]["genai-1"]["environment"]
    settings = _settings_from(env, monkeypatch)
    assert settings.resolved_workers == 1 and settings.start_worker is False
    assert settings.drain_seconds == 5 and settings.shutdown_grace_seconds == 10


def test_compose_commands_are_cli_commands(compose):
    services = compose["services"]
    for name in [*_replicas(compose), "worker", "migrate"]:
        assert _is_cli_command(services[name]["command"]), (name, services[name]["command"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["worker"]["command"] == ["worker"]
    for name in _replicas(compose):
        assert services[name]["command"] == ["serve"]


def test_compose_replicas_are_checked_ready_and_stopped_gracefully(compose):
    services = compose["services"]
    for name, replica in _replicas(compose).items():
        check = " ".join(replica["healthcheck"]["test"])
        assert "/readyz" in check, name
        assert ":%s/" % replica["environment"]["GENAI_PORT"] in check, name
        env = replica["environment"]
        drain = float(env["GENAI_DRAIN_SECONDS"])
        grace = float(env["GENAI_SHUTDOWN_GRACE_SECONDS"])
        assert drain > 0
        assert _seconds(replica["stop_grace_period"]) > drain + grace, name
        # Started in order: the schema migrated, the services it reads answering.
        depends = replica["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        for service in ("redis", "chroma"):
            assert depends[service]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in ("postgres", "redis", "chroma"):
        assert services[service]["healthcheck"]["test"], service
    assert services["chroma"]["healthcheck"]["test"][-1].endswith("/api/v2/heartbeat")
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    # The worker serves no HTTP: the image's /healthz check is off for it.
    assert services["worker"]["healthcheck"]["test"] == ["NONE"]


def test_compose_nginx_fronts_every_replica(compose):
    nginx = compose["services"]["nginx"]
    source, target, *mode = nginx["volumes"][0].split(":")
    assert Path(source) == NGINX_CONF and target == "/etc/nginx/nginx.conf" and mode == ["ro"]
    assert {"published": 8080, "target": 80} in [{k: p[k] for k in ("published", "target")} for p in nginx["ports"]]
    replicas = _replicas(compose)
    assert {name: dep["condition"] for name, dep in nginx["depends_on"].items()} == dict.fromkeys(
        replicas, "service_healthy"
    )
    # nginx's upstream names exactly the replicas, on their port.
    upstream = [address.rsplit(":", 1) for address, _ in _upstream_servers()]
    assert sorted(host for host, _ in upstream) == sorted(replicas)
    assert {port for _, port in upstream} == {r["environment"]["GENAI_PORT"] for r in replicas.values()}


# ---------------------------------------------------------------------------------------------------- nginx


def _nginx_directives() -> str:
    """deploy/nginx.conf without its comments (the file has no # inside quoted strings)."""
    return re.sub(r"#[^\n]*", "", NGINX_CONF.read_text(encoding="utf-8"))


def _upstream_servers() -> list[tuple[str, str]]:
    """The ``server`` lines of the upstream block: (address, options)."""
    (block,) = re.findall(r"^\s*upstream\s+genai\s*\{([^}]*)\}", _nginx_directives(), re.MULTILINE)
    return re.findall(r"^[ \t]*server[ \t]+(\S+)([^;]*);", block, re.MULTILINE)


def _directive(text: str, name: str) -> list[str]:
    return [" ".join(m.split()) for m in re.findall(rf"^\s*{name}\s+([^;]*);", text, re.MULTILINE)]


def test_nginx_conf_choices():
    text = _nginx_directives()
    servers = _upstream_servers()
    assert len(servers) >= 2
    for _, options in servers:
        assert set(options.split()) >= {"max_fails=1", "fail_timeout=5s"}
    # Retries only of requests that reached no replica: a POST is never replayed on another one.
    assert _directive(text, "proxy_next_upstream") == ["error timeout"]
    assert "non_idempotent" not in text
    assert _directive(text, "proxy_buffering") == ["off"]
    assert _seconds(_directive(text, "proxy_read_timeout")[0]) >= 300
    assert _directive(text, "proxy_http_version") == ["1.1"]
    headers = {line.split()[0].lower(): line.split(maxsplit=1)[1] for line in _directive(text, "proxy_set_header")}
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-request-id"] == "$genai_request_id"
    assert headers["connection"] == '""'
    assert re.search(r"\$http_x_request_id\s+\$genai_request_id", text)  # the client's id when it sends one
    # Uploads as large as the platform takes, and a margin.
    max_file = Settings.model_fields["max_file_bytes"].default
    assert max_file < _size(_directive(text, "client_max_body_size")[0]) <= 2 * max_file
    # Which replica answered is not the client's business.
    assert not any("upstream" in line for line in _directive(text, "add_header"))


def _nginx() -> str:
    executable = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if executable is None:
        pytest.skip("nginx is missing: scripts/ensure-services installs Debian's (`make services`)")
    return executable


def _nginx_test(conf: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on ``conf`` with every file nginx writes in ``tmp_path``."""
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    return subprocess.run(
        [_nginx(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")]
        + ["-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _local_nginx_conf(tmp_path: Path) -> str:
    """deploy/nginx.conf with what only exists inside compose swapped: the replicas' names (Docker's DNS) for
    loopback addresses, port 80 for a free one (`nginx -t` binds it), the log directory for ``tmp_path``. Every other
    directive is the file's own."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    text, servers = re.subn(r"(?m)^(\s*server\s+)genai-(\d+):8000\b", r"\g<1>127.0.0.1:1800\2", text)
    text, listens = re.subn(r"(?m)^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{_free_port()};", text)
    text, logs = re.subn(r"/var/log/nginx/", f"{tmp_path}/", text)
    assert servers >= 2 and listens == 1 and logs == 2, (servers, listens, logs)
    return text


def test_nginx_conf_passes_nginx_t(tmp_path):
    result = _nginx_test(_local_nginx_conf(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # And the same check does fail on a broken directive, so the success above means something.
    broken = _local_nginx_conf(tmp_path).replace("proxy_buffering off;", "proxy_buffering sometimes;")
    assert _nginx_test(broken, tmp_path).returncode != 0


# ---------------------------------------------------------------------------------------------------- kubernetes


@functools.cache
def _manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append((path.name, document))
    return found


def _kind(kind: str, name: str | None = None) -> dict:
    matches = [d for _, d in _manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def _kubernetes_versions() -> list[str]:
    """The oldest Kubernetes the manifests promise (1.27) and the newest the package knows."""
    known = kubernetes_validate.utils.all_versions()
    oldest = "1.27" if any(v.startswith("1.27.") for v in known) else known[0]
    return [oldest, kubernetes_validate.latest_version()]


def test_kubernetes_manifests_validate_strictly():
    manifests = _manifests()
    assert {d["kind"] for _, d in manifests} >= {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    for version in _kubernetes_versions():
        for filename, document in manifests:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                pytest.fail(f"{filename}: {document['kind']} against {version}: {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                pytest.fail(f"{filename}: {error.message}")
    # Strict: a misspelt field fails (it would be dropped silently by a lenient apply).
    deployment = json.loads(json.dumps(_kind("Deployment", "genai")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, _kubernetes_versions()[-1], strict=True)


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _config() -> dict[str, str]:
    return _kind("ConfigMap", "genai-config")["data"]


def test_kubernetes_settings_are_settings():
    config = _config()
    secret = _kind("Secret", "genai-secrets")["stringData"]
    assert set(config) <= GENAI_SETTINGS and set(secret) <= GENAI_SETTINGS
    assert {"GENAI_ADMIN_KEY", "GENAI_DATABASE_URL"} <= set(secret)
    assert not {"GENAI_ADMIN_KEY", "GENAI_DATABASE_URL"} & set(config), "secrets belong in the Secret"
    assert urlsplit(secret["GENAI_DATABASE_URL"]).scheme == "postgresql+asyncpg"
    assert config["GENAI_START_WORKER"] == "false"
    assert config["GENAI_HOST"] == "0.0.0.0"
    assert int(config["GENAI_WORKERS"]) in (1, 2)
    assert config["GENAI_REDIS_URL"] and config["GENAI_CHROMA_URL"]
    for name in ("genai", "genai-worker"):
        sources = _container(_kind("Deployment", name))["envFrom"]
        assert {"configMapRef": {"name": "genai-config"}} in sources, name
        assert {"secretRef": {"name": "genai-secrets"}} in sources, name


def test_kubernetes_settings_parse(monkeypatch):
    settings = _settings_from({**_config(), **_kind("Secret", "genai-secrets")["stringData"]}, monkeypatch)
    assert settings.start_worker is False and settings.host == "0.0.0.0"
    assert str(settings.data_dir) == "/var/lib/genai"


def test_kubernetes_server_probes_and_shutdown():
    deployment = _kind("Deployment", "genai")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(_config()["GENAI_PORT"]) in ports.values()

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("readinessProbe") == ("/readyz", 8000)
    assert probe("livenessProbe") == ("/healthz", 8000)
    assert probe("startupProbe") == ("/healthz", 8000)
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 30, "liveness restarts a busy pod too soon"
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 120, "the model needs time to load"

    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2
    pause = float(command[1])
    assert pause >= 5
    config = _config()
    drain = float(config["GENAI_DRAIN_SECONDS"])
    grace = float(config["GENAI_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= pause + drain + grace + 5
    assert _is_cli_command(container["args"]) and container["args"] == ["serve"]
    assert deployment["spec"]["replicas"] >= 2


def _security(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert merged["runAsNonRoot"] is True
    assert merged["runAsUser"] == _dockerfile_uid()
    assert merged["allowPrivilegeEscalation"] is False
    assert merged["readOnlyRootFilesystem"] is True
    # A read-only root needs somewhere to write: /tmp from an emptyDir, the data directory from the shared claim.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    claim = volumes[mounts[_config()["GENAI_DATA_DIR"]]]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in _kind("PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_kubernetes_pods_run_unprivileged_and_share_the_data_directory():
    for name in ("genai", "genai-worker"):
        _security(_kind("Deployment", name))
    job = _kind("Job", "genai-migrate")["spec"]["template"]["spec"]
    assert {**job["securityContext"], **job["containers"][0]["securityContext"]}["runAsNonRoot"] is True


def test_kubernetes_worker_and_migration_run_cli_commands():
    worker = _kind("Deployment", "genai-worker")
    assert _container(worker)["args"] == ["worker"] and worker["spec"]["replicas"] == 1
    (migrate,) = _kind("Job", "genai-migrate")["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["db", "upgrade"] and _is_cli_command(migrate["args"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_kubernetes_selectors_find_the_server_pods():
    deployment = _kind("Deployment", "genai")
    server_labels = deployment["spec"]["template"]["metadata"]["labels"]
    worker_labels = _kind("Deployment", "genai-worker")["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], server_labels)
    selectors = {
        "Service": _kind("Service", "genai")["spec"]["selector"],
        "PodDisruptionBudget": _kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert _selects(selector, server_labels), kind
        assert not _selects(selector, worker_labels), f"{kind} also selects the worker's pods"

    service = _kind("Service", "genai")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    container_ports = {(p["name"], p["containerPort"]) for p in _container(deployment)["ports"]}
    assert port["targetPort"] in {name for name, _ in container_ports} | {number for _, number in container_ports}

    hpa = _kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "genai"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 70
    # The autoscaler's percentage is of the CPU request: without one it cannot scale.
    assert _container(deployment)["resources"]["requests"]["cpu"]

    pdb = _kind("PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1

    for _, document in _manifests():
        if document["kind"] == "Ingress":
            for rule in document["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    assert backend["name"] == "genai"
                    assert backend["port"] in ({"name": port["name"]}, {"number": port["port"]})


# ---------------------------------------------------------------------------------------------------- Dockerfile


@functools.cache
def _dockerfile() -> list[dict]:
    """The Dockerfile's instructions (no comments), each with the index of its stage."""
    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile").read_bytes()))
    instructions, stage = [], -1
    for item in parser.structure:
        if item["instruction"] == "COMMENT":
            continue
        if item["instruction"] == "FROM":
            stage += 1
        instructions.append({**item, "stage": stage, "value": " ".join(item["value"].split())})
    return instructions


def _pin(package: str) -> str:
    """The requirement pyproject.toml gives ``package`` (``name[extra]==version``)."""
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(rf"{re.escape(package)}\b", d)]
    assert "==" in pin, f"{package} is not pinned in pyproject.toml"
    return pin


def _dockerfile_uid() -> int:
    final = max(i["stage"] for i in _dockerfile())
    runs = " ".join(i["value"] for i in _dockerfile() if i["stage"] == final and i["instruction"] == "RUN")
    return int(re.search(r"useradd\b.*--uid (\d+)", runs).group(1))


def test_dockerfile_stages_and_runtime():
    instructions = _dockerfile()
    assert (ROOT / "Dockerfile").read_text(encoding="utf-8").startswith("# syntax=docker/dockerfile:1\n")
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    assert len(froms) >= 2
    final = len(froms) - 1

    def last(name: str) -> str:
        values = [i["value"] for i in instructions if i["stage"] == final and i["instruction"] == name]
        assert values, f"the final stage has no {name}"
        return values[-1]

    runs = " ".join(i["value"] for i in instructions if i["stage"] == final and i["instruction"] == "RUN")
    user = last("USER").split(":")[0]
    assert user not in ("root", "0"), "the image runs as root"
    # The user is the one created with the fixed uid (Kubernetes' runAsUser), by name or by number.
    uid = _dockerfile_uid()
    assert uid != 0
    assert user == str(uid) or re.search(rf"useradd\b[^&;]*--uid {uid}\b[^&;]* {re.escape(user)}\b", runs)
    assert json.loads(last("ENTRYPOINT")) == ["genai"]
    assert json.loads(last("CMD")) == ["serve"]
    assert _is_cli_command(json.loads(last("CMD")))
    assert last("EXPOSE") == "8000"
    assert last("WORKDIR") == "/app"
    healthcheck = last("HEALTHCHECK")
    check = json.loads(healthcheck.split(" CMD ", 1)[1])  # exec form: no shell in the way
    assert check[0] == "python" and "/healthz" in check[-1] and "curl" not in healthcheck
    envs = " ".join(i["value"] for i in instructions if i["stage"] == final and i["instruction"] == "ENV")
    assert "GENAI_HOST=0.0.0.0" in envs.split() and "GENAI_DATA_DIR=/var/lib/genai" in envs.split()
    assert json.loads(last("VOLUME")) == ["/var/lib/genai"]
    # The data directory belongs to the image's user (a new named volume takes the ownership).
    assert re.search(rf"chown {user}(:\w+)? /var/lib/genai", runs)
    # pip's cache survives between builds (BuildKit cache mounts).
    assert any("--mount=type=cache,target=/root/.cache/pip" in i["value"] for i in instructions)


def test_dockerfile_builds_llama_cpp_before_the_source():
    instructions = _dockerfile()
    builder = [i for i in instructions if i["stage"] == 0]
    llama = _pin("llama-cpp-python")
    (index,) = [n for n, i in enumerate(builder) if i["instruction"] == "RUN" and llama in i["value"]]
    copies = [n for n, i in enumerate(builder) if i["instruction"] in ("COPY", "ADD")]
    whole_context = [n for n in copies if re.search(r"(^|\s)\.\s+\S+$", builder[n]["value"])]
    assert whole_context, "the builder never copies the project's source"
    assert index < min(whole_context), "llama-cpp-python is built after the source is copied: every change rebuilds it"
    for n in copies:
        if n < index:
            assert builder[n]["value"].split()[0] == "pyproject.toml", builder[n]["value"]
    # Built with the Makefile's portable flags.
    makefile = re.search(r"^LLAMA_CMAKE_ARGS \?= (.+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    (argument,) = [i["value"] for i in builder if i["instruction"] == "ARG" and i["value"].startswith("LLAMA_")]
    assert shlex.split(argument.split("=", 1)[1]) == [makefile.group(1).strip()]
    assert 'CMAKE_ARGS="${LLAMA_CMAKE_ARGS}"' in builder[index]["value"]
    # torch: the pyproject pin, from PyTorch's CPU index.
    torch = _pin("torch")
    (run,) = [i["value"] for i in builder if i["instruction"] == "RUN" and torch in i["value"]]
    assert re.search(r"--(extra-)?index-url https://download\.pytorch\.org/whl/cpu\b", run)
    # The runtime stage installs the builder's wheels only.
    runtime = [i["value"] for i in instructions if i["stage"] > 0 and i["instruction"] == "RUN"]
    assert any("--no-index" in value and "/opt/venv" in value for value in runtime)


def test_dockerignore_keeps_state_and_secrets_out():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".cache", "data", ".git", ".env"} <= patterns
    assert {"__pycache__", "**/__pycache__"} & patterns
    assert not {"README.md", "pyproject.toml", "server", "storage"} & patterns  # the wheel needs them
