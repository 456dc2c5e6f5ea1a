"""Redis high availability, black-box: a real primary, two replicas and three ``redis-server
--sentinel`` processes; ``serve`` and two workers on the Sentinel URL; a steady stream of submits;
then the primary is SIGKILLed, or cut off from its replicas and the Sentinels (iptables rules
inside a network namespace of the test's own, clients still reaching it) for 8 s and healed, the
old primary demoted by Sentinel itself. Nothing is restarted by hand. The upstream witness is the
judge (the machinery: ``tests/support/failover_kit.py``).

Each run prints one ``FAILOVER`` line: accepted (answered 202, or 200 existing to a resubmission
after a 503), lost (accepted but never fetched), gone (accepted but ``GET /jobs/{id}`` 404 after
the failover), duplicates (extra fetches of accepted jobs), the seconds from the kill (or the
old primary's demotion) to the first 202 and to the first fetch after it, 503s answered, and any
process that exited. With
``ACK_REPLICAS=1`` the test asserts 0 lost and 0 gone; with 0 it reports what happened.

One partition runs the API, the workers and the Redis nodes as separate test hosts: network
namespaces joined by veth pairs to a bridge, each process with its host's hostname
(``tests/support/netns_hosts.py``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.harness.processes import Processes
from apps.harness.sentinel_launcher import SentinelGroup, start_sentinel_group
from tests.support.failover_kit import failover_run
from tests.support.helpers import CLI, IN_CI, child_env, need_redis_server, run_as_group
from tests.support.netns_hosts import Hosts, missing_tools

pytestmark = pytest.mark.slow  # nine processes and a failover: tens of seconds


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """A primary, two replicas, three Sentinels (down-after 1 s, failover-timeout 3 s)."""
    need_redis_server()
    g = start_sentinel_group()
    try:
        yield g
    finally:
        g.stop()


async def test_primary_killed_with_ack_replicas_1_loses_nothing(
    group: SentinelGroup, processes: Processes
) -> None:
    """ACK_REPLICAS=1: the primary SIGKILLed under load; every accepted job runs and keeps its
    record, and no process exits or is restarted."""
    figures = await failover_run(group, processes, 1, "kill1")
    assert figures["accepted"] > 0
    assert figures["lost"] == 0
    assert figures["gone"] == 0
    assert figures["not_done"] == 0
    assert figures["exited"] == []
    assert figures["first_202_after_s"] is not None


async def test_primary_killed_with_ack_replicas_0_reports_its_loss(
    group: SentinelGroup, processes: Processes
) -> None:
    """ACK_REPLICAS=0: the same kill; the loss is measured and printed, not asserted (Redis
    replication is asynchronous); the processes still ride it out without a restart."""
    figures = await failover_run(group, processes, 0, "kill0")
    assert figures["accepted"] > 0
    assert figures["exited"] == []


async def test_replicas_dying_with_ack_replicas_1_lose_nothing(
    group: SentinelGroup, processes: Processes
) -> None:
    """ACK_REPLICAS=1: one replica SIGKILLed, then the other (submits then answer 503, workers
    hold their ends), then one started again: every accepted job runs and keeps its record, and
    no process exits."""
    figures = await failover_run(group, processes, 1, "repl1", "replicas")
    assert figures["accepted"] > 0
    assert figures["lost"] == 0
    assert figures["gone"] == 0
    assert figures["not_done"] == 0
    assert figures["answered_503"] > 0  # while no replica could confirm
    assert figures["exited"] == []


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_service_no_sentinel_knows_is_one_line_naming_it(
    group: SentinelGroup, command: str
) -> None:
    """Sentinels that answer but do not monitor the URL's service: exit 2, one line naming it."""
    url = group.url.replace(f"/{group.service}/0", "/nosuch/0")
    env = child_env(QUEUE_BACKEND="durable", REDIS_URL=url)
    done = subprocess.run(
        [*CLI, command, *(["--port", "0"] if command == "serve" else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "REDIS_URL" in lines[0] and "'nosuch'" in lines[0]


ROOT = Path(__file__).resolve().parent.parent


def partition_run(ack_replicas: int) -> dict[str, object]:
    """The partition scenario in a fresh network namespace (``unshare --net``, loopback up, its
    own iptables rules); its FAILOVER line parsed."""
    if not (shutil.which("unshare") and shutil.which("ip") and shutil.which("iptables")):
        why = "needs unshare, ip and iptables (apt-get install -y iptables), as root"
        if IN_CI:
            pytest.fail(f"CI=true but this machine {why}")
        pytest.skip(why)
    # the kit runs from the checkout (tests/ is not installed), appended after site-packages so
    # the code under test is the installed one, as in every other child
    code = (
        f"import runpy, sys; sys.path.append({str(ROOT)!r}); "
        "runpy.run_module('tests.support.failover_kit', run_name='__main__', alter_sys=True)"
    )
    script = (
        f"ip link set lo up && exec {shlex.quote(sys.executable)} -P -c {shlex.quote(code)} "
        f"partition {ack_replicas}"
    )
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("FAILOVER ")]
    assert done.returncode == 0 and lines, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    print(lines[-1])
    figures: dict[str, object] = json.loads(lines[-1].removeprefix("FAILOVER "))
    return figures


def test_primary_partitioned_with_ack_replicas_1_loses_nothing() -> None:
    """ACK_REPLICAS=1: the primary cut off from replicas and Sentinels for 8 s while clients
    still reach it, then healed and demoted by Sentinel: every accepted job runs and keeps its
    record, and no process exits or is restarted."""
    need_redis_server()
    figures = partition_run(1)
    assert figures["accepted"]
    assert figures["lost"] == 0
    assert figures["gone"] == 0
    assert figures["not_done"] == 0
    assert figures["exited"] == []


def test_primary_partitioned_with_ack_replicas_0_reports_its_loss() -> None:
    """ACK_REPLICAS=0: the same partition; the jobs the isolated primary accepted and lost are
    measured and printed, not asserted; the processes ride it out without a restart."""
    need_redis_server()
    figures = partition_run(0)
    assert figures["accepted"]
    assert figures["exited"] == []


HOST_NAMES = ["client", "redis-primary", "redis-others", "api", "worker-a", "worker-b"]


def test_primary_partitioned_across_hosts_with_ack_replicas_1_loses_nothing() -> None:
    """The API and the workers as separate test hosts: six network namespaces on one bridge
    (veth pairs, a private /24), each process with its host's hostname; the load and the witness
    on ``client``, serve on ``api``, a worker on each of ``worker-a`` and ``worker-b``, the
    primary on ``redis-primary``, the replicas and Sentinels on ``redis-others``. The primary's
    host drops every packet from and to ``redis-others`` for 8 s (the api and worker hosts
    still reach it), then the rules go and Sentinel demotes it. ACK_REPLICAS=1: every accepted
    job runs and keeps its record, no process exits, and the workers ran on both hosts."""
    need_redis_server()
    why = missing_tools()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true but this machine {why}")
        pytest.skip(why)
    hosts = Hosts.plan(f"qc{os.getpid()}", HOST_NAMES)
    try:
        hosts.create()
        code = (
            f"import runpy, sys; sys.path.append({str(ROOT)!r}); "
            "runpy.run_module('tests.support.failover_kit', run_name='__main__', alter_sys=True)"
        )
        argv = [sys.executable, "-P", "-c", code, "hosts", "1", hosts.to_json()]
        done = run_as_group(hosts.on("client", argv), 300, cwd=ROOT, env=child_env())
    finally:
        hosts.delete()
    lines = [line for line in done.stdout.splitlines() if line.startswith("HOSTS ")]
    assert done.returncode == 0 and lines, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    print(lines[-1])
    figures = json.loads(lines[-1].removeprefix("HOSTS "))
    assert figures["worker_hosts"] == ["worker-a", "worker-b"]
    assert figures["accepted"]
    assert figures["lost"] == 0
    assert figures["gone"] == 0
    assert figures["not_done"] == 0
    assert figures["exited"] == []
