"""SIGTERM is a graceful stop on both backends: in-flight jobs finish, nothing new starts.

What happens to *queued* jobs is the contrast: the in-memory service drops them (and says how
many); the durable worker leaves them in Redis for the next worker.
"""

from __future__ import annotations

import re
import signal

import httpx
import pytest

from tests.support.helpers import Processes, allow, get_json, wait_until

pytestmark = pytest.mark.slow  # real processes (or a browser): seconds each


def _submit(api: str, url: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = httpx.post(
            api + "/jobs",
            json={"url": f"{url}/job/{i}?latency_ms=1500"},
            timeout=10,
            trust_env=False,
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def test_inmemory_sigterm_finishes_in_flight_and_reports_dropped(
    processes: Processes, upstream: str
) -> None:
    """serve (inmemory) on SIGTERM finishes its 2 in-flight jobs, logs 4 dropped, exits 0."""
    serve, api = processes.serve(
        QUEUE_BACKEND="inmemory", WORKERS=2, QUEUE_MAXSIZE=20, ALLOWED_HOSTS=allow(upstream)
    )
    ids = _submit(api, upstream, 6)
    wait_until(lambda: get_json(upstream + "/stats")["in_flight"] == 2, 15, "2 jobs in flight")
    in_flight = set(get_json(upstream + "/jobs"))
    serve.signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0
    out = serve.output
    assert "dropped 4 queued jobs" in out
    finished = set(re.findall(r"← (\w+) ● 200", out))
    assert finished == in_flight
    assert get_json(upstream + "/stats")["unique_jobs"] == 2  # nothing started after SIGTERM
    assert set(ids) >= in_flight


def test_durable_sigterm_finishes_in_flight_and_keeps_queued(
    processes: Processes, upstream: str, redis_url: str
) -> None:
    """worker (durable) on SIGTERM finishes 2 in-flight jobs; the 4 queued stay for the next worker."""
    env = {"QUEUE_BACKEND": "durable", "REDIS_URL": redis_url, "WORKERS": 2, "QUEUE_MAXSIZE": 20}
    env["ALLOWED_HOSTS"] = allow(upstream)
    _, api = processes.serve(**env)
    worker = processes.worker(**env)
    ids = _submit(api, upstream, 6)
    wait_until(lambda: get_json(upstream + "/stats")["in_flight"] == 2, 15, "2 jobs in flight")
    in_flight = set(get_json(upstream + "/jobs"))
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    status = {i: get_json(f"{api}/jobs/{i}")["status"] for i in ids}
    assert {i for i, s in status.items() if s == "done"} == in_flight
    assert sorted(s for i, s in status.items() if i not in in_flight) == ["queued"] * 4
    processes.worker(**env)
    wait_until(
        lambda: all(get_json(f"{api}/jobs/{i}")["status"] == "done" for i in ids),
        30,
        "the next worker to finish the 4 queued jobs",
    )
    assert get_json(upstream + "/stats")["duplicates"] == 0
