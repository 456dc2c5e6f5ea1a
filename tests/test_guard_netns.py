"""The URL guard through the API, where a broken guard cannot reach anything.

This test re-runs ``tests/netns_guard_checks.py`` under ``unshare --net --mount``: a fresh network
namespace with only loopback up (``ip link set lo up``) and a private ``/etc/hosts`` that maps a few
test names to metadata, link-local, loopback and private addresses. There, every refused address
but loopback is unroutable: a job the guard wrongly let through fails with ``network: ...
unreachable`` instead of ``refused:``, so a broken guard fails the test instead of sending a packet
off this machine. (Loopback jobs are refused at submit or fail ``refused:`` on attempt 1: a fetch
that got through would show as ``done`` or a ``network:`` error instead.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import IN_CI

pytestmark = pytest.mark.slow  # real processes (or a browser): seconds each

ROOT = Path(__file__).resolve().parent.parent
CHECKS = "tests/netns_guard_checks.py"
HOSTS = """\
127.0.0.1 localhost
::1 localhost
169.254.169.254 meta.test
169.254.7.7 linklocal.test
127.0.0.1 mixed.test
169.254.1.1 mixed.test
fd00:ec2::254 v6meta.test
127.0.0.1 loopback.test
10.0.0.9 private.test
"""


def _unshare_works() -> str | None:
    """None when `unshare --net --mount` with `ip` works here; otherwise why not."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs unshare (util-linux) and ip (iproute2)"
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare --net --mount failed (needs root): {probe.stderr.strip()}"
    return None


@pytest.mark.slow
def test_refused_addresses_through_the_api_in_a_loopback_only_namespace(tmp_path: Path) -> None:
    """Every check in netns_guard_checks.py passes inside a loopback-only network namespace."""
    problem = _unshare_works()
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true but {problem}")
        pytest.skip(problem)
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    inner = (
        f"ip link set lo up && mount --bind {hosts} /etc/hosts && "
        f"exec {sys.executable} -P -m pytest -q -p no:cacheprovider {CHECKS}"
    )
    result = subprocess.run(
        ["unshare", "--net", "--mount", "--", "sh", "-c", inner],
        cwd=ROOT,
        env={**os.environ, "QC_IN_NETNS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), output
    assert not re.search(r"failed|skipped|error", summary), output
