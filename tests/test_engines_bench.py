"""Benchmark section 13 (Celery and RabbitMQ) runs end to end at tiny sizes. No timing is
asserted: every engine measured every figure, and the ones that redeliver re-ran every orphan."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.common import bench_command
from tests.support.helpers import run_as_group

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_engines_section_measures_every_engine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"QUEUE_BACKEND", "REDIS_URL"}}
    args = ["--quick", "--quiet", "--section", "engines", "--out", str(tmp_path)]
    proc = run_as_group([*bench_command("benchmarks"), *args], 500, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "13. The article's other answers" in (tmp_path / "RESULTS.md").read_text()
    rows = {
        r["engine"]: r
        for r in json.loads((tmp_path / "results.json").read_text())["engines"]["rows"]
    }
    assert list(rows) == ["celery", "celery-acks-late", "celery-acks-late-amqp", "rabbitmq"]
    for row in rows.values():
        assert "skipped" not in row, row
        assert row["noop_rate"] > 0 and row["cpu_ms_per_job"] > 0, row
        assert row["idle_ms"]["p50"] > 0 and row["half_load_ms"]["p50"] > 0, row
    for name in ("celery", "celery-acks-late"):  # nothing comes back within the wait
        assert rows[name]["recovery"]["rerun"] == 0 and rows[name]["recovery"]["recovery_s"] is None
    for name in ("celery-acks-late-amqp", "rabbitmq"):
        rec = rows[name]["recovery"]
        assert rec["rerun"] == rec["jobs"] and rec["recovery_s"] is not None, rec
