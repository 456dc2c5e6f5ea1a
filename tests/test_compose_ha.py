"""docker-compose.yml's ``ha`` profile: a Redis primary, two replicas, three Sentinels, and
``api-ha``/``worker-ha`` on the Sentinel URL with ``ACK_REPLICAS=1``; checked without a Docker
engine, as ``tests/test_compose.py`` checks the rest of the file.

The static tests read the profile (with a YAML parser, as Compose does; and, where
``docker-compose`` is installed, with the real Compose parser) and check what it promises. The
end-to-end test runs each of the profile's services as a local process: the data nodes' own
``redis-server`` command lines and the Sentinels' own shell command (it writes their starting
config), each on a free port in a temp dir, with the service host names rewritten to 127.0.0.1;
then the profile's health checks, then ``api-ha`` and ``worker-ha`` from what the Dockerfile
builds. Jobs submitted through ``api-ha`` run and are counted at the upstream; then the primary is
SIGKILLed and the profile's own Sentinel settings elect a replica: jobs submitted after that run
too, and the jobs accepted before it keep their records. No process is restarted by hand.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.harness.processes import Proc
from apps.harness.redis_launcher import free_port
from pipeline.redis_url import parse_sentinel
from tests.support.helpers import IN_CI, Processes, get_json, wait_until
from tests.support.image_recipe import Image
from tests.test_compose import ROOT, LocalCompose, image, load_compose, service_env

__all__ = ["image"]  # the image fixture (built once per module), shared with test_compose

HA = (
    "redis-primary",
    "redis-replica-1",
    "redis-replica-2",
    "sentinel-1",
    "sentinel-2",
    "sentinel-3",
)
DATA_NODES = HA[:3]
SENTINELS = HA[3:]
HA_APPS = ("api-ha", "worker-ha")


def ha_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_compose()["services"]
    return {name: spec for name, spec in services.items() if "ha" in spec.get("profiles", [])}


# -- the profile, read -----------------------------------------------------------------------


def test_profile_ha_has_a_primary_two_replicas_and_three_sentinels() -> None:
    """Only the ha services are in the profile (plain `docker compose up` is unchanged); every
    data node keeps an AOF fsynced on every write on its own volume and is not published; the
    replicas follow the primary; three Sentinels monitor it with a quorum of 2."""
    compose = load_compose()
    services = ha_services()
    assert set(services) == {*HA, *HA_APPS}
    for name in ("redis", "api", "worker", "upstream"):
        assert "profiles" not in compose["services"][name]
    volumes = set()
    for name in DATA_NODES:
        spec = services[name]
        args = " ".join(spec["command"])
        assert spec["image"].startswith("redis:7") and "ports" not in spec
        assert "--appendonly yes" in args and "--appendfsync always" in args
        volume, target = spec["volumes"][0].split(":")[:2]
        assert volume in compose["volumes"] and target == "/data"
        volumes.add(volume)
        assert f"--replica-announce-ip {name}" in args
        replicaof = "--replicaof redis-primary 6379" in args
        assert replicaof == (name != "redis-primary"), name
    assert len(volumes) == 3
    for name in SENTINELS:
        spec = services[name]
        script = spec["command"][2]
        assert spec["command"][:2] == ["sh", "-c"] and "ports" not in spec
        assert "sentinel monitor qc redis-primary 6379 2" in script
        assert "exec redis-server /data/sentinel.conf --sentinel" in script
        assert spec["depends_on"]["redis-primary"]["condition"] == "service_healthy"


def test_api_ha_and_worker_ha_use_every_sentinel_with_ack_replicas_1() -> None:
    """api-ha and worker-ha: the durable backend on a Sentinel URL naming all three Sentinels
    and the monitored service, ACK_REPLICAS=1 whatever QUEUE_BACKEND the shell sets, started
    once the replicas are linked and the Sentinels know the primary; api-ha published on
    loopback beside api."""
    services = ha_services()
    for name in HA_APPS:
        env = service_env(services[name], {"QUEUE_BACKEND": "inmemory"})
        assert env["QUEUE_BACKEND"] == "durable"
        assert env["ACK_REPLICAS"] == "1"
        url = parse_sentinel(env["REDIS_URL"])
        assert url.sentinels == tuple((s, 26379) for s in SENTINELS)
        assert url.service == "qc"
        deps = services[name]["depends_on"]
        assert set(deps) == {*HA[1:]}
        assert all(d["condition"] == "service_healthy" for d in deps.values())
    assert services["api-ha"]["ports"] == ["127.0.0.1:8001:8000"]
    assert services["worker-ha"]["command"] == ["queue-contrast", "worker"]


def test_the_compose_parser_accepts_the_profile() -> None:
    """docker-compose itself (the parser CI uses) reads the file with the profile on: every ha
    service resolves, the Sentinel URL survives interpolation, no error."""
    compose = shutil.which("docker-compose")
    if compose is None:
        if IN_CI:
            pytest.fail("CI=true but docker-compose is not installed (.ci/run installs it)")
        pytest.skip("needs docker-compose (apt-get install --no-install-recommends docker-compose)")
    argv = [compose, "-f", str(ROOT / "docker-compose.yml"), "--profile", "ha", "config"]
    done = subprocess.run(
        [*argv, "--services"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert {*HA, *HA_APPS} <= set(done.stdout.split())
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (
        "REDIS_URL: redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/qc/0"
        in (done.stdout)
    )


# -- the profile, run ------------------------------------------------------------------------


class LocalHa(LocalCompose):
    """The ha services as local processes: each data node and Sentinel on a free port in its own
    temp dir, bound to 127.0.0.1; host names and ports rewritten as LocalCompose does."""

    def local(self, text: str) -> str:
        """Compose's ``HOST PORT`` and ``HOST:PORT`` of the ha services → the local ones; their
        bare host names → 127.0.0.1."""
        for (name, port), local in self.ports.items():
            text = re.sub(rf"\b{name}([ :]){port}\b", rf"127.0.0.1\g<1>{local}", text)
        return re.sub(rf"(?<![\w.-])({'|'.join(HA)})(?![\w.-])", "127.0.0.1", text)

    def start_data_node(self, name: str) -> Proc:
        self.check_dependencies(name)
        spec = self.services[name]
        argv = [str(a) for a in spec["command"]]
        assert argv[0] == "redis-server"
        port = int(argv[argv.index("--port") + 1])
        local = free_port()
        argv[argv.index("--port") + 1] = str(local)
        argv = shlex.split(self.local(shlex.join(argv)))
        folder = self.tmp / name
        folder.mkdir()
        argv[0] = self._redis("redis-server")
        proc = self.spawn_redis([*argv, "--bind", "127.0.0.1", "--dir", str(folder)])
        self.ports[(name, port)] = local
        self._healthcheck(name, port, local)
        return proc

    def start_sentinel(self, name: str) -> Proc:
        self.check_dependencies(name)
        spec = self.services[name]
        script = spec["command"][2]
        port = int(re.search(r"'port (\d+)'", script).group(1))  # type: ignore[union-attr]
        local = free_port()
        folder = self.tmp / name
        folder.mkdir()
        script = self.local(script.replace("$$", "$"))  # Compose's escape for a literal $
        script = script.replace(f"'port {port}'", f"'port {local}'").replace("/data/", f"{folder}/")
        script = script.replace("--sentinel", "--sentinel --bind 127.0.0.1")
        script = script.replace("exec redis-server", f"exec {self._redis('redis-server')}")
        env = {
            "PATH": "/usr/bin:/bin",
            **{k: self.local(v) for k, v in service_env(spec, self.host_env).items()},
        }
        proc = self.spawn_redis(["sh", "-c", script], env)
        self.ports[(name, port)] = local
        self._healthcheck(name, port, local)
        return proc

    def start_app(self, name: str) -> tuple[Proc, str | None]:
        """api-ha (returns its URL) or worker-ha, from the image, on the local Sentinels."""
        self.check_dependencies(name)
        env = self.env(name)
        if name.startswith("api"):
            assert env.pop("HOST") == "0.0.0.0"
            env.pop("PORT")
            proc = self.spawn(name, r"serve ready: (http://\S+)", {**env, "PORT": "0"})
            url = re.search(r"serve ready: (http://\S+)", proc.output)
            assert url
            self._dockerfile_healthcheck(url.group(1))
            return proc, url.group(1)
        return self.spawn(name, r"worker ready", env), None

    def spawn_redis(self, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        return self.procs.spawn(argv, r"Ready to accept connections|Sentinel ID is", env or {})

    def _redis(self, program: str) -> str:
        found = shutil.which(program)
        if found is None:
            if IN_CI:
                pytest.fail(f"CI=true but {program} is not installed")
            pytest.skip(f"needs {program}, which stands in for the redis image")
        return found

    def _healthcheck(self, name: str, port: int, local: int) -> None:
        """The service's own health check, run against the local process."""
        test = [str(t) for t in self.services[name]["healthcheck"]["test"]]
        assert test[0] in ("CMD", "CMD-SHELL"), test
        command = test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])
        if f"-p {port}" in command:
            command = command.replace(f"-p {port}", f"-p {local}")
        else:
            command = command.replace("redis-cli", f"redis-cli -p {local}", 1)
        self._redis("redis-cli")
        wait_until(
            lambda: (
                subprocess.run(["sh", "-c", command], capture_output=True, timeout=10).returncode
                == 0
            ),
            60,
            f"the {name} healthcheck",
        )
        self.healthy.add(name)


@pytest.fixture
def local_ha(tmp_path: Path, image: Image) -> Iterator[LocalHa]:
    procs = Processes()
    try:
        yield LocalHa({}, tmp_path, procs, image)
    finally:
        procs.stop_all()


def _submit(client: httpx.Client, c: LocalHa, ids: range, prefix: str) -> list[str]:
    """Submit each id (resubmitting the same id after a 503, as the answer asks), bounded."""
    accepted = []
    for i in ids:
        body = {"url": c.rewrite(f"http://upstream:8081/page/{i}"), "id": f"{prefix}-{i}"}

        def answered(body: dict[str, str] = body) -> bool:
            return client.post("/jobs", json=body).status_code in (200, 202)

        wait_until(answered, 60, f"{body['id']} accepted", every=0.5)
        accepted.append(body["id"])
    return accepted


def _all_done(client: httpx.Client, ids: list[str]) -> bool:
    return all(client.get(f"/jobs/{i}").json().get("status") == "done" for i in ids)


@pytest.mark.slow
def test_profile_ha_runs_jobs_and_rides_out_the_primary_killed(local_ha: LocalHa) -> None:
    """The profile as local processes: jobs through api-ha run on worker-ha (counted at the
    upstream); the primary SIGKILLed, the Sentinels with the profile's own settings promote a
    replica, and the jobs accepted before and after all end done; api-ha and worker-ha never
    exit."""
    c = local_ha
    primary = c.start_data_node("redis-primary")
    for name in DATA_NODES[1:]:
        c.start_data_node(name)
    for name in SENTINELS:
        c.start_sentinel(name)
    upstream = c.start_upstream()
    api_proc, api = c.start_app("api-ha")
    assert api is not None
    worker, _ = c.start_app("worker-ha")
    with httpx.Client(base_url=api, timeout=15, trust_env=False) as client:
        before = _submit(client, c, range(12), "ha")
        wait_until(lambda: _all_done(client, before), 60, "the first 12 jobs done")
        primary.kill()  # SIGKILL, reaped
        after = _submit(client, c, range(12, 24), "ha")
        wait_until(lambda: _all_done(client, before + after), 120, "all 24 jobs done")
    assert get_json(upstream + "/stats")["unique_jobs"] == 24
    seen = get_json(upstream + "/jobs")
    assert set(before + after) <= set(seen)
    assert api_proc.alive and worker.alive
