"""``queue-contrast crash-demo`` with the article's other answers: each comparison row runs to the
end with the same columns, and says what its engine kept; a row that cannot run says why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from apps.demo import chart, terminal
from apps.demo.state import DemoState, Options, Run
from apps.engines.rabbit_node import server_path
from tests.support.helpers import CLI, IN_CI, child_env

ENGINE_ROWS = ("celery", "celery-acks-late", "celery-acks-late-amqp", "rabbitmq")


def add_up(run: dict[str, Any], jobs: int) -> None:
    """The snapshot at the kill accounts for every job; the end for every job done, failed,
    held (a Redis broker's unacked, waiting for its visibility timeout) or lost."""
    at_kill = run["done_before_kill"] + run["failed_before_kill"]
    at_kill += run["queued_at_kill"] + run["in_flight_at_kill"]
    assert at_kill == run["submitted"] == jobs, run
    assert run["done_before_kill"] + run["done_after_restart"] == run["completed"], run
    assert run["lost"] == run["submitted"] - run["completed"] - run["failed"] - run["held"], run
    assert run["fetched_by_upstream"] >= run["completed"], run
    assert run["effects"] == run["fetched_by_upstream"], run  # Idempotency-Key: one effect each


@pytest.mark.slow
def test_the_engine_rows_say_what_celery_and_rabbitmq_kept(tmp_path: Path) -> None:
    if server_path() is None and not IN_CI:
        pytest.skip("rabbitmq-server not installed (apt-get install rabbitmq-server); CI runs it")
    svg = tmp_path / "demo.svg"
    args = [a for key in ENGINE_ROWS for a in ("--backend", key)]
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
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    runs = {r["backend"]: r for r in result["runs"]}
    assert list(runs) == list(ENGINE_ROWS)
    assert "private rabbitmq-server node" in result["rabbit"]
    for run in runs.values():
        assert run["error"] is None and run["skipped"] is None, run
        assert run["in_flight_at_kill"] > 0 and run["queued_at_kill"] > 0, run
        add_up(run, 40)
    early, late = runs["celery"], runs["celery-acks-late"]
    # early ack: what it was running is lost; what it had reserved waits for the timeout
    # (a job just started may not be acked yet: then it is held, not lost; test_engines_celery
    # kills with every slot busy on a long job and shows the lost ones exactly)
    assert early["held"] > 0 and early["completed"] < 40 and early["recovery_s"] is None
    assert early["visibility_timeout_s"] == 3600
    # acks_late on Redis: nothing lost, but the dead worker's jobs wait for the timeout
    assert late["lost"] == 0 and late["held"] >= late["in_flight_at_kill"]
    assert late["recovery_s"] is None
    for name in ("celery-acks-late-amqp", "rabbitmq"):  # redelivered on connection loss
        run = runs[name]
        assert run["lost"] == 0 and run["held"] == 0 and run["completed"] == 40, run
        # every job in flight at the kill was redelivered and ran to its end (recovery_s); how
        # many were fetched twice depends on whether their request had left before the kill (a
        # kill at a job's start: once), so duplicates are not counted here; add_up checks that
        # each re-run was a replay (one effect per job, Idempotency-Key)
        assert run["recovery_s"] is not None
    picture = svg.read_text()
    assert picture.count("<polyline") == 4 and "held" in picture


def test_a_skipped_row_reads_skipped_with_its_reason_never_zeros(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A comparison row with no RabbitMQ to run on shows ``skipped`` and why, in the table and
    the picture, with no counts."""
    state = DemoState(Options(svg=None, scenarios=("rabbitmq",)))
    run = Run("rabbitmq", "RabbitMQ quorum queue", phase="skipped")
    run.skipped = "skipped: no rabbitmq-server installed (Debian: apt-get install rabbitmq-server)"
    state.runs = {"rabbitmq": run}
    terminal.print_table(state)
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.lstrip().startswith("rabbitmq ")]
    cells = [c.strip() for c in row.split("│")]
    assert cells[terminal.HEADERS.index("lost")] == "skip"
    assert set(cells[1:]) - {"skip", "0"} == {"—"}, cells
    assert "rabbitmq: skipped: no rabbitmq-server installed" in " ".join(out.split())
    picture = chart.render([run.to_dict()], "t")
    assert "skipped: no rabbitmq" in picture and "lost" not in picture
