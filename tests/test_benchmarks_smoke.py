"""The benchmark runs end to end at tiny sizes, so it can't rot. No timing is asserted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.common import bench_command
from benchmarks.transports import VARIANTS
from tests.support.helpers import IN_CI, run_as_group

ROOT = Path(__file__).resolve().parent.parent

# The whole --quick run takes ~100 s on an idle 2-core machine and 160 s or more on a busy one:
# these limits only stop a hang (the run's own figures are checked, never its duration).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``python -m benchmarks --quick`` run, its results.json loaded."""
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k not in {"QUEUE_BACKEND", "REDIS_URL"}}
    proc = run_as_group(
        [*bench_command("benchmarks"), "--quick", "--quiet", "--out", str(out)],
        800,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets" in proc.stdout
    assert (out / "RESULTS.md").read_text().startswith("# Benchmark results")
    return json.loads((out / "results.json").read_text())


def test_machine_is_named(results: dict) -> None:
    """The results say what they were measured on."""
    m = results["machine"]
    assert m["cores"] >= 1 and m["python"] and m["redis"] and m["date"]


def test_overhead_section(results: dict) -> None:
    """Every system in section 1 ran all its no-op jobs and has a positive rate."""
    o = results["overhead"]
    assert set(o["systems"]) == {
        "raw",
        "inmemory",
        "raw_yield",
        "inmemory_yield",
        "arq",
        "saq",
        "durable",
    }
    assert o["validation_us_per_job"] > 0
    for name, s in o["systems"].items():
        assert s["completed"] >= o["jobs"], name
        assert s["rate"] > 0, name
    for name in ("arq", "saq", "durable"):
        assert o["systems"][name]["enqueue_rate"] > 0 and o["systems"][name]["drain_rate"] > 0


def test_io_section(results: dict) -> None:
    """Section 2 has both backends at every worker count, all jobs done, efficiency in (0, 1.5)."""
    io = results["io"]
    assert {(r["backend"], r["workers"]) for r in io["rows"]} == {
        (b, w) for b in ("inmemory", "durable") for w in (1, 10, 50)
    }
    for r in io["rows"]:
        assert r["done"] == r["jobs"] and r["failed"] == 0
        assert 0 < r["efficiency"] < 1.5
    cpu = io["cpu_per_request"]
    assert cpu["fetcher_ms"] > 0 and cpu["upstream_ms"] > 0 and cpu["single_request_ms"] > 0
    assert cpu["httpcore_over_fetcher"] > 0
    assert "asyncio" in io["transports"]
    for loop, compared in io["transports"].items():
        assert set(compared["cpu_us"]) == set(VARIANTS), loop
        assert all(us > 0 for us in compared["cpu_us"].values()), loop
    assert {x["loop"] for x in io["durable_by_loop"]} == set(io["transports"])
    assert all(x["done"] == x["jobs"] for x in io["durable_by_loop"])


def test_flood_section(results: dict) -> None:
    """Section 3 ran each variant (or says why not); the pipeline had no errors."""
    rows = results["flood"]["rows"]
    assert results["flood"]["record_bytes"] > 0
    assert {r["variant"] for r in rows} == {"gather_shared", "gather_per_request", "pipeline"}
    for r in rows:
        assert "skipped" in r or ("peak_rss_mb" in r and r["successes"] + r["errors"] <= r["n"])
    for r in (r for r in rows if r["variant"] == "pipeline"):
        assert r["errors"] == 0 and r["successes"] == r["n"]
        assert r["upstream_max_concurrency"] <= results["flood"]["workers"]


def test_durability_section(results: dict) -> None:
    """Section 4 measured all three persistence modes against persistence off."""
    rows = results["durability"]["rows"]
    assert [r["persistence"] for r in rows] == ["none", "everysec", "always"]
    assert all(r["completed"] == r["jobs"] and r["enqueue_rate"] > 0 for r in rows)
    assert rows[0]["rate_vs_none"] == 1


def test_recovery_section(results: dict) -> None:
    """Section 5: after the kill, both systems re-ran every orphaned job."""
    rows = results["recovery"]["rows"]
    assert len(rows) == 2
    for r in rows:
        assert r["rerun"] == r["jobs"] and r["recovery_s"] > 0


def test_every_target_is_checked(results: dict) -> None:
    """The checks list names each target with a measured value and a verdict."""
    assert len(results["checks"]) >= 8
    assert all({"target", "value", "met"} <= set(c) for c in results["checks"])


def test_latency_section(results: dict) -> None:
    """Section 7: every system measured idle and at half load, every probe seen upstream."""
    lat = results["latency"]
    assert set(lat["systems"]) == {"inmemory", "durable", "stock_arq", "saq"}
    for name, s in lat["systems"].items():
        assert "error" not in s, (name, s)
        for phase in ("idle", "half_load"):
            assert s[phase]["n"] == lat["probes"], (name, phase)
            assert 0 < s[phase]["p50_ms"] <= s[phase]["p90_ms"] <= s[phase]["p99_ms"], (name, phase)
            assert s[phase]["answer_p50_ms"] > 0, (name, phase)
        assert s["capacity_jobs_s"] > 0 and s["half_load"]["load_rate"] > 0, name


def test_jobcost_section(results: dict) -> None:
    """Section 8: CPU per job of serve (and the durable worker), and a record's cost per body size."""
    cost = results["jobcost"]
    rows = {r["backend"]: r for r in cost["cpu"]}
    assert set(rows) == {"durable", "inmemory"}
    assert all(r["jobs"] > 0 and r["serve_ms_per_job"] >= 0 for r in rows.values())
    assert rows["durable"]["worker_ms_per_job"] >= 0
    stores = {(m["store"], m["body_bytes"]) for m in cost["memory"]}
    assert stores == {(s, b) for s in ("redis", "in-process") for b in (0, 1024, 65536)}


def test_submit_section(results: dict) -> None:
    """Section 10: serve CPU per job for single POST /jobs and for batches, every job accepted,
    and the same app under httptools beside it (a row, or why it was skipped)."""
    s = results["submit"]
    assert "error" not in s, s
    for kind in ("single", "batch"):
        assert s[kind]["jobs"] > 0 and s[kind]["serve_ms_per_job"] > 0, kind
    assert s["batch"]["jobs"] % s["batch_size"] == 0
    assert set(s["servers"]) == {"ours", "httptools", "ours-bare", "httptools-bare"}
    checks = [c["target"] for c in results["checks"]]
    assert sum("batch submission" in c or "single POST /jobs" in c for c in checks) == 3


def test_outage_section(results: dict) -> None:
    """Return after a Redis outage: each fault ran on its own rig, every job ended done, and the
    figures are there (a time may be None: not reached; no timing is asserted)."""
    o = results["outage"]
    assert {r["kind"] for r in o["rows"]} == {"restart", "freeze"}
    for r in o["rows"]:
        assert r["done"] == r["jobs"] > 0 and r["lost"] == 0, r["statuses"]
        assert r["workers_alive"] and r["measured_outage_s"] >= r["outage_s"]
        assert r["steady_rate"] > 0 and r["fetches_in_window"] >= 0
        assert r["unique_fetched"] == r["jobs"]
        assert all(k in r for k in ("to_50_s", "to_90_s", "first_fetch_s", "serve_back_s"))
    assert sum(c["target"].startswith("outage ") for c in results["checks"]) == 2 * len(o["rows"])


def test_memory_section(results: dict) -> None:
    """Section 11: both backends sampled through every job; at every sample (all jobs ended) the
    bodies and records kept are within the run's budgets; the bound and its checks are listed
    (memory itself is not asserted here: tests/test_contract_budget.py proves the eviction)."""
    m = results["memory"]
    assert "error" not in m, m
    assert [c["backend"] for c in m["curves"]] == ["inmemory", "durable"]
    for curve in m["curves"]:
        samples = curve["samples"]
        assert [s["jobs"] for s in samples][-1] == m["jobs"]
        assert all(0 < s["kept_bytes"] <= m["budget_bytes"] for s in samples)
        assert all(0 < s["kept_records"] <= m["budget_records"] for s in samples)
        assert curve["filled_at_jobs"] is not None and curve["baseline"] > 0
    assert m["bound"] > m["budget_bytes"]
    mine = ("inmemory serve RSS", "durable Redis used_memory")
    assert sum(c["target"].startswith(mine) for c in results["checks"]) == 4


@pytest.fixture(scope="module")
def flow_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python -m benchmarks --quick --section flow`` on its own (so it adds nothing to the
    whole run's time limit above), its results.json loaded."""
    out = tmp_path_factory.mktemp("bench-flow")
    env = {k: v for k, v in os.environ.items() if k not in {"QUEUE_BACKEND", "REDIS_URL"}}
    args = ["--quick", "--quiet", "--section", "flow", "--out", str(out)]
    proc = run_as_group([*bench_command("benchmarks"), *args], 800, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "9a. Flow control" in proc.stdout
    assert "9c. Flow control: two hosts" in (out / "RESULTS.md").read_text()
    return json.loads((out / "results.json").read_text())


def test_flow_section(flow_results: dict) -> None:
    """Section 9 ran: (a) every variant on both backends completed its no-op jobs, (b) both
    backends started every job under the rate limit, with the send margin and without, (c) both
    two-host runs ended every job done, with the witness's numbers for both hosts; its checks are
    listed (timings are not asserted here: tests/test_flow_proof.py proves the limits)."""
    f = flow_results["flow"]
    assert "error" not in f, f
    for backend in ("durable", "inmemory"):
        variants = f["cost"][backend]
        assert set(variants) == {"none", "parallelism", "parallelism+rate"}
        assert all(v["completed"] == v["jobs"] and v["rate"] > 0 for v in variants.values())
        assert variants["none"]["vs_none"] == 1
        closeness = f["rate_limit"][backend]
        assert closeness["jobs"] == f["sizes"]["rate"] * (f["sizes"]["rate_seconds"] + 1)
        assert closeness["share"] > 0
        assert closeness["no_margin"]["jobs"] == closeness["jobs"]  # the margin's price, same run
        assert closeness["vs_no_margin"] > 0
    assert [row["backend"] for row in f["two_hosts"]] == ["durable", "inmemory"]
    for row in f["two_hosts"]:
        assert row["done"] == row["jobs"]
        assert row["a"]["jobs"] > 0 and row["b"]["jobs"] > 0
    checks = [c["target"] for c in flow_results["checks"]]
    assert any("with flow limits" in c for c in checks)
    assert sum("two hosts" in c for c in checks) == 6


def test_tracing_section(results: dict) -> None:
    """Section 12 ran every mode (hooks bypassed, off, sampled out, on) on the same jobs, each
    with a positive CPU figure and a ratio to the bypassed hooks; its target is listed."""
    t = results["tracing"]
    assert "error" not in t, t
    assert [row["mode"] for row in t["rows"]] == ["absent", "off", "sampled out", "on"]
    for row in t["rows"]:
        assert row["ms_per_job"] > 0 and len(row["rounds"]) == t["rounds"]
        assert row["vs_absent"] > 0 and row["jobs_s"] > 0
    assert any(c["target"].startswith("tracing off") for c in results["checks"])


def test_acks_section(results: dict) -> None:
    """Section 14 measured ACK_REPLICAS 0 and 1 in the same run (every submit answered 202, or the
    run fails), and the primary's SIGKILL under ACK_REPLICAS=1: jobs accepted after it, none of
    the accepted ones unfetched at the witness, the gap figures present (not asserted)."""
    a = results["acks"]
    if "skipped" in a:  # no redis-server here: the section says so
        assert not IN_CI, a["skipped"]
        pytest.skip(a["skipped"])
    assert [r["ack_replicas"] for r in a["rows"]] == [0, 1]
    for r in a["rows"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["submits"] > 0 and r["submits_per_s"] > 0
    f = a["failover"]
    assert f["accepted"] > 0 and f["lost"] == 0
    assert f["first_202_s"] is not None and f["first_fetch_s"] is not None
    checks = [c["target"] for c in results["checks"]]
    assert sum(c.startswith("acks: ") for c in checks) == 1
