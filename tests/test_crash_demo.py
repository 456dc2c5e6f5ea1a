"""`queue-contrast crash-demo` runs end to end and tells the truth about each backend."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CLI, child_env

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
        assert run["submitted"] == 40
        assert run["error"] is None
        assert run["queued_at_kill"] > 0, f"{run['backend']}: the kill found nothing queued"
    assert mem["lost"] == 40 - mem["done_before_kill"] > 0
    assert mem["unknown_after_restart"] == 40
    assert mem["duplicates"] == 0
    for run in (dur, stock):
        assert run["lost"] == 0 and run["completed"] == 40
    assert dur["recovery_s"] is not None and stock["recovery_s"] is not None
    assert stock["recovery_s"] > dur["recovery_s"]  # arq's TTL vs our heartbeat reaper
    assert "redis-server" in result["redis"]
    assert result["svg"].count("<polyline") == 3
    assert "killed" in result["progress"]  # progress was shown while it ran


def test_demo_runs_on_the_embedded_redis(tmp_path: Path) -> None:
    """With the embedded stand-in (a fresh machine without redis-server) durable still loses none."""
    result = run_demo(tmp_path, "--redis", "embedded", "--backend", "durable")
    [run] = result["runs"]
    assert run["error"] is None
    assert run["lost"] == 0 and run["completed"] == 40
    assert "embedded" in result["redis"]
