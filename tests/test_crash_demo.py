"""`queue-contrast crash-demo` runs end to end and tells the truth about each backend."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from apps.demo import chart, terminal
from apps.demo.state import DemoState, Options, Run
from apps.harness.redis_launcher import RedisProcess
from tests.support.helpers import CLI, Processes, child_env, start_private_redis

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


def assert_columns_add_up(run: dict[str, Any], jobs: int) -> None:
    """Every column of a finished row, against the others: the snapshot at the kill accounts
    for every job submitted, and the end accounts for every job done, failed or lost."""
    name = run["backend"]
    at_kill = (
        run["done_before_kill"]
        + run["failed_before_kill"]
        + run["queued_at_kill"]
        + run["in_flight_at_kill"]
    )
    assert at_kill + run["submitted_after_kill"] == run["submitted"], (name, run)
    assert run["submitted"] + run["never_submitted"] == jobs, (name, run)
    assert run["done_before_kill"] + run["done_after_restart"] == run["completed"], (name, run)
    assert run["lost"] == run["submitted"] - run["completed"] - run["failed"], (name, run)
    assert run["failed"] >= run["failed_before_kill"] >= 0, (name, run)
    assert min(run["duplicates"], run["effects"], run["fetched_by_upstream"]) >= 0, (name, run)
    if name == "inmemory":  # the kill takes the API down: nothing is submitted after it
        assert run["submitted_after_kill"] == 0, run
    else:  # the API lives on: every job is submitted, and each done job was fetched
        assert run["never_submitted"] == 0, run
        assert run["fetched_by_upstream"] == run["completed"] + run["failed"], run


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
    assert mem["unknown_after_restart"] == mem["submitted"]
    assert mem["duplicates"] == 0
    for run in (dur, stock):
        assert run["lost"] == 0 and run["completed"] == 40
    assert dur["recovery_s"] is not None and stock["recovery_s"] is not None
    assert stock["recovery_s"] > dur["recovery_s"]  # arq's TTL vs our heartbeat reaper
    assert "redis-server" in result["redis"]
    assert result["svg"].count("<polyline") == 3
    assert "killed" in result["progress"]  # progress was shown while it ran
    for run in (mem, dur, stock):
        assert_columns_add_up(run, 40)


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


def test_whole_default_demo_runs_on_the_embedded_redis(tmp_path: Path) -> None:
    """With the embedded stand-in (a fresh machine without redis-server) every default row runs
    (stock arq's Worker included): durable and stock-arq lose none, and every row adds up."""
    result = run_demo(tmp_path, "--redis", "embedded")
    runs = by_backend(result)
    assert list(runs) == ["inmemory", "durable", "stock-arq"]
    for run in runs.values():
        assert run["error"] is None, run["error"]
        assert_columns_add_up(run, 40)
    for name in ("durable", "stock-arq"):
        assert runs[name]["lost"] == 0 and runs[name]["completed"] == 40, runs[name]
    assert runs["inmemory"]["lost"] > 0
    assert "embedded" in result["redis"]


EXIT_ON_CUE = """
    import os, sys, threading, time

    cue = os.environ.get("QC_TEST_WORKER_EXIT_CUE")
    if cue and "worker" in sys.orig_argv:  # only `queue-contrast worker` processes
        def _exit_on_cue():
            while not os.path.exists(cue):
                time.sleep(0.02)
            print("test: this worker exits now, on cue", flush=True)
            os._exit(3)

        threading.Thread(target=_exit_on_cue, daemon=True).start()
"""


def test_a_scenario_whose_worker_dies_ends_at_once_as_an_error_row(
    tmp_path: Path, processes: Processes
) -> None:
    """A worker that exits while the demo waits on it ends the scenario at once (the demo's own
    give-up time is a day), as an error row naming the worker, its exit code and its last line:
    in --json (no zero counts), in the picture, and with a non-zero exit code."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(EXIT_ON_CUE))
    cue, svg = tmp_path / "cue", tmp_path / "demo.svg"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = child_env(PYTHONPATH=path, QC_TEST_WORKER_EXIT_CUE=str(cue))
    args = ["--backend", "durable", "--jobs", "40", "--json", "--svg", str(svg)]
    demo = processes.spawn(
        [*CLI, "crash-demo", *args, "--give-up-after", "86400"],
        # the worker is up and jobs are on their way (a fast machine may submit all 40 between
        # two progress lines, so the first line may already say running)
        r"durable: (submitting|running)",
        env,
        timeout=60,
    )
    cue.touch()
    # the hang-stopper, within the test's own time limit: far below the demo's day
    assert demo.wait(timeout=50) == 1, demo.output
    [run] = json.loads(demo.output[demo.output.index("{\n") :])["runs"]
    assert run["phase"] == "error"
    assert run["error"].startswith("worker --engine ours (pid "), run["error"]
    assert "exited with code 3; its last line: test: this worker exits now, on cue" in run["error"]
    assert run["error_output"][-1] == "test: this worker exits now, on cue"
    for key in ("lost", "completed", "done_after_restart", "duplicates", "recovery_s"):
        assert run[key] is None, (key, run)
    picture = svg.read_text()
    assert "error: worker --engine ours" in picture and "lost" not in picture


def test_an_error_row_reads_error_in_the_table_and_the_picture(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The terminal table and the picture show a row that could not run as ``error`` with its
    reason (and the dead child's last lines), never as zeros with ``lost 0``."""
    state = DemoState(Options(svg=None, scenarios=("durable", "stock-arq")))
    ok = Run("durable", "durable", submitted=40, done_before_kill=10, failed_before_kill=0)
    ok.__dict__.update(queued_at_kill=25, in_flight_at_kill=5, submitted_after_kill=0)
    ok.__dict__.update(done_after_restart=30, completed=40, failed=0, lost=0, duplicates=5)
    ok.__dict__.update(effects=40, fetched_by_upstream=40, recovery_s=2.5)
    bad = Run("stock-arq", "stock arq", submitted=40, phase="error")
    bad.error = "worker --engine stock-arq (pid 7) exited with code 1; its last line: boom"
    bad.error_output = ["Traceback (most recent call last):", "boom"]
    state.runs = {"durable": ok, "stock-arq": bad}
    terminal.print_table(state)
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.lstrip().startswith("stock-arq ")]
    cells = [c.strip() for c in row.split("│")]
    assert cells[0] == "stock-arq" and cells[1] == "40" and cells[HEADERS.index("lost")] == "error"
    assert set(cells[2:]) - {"error"} == {"—"}, cells  # nothing it never measured reads 0
    assert f"stock-arq: error: {bad.error}" in " ".join(out.split())
    assert "    boom" in out
    picture = chart.render([ok.to_dict(), bad.to_dict()], "t")
    assert "done 40, lost 0" in picture
    assert "error: worker --engine stock" in picture and picture.count("lost") == 1


HEADERS = terminal.HEADERS
