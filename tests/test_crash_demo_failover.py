"""`queue-contrast crash-demo --redis sentinel`: the Redis primary is killed instead of a worker,
and the table's rows for ACK_REPLICAS=0 and 1 say what each kept (apps/demo/failover.py).

The demo starts its own Sentinel group, stalls the replicas (SIGSTOP) and SIGKILLs the primary in
the stall; every column is counted at the upstream witness and in the records after the failover.
With ACK_REPLICAS=1 the row must read 0 lost and 0 gone with every job done; the ACK_REPLICAS=0
row reports what it measured (a loss there is likely, not certain: it is printed, not asserted).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.support.helpers import CLI, child_env, need_redis_server

JOBS = 60


def crash_demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "crash-demo", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_primary_killed_rows_ack_0_and_1() -> None:
    """Both rows ran side by side on one failover; ACK_REPLICAS=1: every job accepted, done,
    none lost or gone; ACK_REPLICAS=0: its columns measured and consistent; no process exited
    in either row (nothing restarted by hand)."""
    need_redis_server()
    done = crash_demo("--redis", "sentinel", "--json", "--jobs", str(JOBS), "--latency-ms", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    rows = {r["ack_replicas"]: r for r in result["rows"]}
    print(json.dumps(result["rows"]))
    assert set(rows) == {0, 1}
    assert result["promoted_after_kill_s"] is not None
    for row in rows.values():
        assert row["error"] is None and row["exited"] == [], row
        assert row["accepted"] == JOBS, row  # each id sent again after a 503 until accepted
        assert 0 <= row["lost"] <= row["accepted"] and 0 <= row["gone"] <= row["accepted"], row
        assert row["done"] + row["gone"] <= row["accepted"], row
        assert row["first_202_after_kill_s"] is not None, row
    one = rows[1]
    assert one["lost"] == 0 and one["gone"] == 0, one
    assert one["done"] == JOBS, one


def test_sentinel_mode_refuses_what_it_cannot_show() -> None:
    """--redis sentinel is durable only and has no live page: a usage error (exit 2), at once."""
    done = crash_demo("--redis", "sentinel", "--backend", "inmemory", timeout=60)
    assert done.returncode == 2 and "--redis sentinel runs durable only" in done.stderr
    done = crash_demo("--redis", "sentinel", "--serve", "0", timeout=60)
    assert done.returncode == 2 and "--redis sentinel runs durable only" in done.stderr
