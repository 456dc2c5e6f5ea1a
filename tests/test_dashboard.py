"""The dashboard in a real browser: headless Chromium loads ``GET /`` from a running ``serve`` and,
once the submitted jobs are finished, shows exactly the numbers ``GET /stats`` returns.

Set ``QC_SCREENSHOTS=docs`` to write the screenshots the README shows (``dashboard.png`` is the
durable run, ``dashboard-inmemory.png`` the in-memory one); otherwise they go to a temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import as_rendered, chromium, rendered_stats, require_chromium, screenshot
from tests.helpers import Processes, allow, get_json, wait_until

pytestmark = pytest.mark.slow  # real processes (or a browser): seconds each

JOBS_OK, JOBS_RETRIED, JOBS_FAILED_AT_ONCE = 30, 3, 1
FAST_RETRIES = {"MAX_TRIES": 2, "RETRY_BASE_DELAY": 0.05, "RETRY_MAX_DELAY": 0.1}


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    """A headless Chromium with a fresh profile; skipped off CI when Chromium is not installed."""
    require_chromium()
    with chromium(tmp_path / "profile") as driver:
        yield driver


def _start(backend: str, processes: Processes, request: pytest.FixtureRequest) -> str:
    env: dict[str, object] = {"QUEUE_BACKEND": backend, "WORKERS": 3, "QUEUE_MAXSIZE": 100}
    env["ALLOWED_HOSTS"] = allow(request.getfixturevalue("upstream"))
    env.update(FAST_RETRIES)
    if backend == "durable":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    _, api = processes.serve(**env)
    if backend == "durable":
        processes.worker(**env)
    return api


def _submit_mix(api: str, upstream: str) -> int:
    """Jobs that succeed, fail once and are retried then fail (500), and fail at once (404)."""
    urls = [f"{upstream}/page/{i}?latency_ms=400" for i in range(JOBS_OK)]
    urls += [f"{upstream}/flaky/{i}?status=500" for i in range(JOBS_RETRIED)]
    urls += [f"{upstream}/gone/{i}?status=404" for i in range(JOBS_FAILED_AT_ONCE)]
    with httpx.Client(timeout=10, trust_env=False) as client:
        for url in urls:
            r = client.post(api + "/jobs", json={"url": url})
            assert r.status_code == 202, r.text
    return len(urls)


def _finished(api: str, total: int) -> bool:
    """All jobs done or failed, and every worker's last heartbeat says it runs nothing."""
    stats = get_json(api + "/stats")
    idle = all(w["running"] == 0 for w in stats.get("worker_processes", []))
    return bool(stats["done"] + stats["failed"] == total and not stats["running"] and idle)


def _page_matches(driver: Any, api: str) -> list[tuple[str, str]] | None:
    """The page's numbers (and worker rows) when they equal a fresh GET /stats, else None."""
    stats = get_json(api + "/stats")
    shown = rendered_stats(driver)
    expected = [(key, as_rendered(stats.get(key))) for key, _ in shown]
    rows = driver.execute_script(
        "return [...document.querySelectorAll('[data-worker]')]"
        ".map(r => [r.dataset.worker, r.dataset.running]);"
    )
    beats = [[w["id"], str(w["running"])] for w in stats.get("worker_processes", [])]
    return shown if shown and shown == expected and rows == beats else None


@pytest.mark.parametrize("backend", ["inmemory", "durable"])
def test_dashboard_shows_what_stats_returns(
    backend: str,
    browser: Any,
    processes: Processes,
    upstream: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """After jobs finish, every number the page renders equals the same key in GET /stats."""
    api = _start(backend, processes, request)
    browser.get(api + "/?every_ms=250")
    wait_until(
        lambda: browser.find_elements("css selector", "#live.ok"), 15, "the page's first poll"
    )
    total = _submit_mix(api, upstream)
    wait_until(lambda: _finished(api, total), 60, f"all {total} jobs to finish")
    shown = wait_until(lambda: _page_matches(browser, api), 15, "the page to show /stats")

    stats = get_json(api + "/stats")
    scalar = {k for k, v in stats.items() if not isinstance(v, dict | list)}
    assert {k for k, _ in shown} == scalar  # the page shows every number /stats has, no others
    assert dict(shown)["done"] == str(JOBS_OK)
    assert dict(shown)["failed"] == str(JOBS_RETRIED + JOBS_FAILED_AT_ONCE)
    assert dict(shown)["retried"] == str(JOBS_RETRIED)
    drawn = browser.execute_script(
        "return [...document.querySelectorAll('#chart-counters [data-series=done]')].length"
    )
    assert drawn >= 1
    rows = browser.execute_script(
        "return [...document.querySelectorAll('[data-worker]')].map(r => r.dataset.worker)"
    )
    assert rows == [w["id"] for w in stats.get("worker_processes", [])]
    assert len(rows) == (1 if backend == "durable" else 0)  # in-memory: no heartbeats to show

    name = "dashboard.png" if backend == "durable" else f"dashboard-{backend}.png"
    out = Path(os.environ.get("QC_SCREENSHOTS") or tmp_path)
    assert screenshot(browser, out / name).stat().st_size > 0
