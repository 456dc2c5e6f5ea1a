"""`queue-contrast crash-demo` runs end to end and tells the truth about each backend."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from apps.harness.redis_launcher import RedisProcess
from tests.support.helpers import CLI, child_env, start_private_redis

pytestmark = pytest.mark.slow  # real processes (or a browser): seconds each


def run_demo(tmp_path: Path, *args: str) -> dict[str, Any]:
    svg = tmp_path / "demo.svg"
    done = subprocess.run(
        [
            *CLI,
            "crash-demo",
            "--json",
            "--jobs",
            "40",
            "--latency-ms",
            "150",
            "--svg",
            str(svg),
            *args,
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    result["svg"] = svg.read_text()
    result["progress"] = done.stderr
    return result


def by_backend(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["backend"]: r for r in result["runs"]}


def test_demo_shows_inmemory_loses_and_durable_keeps(tmp_path: Path) -> None:
    """In one run: inmemory loses every unfinished job, durable completes all, stock arq is slower."""
    result = run_demo(tmp_path)
    runs = by_backend(result)
    mem, dur, stock = runs["inmemory"], runs["durable"], runs["stock-arq"]
    for run in (mem, dur, stock):
        assert run["error"] is None
        assert run["queued_at_kill"] > 0, f"{run['backend']}: the kill found nothing queued"
    for run in (dur, stock):
        assert run["submitted"] == 40
    # in memory the kill takes the API down: a job not yet submitted then is never submitted
    assert mem["done_before_kill"] < mem["submitted"] <= 40
    assert mem["lost"] == mem["submitted"] - mem["done_before_kill"] > 0
    assert mem["unknown_after_restart"] == 40
    assert mem["duplicates"] == 0
    for run in (dur, stock):
        assert run["lost"] == 0 and run["completed"] == 40
    assert dur["recovery_s"] is not None and stock["recovery_s"] is not None
    assert stock["recovery_s"] > dur["recovery_s"]  # arq's TTL vs our heartbeat reaper
    assert "redis-server" in result["redis"]
    assert result["svg"].count("<polyline") == 3
    assert "killed" in result["progress"]  # progress was shown while it ran


def test_kill_lands_at_kill_after_and_the_timeline_starts_at_zero(tmp_path: Path) -> None:
    """The SIGKILL comes when --kill-after of the jobs are done (within 5 % of the jobs, while
    submitting if need be), and each curve starts at t=0 with 0 done, before the kill."""
    args = ["--jobs", "80", "--latency-ms", "200", "--kill-after", "0.3"]
    runs = run_demo(tmp_path, *args, "--backend", "inmemory", "--backend", "durable")["runs"]
    assert {r["backend"] for r in runs} == {"inmemory", "durable"}
    for run in runs:
        assert abs(run["done_before_kill"] - 0.3 * 80) <= 0.05 * 80, run
        timeline = run["timeline"]
        assert timeline[0] == [0.0, 0], timeline[:3]
        assert any(0 < t < run["kill_t"] for t, _ in timeline), "no point between start and kill"
        assert [t for t, _ in timeline] == sorted(t for t, _ in timeline)


ALLOW = ["--allow-nonempty-db", "--svg", ""]


def _nonempty_redis() -> Iterator[RedisProcess]:
    proc = start_private_redis()
    try:
        with redis.Redis.from_url(proc.url) as client:
            client.set("someone:else", "precious")
        yield proc
    finally:
        proc.stop()


nonempty_redis = pytest.fixture(_nonempty_redis)


def test_nonempty_database_is_refused_in_one_line(
    tmp_path: Path, nonempty_redis: RedisProcess
) -> None:
    """REDIS_URL pointing at a database with data: one line naming --allow-nonempty-db, exit 2,
    and nothing in it is touched."""
    done = subprocess.run(
        [*CLI, "crash-demo", "--backend", "durable", "--svg", str(tmp_path / "x.svg")],
        env=child_env(REDIS_URL=nonempty_redis.url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("queue-contrast crash-demo: ") and "--allow-nonempty-db" in line
    with redis.Redis.from_url(nonempty_redis.url) as client:
        assert client.dbsize() == 1 and client.get("someone:else") == b"precious"


def test_allow_nonempty_db_runs_there_and_deletes_nothing(
    tmp_path: Path, nonempty_redis: RedisProcess
) -> None:
    """With --allow-nonempty-db the demo runs on that database, counts only its own jobs (ids
    unique to the run), loses none, and leaves the other data where it was."""
    for _ in range(2):  # twice: the second run's ids must not collide with the first's records
        done = subprocess.run(
            [*CLI, "crash-demo", "--json", "--backend", "durable", "--jobs", "12", *ALLOW],
            env=child_env(REDIS_URL=nonempty_redis.url),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        [run] = json.loads(done.stdout)["runs"]
        assert run["error"] is None
        assert (run["submitted"], run["completed"], run["lost"]) == (12, 12, 0), run
    with redis.Redis.from_url(nonempty_redis.url) as client:
        assert client.get("someone:else") == b"precious"


def test_demo_runs_on_the_embedded_redis(tmp_path: Path) -> None:
    """With the embedded stand-in (a fresh machine without redis-server) durable still loses none."""
    result = run_demo(tmp_path, "--redis", "embedded", "--backend", "durable")
    [run] = result["runs"]
    assert run["error"] is None
    assert run["lost"] == 0 and run["completed"] == 40
    assert "embedded" in result["redis"]
