"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The static tests read both files (with a YAML parser, as Compose does) and check what the service
promises: Redis with AOF on every write, on a named volume, health-checked and not published; the
api published and bound to all interfaces inside its container; scalable workers; the backend taken
from ``QUEUE_BACKEND`` with ``durable`` as the default; every variable a real setting.

The end-to-end tests run every service's own command, with that service's own environment, as a
local process started from what the Dockerfile builds (``tests/support/image_recipe.py`` follows its
recipe into a fresh venv, copying only what the Dockerfile copies, and the services run under the
image's unprivileged uid where this machine allows it). A local ``redis-server`` with the compose
redis service's arguments (on a free port, in a temp dir) stands in for the redis image; the
service host names (redis, upstream, api) are rewritten to 127.0.0.1 and their ports to the ports
the local processes got. It runs each service's health check, drives the api end to end, and
(durable) SIGKILLs a worker mid-job and starts another: every job done, each counted at the
upstream. CI also validates the file with ``docker-compose config -q`` (see .ci/run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from apps.cli.telemetry import STANDARD_VARIABLES
from apps.harness.processes import Proc
from apps.harness.redis_launcher import free_port
from pipeline.settings import Settings
from tests.support.helpers import Processes, get_json, wait_until
from tests.support.image_recipe import Image, build

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("api", "worker", "upstream")
SERVICE_HOSTS = ("redis", "upstream", "api")
_VAR = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def load_compose() -> dict[str, Any]:
    with open(ROOT / "docker-compose.yml") as f:
        compose: dict[str, Any] = yaml.safe_load(f)
    return compose


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, $$."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, default = m.group("op"), m.group("default") or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    result = _VAR.sub(one, value)
    assert "${" not in result, f"unsupported substitution in {value!r}"
    return result


def service_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The environment Compose gives the service's container: interpolated values; a variable
    listed without a value is passed through from ``env`` when set there."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    result = {}
    for name, value in raw.items():
        if value is None:
            if name in env:
                result[name] = env[name]
        else:
            result[name] = interpolate(str(value), env)
    return result


# -- the files, read -------------------------------------------------------------------------


def test_redis_is_durable_health_checked_and_private() -> None:
    """redis: official image, AOF fsynced on every write, a named volume, a ping check, no ports."""
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    args = " ".join(redis["command"])
    assert "--appendonly yes" in args and "--appendfsync always" in args
    volume, target = redis["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"] and target == "/data"
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "ports" not in redis
    assert redis["restart"] == "unless-stopped"


def test_app_services_wiring() -> None:
    """api/worker wait for a healthy Redis; api listens on all interfaces in its container and is
    published on 8000; workers have no name or port, so they scale; restart policies fit each."""
    services = load_compose()["services"]
    api, worker, upstream = (services[name] for name in APP_SERVICES)
    for svc in (api, worker):
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service_env(svc, {})["REDIS_URL"] == "redis://redis:6379/0"
    assert api["command"] == ["queue-contrast", "serve"]
    assert service_env(api, {})["HOST"] == "0.0.0.0"
    assert any(str(p).endswith(":8000:8000") for p in api["ports"])
    assert worker["command"] == ["queue-contrast", "worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["restart"] == "on-failure"  # back after a crash; inmemory's exit 2 is explained
    assert upstream["command"][:2] == ["queue-contrast", "upstream"]
    assert api["restart"] == upstream["restart"] == "unless-stopped"
    assert len({services[name]["image"] for name in APP_SERVICES}) == 1


def test_backend_comes_from_the_environment_with_durable_default() -> None:
    """QUEUE_BACKEND defaults to durable and follows the shell/.env; ALLOWED_HOSTS defaults to the
    demo upstream on its port, and an empty value (allow any public host) is kept; API_TOKEN is
    passed through from .env only when set."""
    api = load_compose()["services"]["api"]
    assert service_env(api, {})["QUEUE_BACKEND"] == "durable"
    assert service_env(api, {"QUEUE_BACKEND": "inmemory"})["QUEUE_BACKEND"] == "inmemory"
    assert service_env(api, {})["ALLOWED_HOSTS"] == "upstream:8081"
    assert "API_TOKEN" not in service_env(api, {})
    assert service_env(api, {"API_TOKEN": "t0k"})["API_TOKEN"] == "t0k"
    assert service_env(api, {"ALLOWED_HOSTS": ""})["ALLOWED_HOSTS"] == ""
    assert service_env(api, {"WORKERS": "7"})["WORKERS"] == "7"
    assert "WORKERS" not in service_env(api, {})  # unset: the application's default applies


def test_every_variable_is_a_setting() -> None:
    """Each variable compose sets or passes, and each one .env.example names, is a real setting
    (or one of OpenTelemetry's standard variables, which the SDK reads)."""
    known = {name.upper() for name in Settings.model_fields} | set(STANDARD_VARIABLES)
    services = load_compose()["services"]
    for name in APP_SERVICES:
        raw = services[name].get("environment") or {}
        assert set(raw) <= known, f"{name}: {set(raw) - known}"
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#?([A-Z_]+)=", example, re.MULTILINE))
    assert named and named <= known, named - known
    Settings.from_env(dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.MULTILINE)))


def test_dockerfile_layers_user_and_healthcheck(tmp_path: Path) -> None:
    """Dockerfile: python:3.11-slim, deps from pyproject.toml alone before the code, a non-root
    user, a health check; its dependency step really yields pyproject's dependencies."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM python:3.11-slim"]
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies[0] == ["pyproject.toml"]
    sources = [src for srcs in copies for src in srcs]
    for src in sources:
        assert (ROOT / src).exists(), src
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not {s.rstrip("/") for s in sources} & ignored
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    command = re.search(r'RUN (python -c "[^"]+")', text)
    assert command, "the dependency step"
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    out = subprocess.run(
        command.group(1), shell=True, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert out.split() == tomllib.load(f)["project"]["dependencies"]


# -- the services, run -----------------------------------------------------------------------


class LocalCompose:
    """The compose services as local processes; host names and ports rewritten to local ones."""

    def __init__(self, host_env: dict[str, str], tmp: Path, procs: Processes, image: Image) -> None:
        self.image = image
        self.compose = load_compose()
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.host_env = host_env
        self.tmp = tmp
        self.procs = procs
        self.ports: dict[tuple[str, int], int] = {}  # (service, port in compose) -> local port
        self.healthy: set[str] = set()

    def rewrite(self, value: str) -> str:
        """Service host names and ports → 127.0.0.1 and the local processes' ports."""
        for (name, port), local in self.ports.items():
            value = value.replace(f"{name}:{port}", f"127.0.0.1:{local}")
        hosts = "|".join(SERVICE_HOSTS)
        return re.sub(rf"(?<![\w.-])({hosts})(?![\w.+-]|://)", "127.0.0.1", value)

    def env(self, name: str) -> dict[str, str]:
        """The image's environment (its ENV lines and PATH) with the service's own on top."""
        own = {
            k: self.rewrite(v) for k, v in service_env(self.services[name], self.host_env).items()
        }
        return {**self.image.env, **own}

    def argv(self, name: str) -> list[str]:
        command = [str(a) for a in self.services[name]["command"]]
        assert command[0] == "queue-contrast", command
        return [self.image.which(command[0]), *command[1:]]

    def spawn(
        self, name: str, ready: str, env: dict[str, str], argv: list[str] | None = None
    ) -> Proc:
        """Start a service from the image: its work dir, its user."""
        return self.procs.spawn(
            argv or self.argv(name),
            ready,
            env,
            cwd=str(self.image.workdir),
            user=self.image.uid,
        )

    def check_dependencies(self, name: str) -> None:
        for dep, spec in (self.services[name].get("depends_on") or {}).items():
            if spec.get("condition") == "service_healthy":
                assert dep in self.healthy, f"{name} needs {dep} healthy first"

    def start_redis(self) -> None:
        spec = self.services["redis"]
        assert spec["command"][0] == "redis-server"
        port = free_port()
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("needs redis-server, which stands in for the redis image")
        local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.tmp)]
        self.procs.spawn(
            [server, *spec["command"][1:], *local],
            r"Ready to accept connections",
            os.environ.copy(),
        )
        self.ports[("redis", 6379)] = port
        test = spec["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "redis-cli"
        check = [shutil.which("redis-cli") or "redis-cli", "-p", str(port), *test[2:]]
        wait_until(lambda: _succeeds(check, "PONG"), 30, "the redis healthcheck")
        self.healthy.add("redis")

    def start_upstream(self) -> str:
        self.check_dependencies("upstream")
        argv = self.argv("upstream")
        port = int(argv[argv.index("--port") + 1])
        argv[argv.index("--port") + 1] = "0"
        argv[argv.index("--host") + 1] = "127.0.0.1"
        proc = self.spawn("upstream", r"upstream ready: (http://\S+)", self.env("upstream"), argv)
        url = _ready_url(proc, "upstream")
        self.ports[("upstream", port)] = int(url.rsplit(":", 1)[1])
        test = [str(t) for t in self.services["upstream"]["healthcheck"]["test"]]
        assert test[:2] == ["CMD", "python"]
        check = [
            self.image.which("python"),
            *(self._local_self(a, "upstream", port) for a in test[2:]),
        ]
        env = self.env("upstream")
        wait_until(lambda: self.image.run(check, env) == 0, 30, "the upstream healthcheck")
        self.healthy.add("upstream")
        return url

    def start_api(self) -> str:
        self.check_dependencies("api")
        env = self.env("api")
        assert env.pop("HOST") == "0.0.0.0"  # inside its container; here, loopback only
        port = int(env.pop("PORT", "8000"))
        proc = self.spawn("api", r"serve ready: (http://\S+)", {**env, "PORT": "0"})
        url = _ready_url(proc, "serve")
        self.ports[("api", port)] = int(url.rsplit(":", 1)[1])
        self._dockerfile_healthcheck(url)
        self.healthy.add("api")
        return url

    def start_worker(self) -> Proc:
        self.check_dependencies("worker")
        return self.spawn("worker", r"worker ready", self.env("worker"))

    def _local_self(self, arg: str, name: str, port: int) -> str:
        return arg.replace(f"127.0.0.1:{port}", f"127.0.0.1:{self.ports[(name, port)]}")

    def _dockerfile_healthcheck(self, api: str) -> None:
        """The image's HEALTHCHECK command, run against the local api (it reads PORT)."""
        text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
        match = re.search(r"^HEALTHCHECK .*?CMD (.+)$", text, re.MULTILINE)
        assert match
        env = {**self.image.env, "PORT": api.rsplit(":", 1)[1]}
        check = ["/bin/sh", "-c", match.group(1)]  # the shell form, as Docker runs it
        wait_until(
            lambda: self.image.run(check, env) == 0, 30, "the image's healthcheck against the api"
        )


def _succeeds(argv: list[str], expect: str = "") -> bool:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and expect in done.stdout


def _ready_url(proc: Proc, name: str) -> str:
    match = re.search(rf"{name} ready: (http://\S+)", proc.output)
    assert match
    return match.group(1)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """What the Dockerfile builds, followed step by step into a temp folder (removed after)."""
    folder = Path(tempfile.mkdtemp(prefix="qc-image-"))
    try:
        built = build(ROOT, folder)
        if built.uid is None:
            print(f"NOTICE: the services run as this user, not the image's: {built.why_not_uid}")
        yield built
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def local_compose(
    tmp_path: Path, request: pytest.FixtureRequest, image: Image
) -> Iterator[LocalCompose]:
    """LocalCompose for the parametrized QUEUE_BACKEND, on the image; every process stopped by
    PID after."""
    procs = Processes()
    host_env = {"QUEUE_BACKEND": request.param} if request.param != "durable" else {}
    try:
        yield LocalCompose(host_env, tmp_path, procs, image)
    finally:
        procs.stop_all()


def _submit(api: str, upstream_in_compose: str, compose: LocalCompose, n: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        for i in range(n):
            url = compose.rewrite(f"{upstream_in_compose}/page/{i}?latency_ms=300")
            response = client.post("/jobs", json={"url": url, "id": f"compose-{i}"})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


def _all_done(api: str, ids: list[str]) -> bool:
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        return all(client.get(f"/jobs/{i}").json()["status"] == "done" for i in ids)


@pytest.mark.slow
@pytest.mark.parametrize("local_compose", ["durable"], indirect=True)
def test_compose_services_run_and_lose_nothing_when_a_worker_is_killed(
    local_compose: LocalCompose,
) -> None:
    """durable (the default): jobs through the api run on workers; a SIGKILLed worker's jobs are
    re-run by the next one; every job ends done, and the upstream saw every one."""
    c = local_compose
    c.start_redis()
    upstream = c.start_upstream()
    api = c.start_api()
    assert get_json(api + "/healthz") == {"status": "ok", "backend": "durable"}
    first = c.start_worker()
    ids = _submit(api, "http://upstream:8081", c, 24)
    wait_until(lambda: get_json(upstream + "/stats")["in_flight"] >= 1, 30, "jobs in flight")
    first.kill()  # SIGKILL, reaped
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    c.start_worker()  # as `docker compose up --scale worker=N` (or on-failure) would
    wait_until(lambda: _all_done(api, ids), 90, "all 24 jobs done after the kill")
    seen = get_json(upstream + "/jobs")
    assert set(ids) <= set(seen), "a job never reached the upstream"
    assert get_json(upstream + "/stats")["unique_jobs"] == 24
    stats = get_json(api + "/stats")
    assert stats["done"] == 24
    assert stats["recovered"] >= 1  # the killed worker's in-flight jobs were re-delivered


@pytest.mark.slow
@pytest.mark.parametrize("local_compose", ["inmemory"], indirect=True)
def test_compose_with_inmemory_runs_jobs_in_the_api(local_compose: LocalCompose) -> None:
    """QUEUE_BACKEND=inmemory: the api runs the jobs itself; a worker exits 2 saying why."""
    c = local_compose
    c.start_redis()
    upstream = c.start_upstream()
    api = c.start_api()
    assert get_json(api + "/healthz") == {"status": "ok", "backend": "inmemory"}
    worker = subprocess.run(
        c.argv("worker"),
        env=c.env("worker"),
        cwd=c.image.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 2
    assert "QUEUE_BACKEND=inmemory has no separate workers" in worker.stderr
    ids = _submit(api, "http://upstream:8081", c, 12)
    wait_until(lambda: _all_done(api, ids), 60, "all 12 jobs done")
    assert get_json(upstream + "/stats")["unique_jobs"] == 12
