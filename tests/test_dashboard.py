"""The dashboard in a real browser: headless Chromium loads ``GET /`` from a running ``serve`` and,
once the submitted jobs are finished, shows exactly the numbers ``GET /stats`` returns; its jobs
table and flows panel show what ``GET /jobs`` and ``GET /flows`` return, and their buttons cancel,
re-queue, pause and resume through the API.

Set ``QC_SCREENSHOTS=docs`` to write the screenshots the README shows (``dashboard.png`` is the
durable run, ``dashboard-inmemory.png`` the in-memory one); otherwise they go to a temp dir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.browser import (
    as_rendered,
    chromium,
    rendered_stats,
    require_chromium,
    screenshot,
)
from tests.support.helpers import Processes, allow, get_json, wait_until

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
    # the flows panel has something to show: the upstream's key limited, as in the README
    key = urlsplit(request.getfixturevalue("upstream")).netloc
    env["FLOW_LIMITS"] = json.dumps({key: {"parallelism": 3, "rate": 20, "period_s": 1}})
    if backend == "durable":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    _, api = processes.serve(**env)
    if backend == "durable":
        processes.worker(**env)
    return api


def _hold_on_a_paused_key(api: str, upstream: str, n: int) -> None:
    """Pause the flow key ``inference`` and submit ``n`` jobs for it: they wait, uncounted."""
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        assert client.post("/flows/inference/pause").json()["paused"] is True
        for i in range(n):
            r = client.post("/jobs", json={"url": f"{upstream}/infer/{i}", "flow_key": "inference"})
            assert r.status_code == 202, r.text


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
    _hold_on_a_paused_key(api, upstream, 2)
    wait_until(lambda: get_json(api + "/stats")["waiting_on_flow"] == 2, 15, "2 jobs to wait")
    shown = wait_until(lambda: _page_matches(browser, api), 15, "the page to show /stats")
    assert wait_until(lambda: _flows_match(browser, api), 15, "the panel to show GET /flows")

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


# -- the jobs table and the flows panel --------------------------------------------------------

FLOW_LIMITS = '{"*": {"parallelism": 5}, "api.example.com:443": {"rate": 10, "period_s": 1}}'


def _same(value: Any, shown: str) -> bool:
    """Whether a cell's ``data-value`` (the page's ``String(v)``, "" for null) is the API's value."""
    if value is None:
        return shown == ""
    if isinstance(value, bool):
        return shown == str(value).lower()
    if isinstance(value, int | float):
        return shown != "" and float(shown) == value
    return bool(shown == str(value))


def _rows(driver: Any, selector: str) -> list[dict[str, str]]:
    """Each row matching ``selector``: its cells' data-field → data-value."""
    rows: list[dict[str, str]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => Object.fromEntries("
        "[...r.querySelectorAll('[data-field]')].map(c => [c.dataset.field, c.dataset.value])));",
        selector,
    )
    return rows


def _jobs_match(driver: Any, api: str) -> list[dict[str, Any]] | None:
    """GET /jobs?order=newest&limit=20 when the jobs table shows exactly it, else None."""
    jobs: list[dict[str, Any]] = get_json(api + "/jobs?order=newest&limit=20")["jobs"]
    rows = _rows(driver, "[data-job]")
    if len(rows) != len(jobs):
        return None
    for job, row in zip(jobs, rows, strict=True):
        expected = {
            "id": job["id"],
            "status": job["status"],
            "method": job["method"],
            "host": urlsplit(job["url"]).netloc,
            "attempts": job["attempts"],
            "error": (job["result"] or {}).get("error"),
        }
        if set(row) != set(expected) or not all(_same(v, row[k]) for k, v in expected.items()):
            return None
    return jobs


def _flows_match(driver: Any, api: str) -> dict[str, Any] | None:
    """GET /flows when the flows panel shows exactly it (every key, every number), else None."""
    body: dict[str, Any] = get_json(api + "/flows")
    rows = _rows(driver, "[data-flow]")
    if [r.get("key") for r in rows] != [f["key"] for f in body["flows"]]:
        return None
    for flow, row in zip(body["flows"], rows, strict=True):
        if set(row) != set(flow) or not all(_same(v, row[k]) for k, v in flow.items()):
            return None
    shown = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('[data-flow-default]')]"
        ".map(e => [e.dataset.flowDefault, e.textContent]));"
    )
    default = body["default"] or {}
    if set(shown) != set(default):
        return None
    if not all(_same(v, "" if shown[k] == "–" else shown[k]) for k, v in default.items()):
        return None
    return body


def _click(driver: Any, selector: str) -> bool:
    """Click the button matching ``selector`` (False if absent or replaced mid-click)."""
    from selenium.common.exceptions import StaleElementReferenceException

    found = driver.find_elements("css selector", selector)
    try:
        if found:
            found[0].click()
            return True
    except StaleElementReferenceException:
        pass
    return False


@pytest.mark.parametrize("backend", ["inmemory", "durable"])
def test_jobs_table_and_flows_panel_show_the_api_and_their_buttons_act(
    backend: str,
    browser: Any,
    processes: Processes,
    upstream: str,
    request: pytest.FixtureRequest,
) -> None:
    """The jobs table shows GET /jobs?order=newest&limit=20 and the flows panel GET /flows; the
    cancel button cancels a queued job, retry re-queues a failed one, resume releases a paused
    key (each checked through the API)."""
    env: dict[str, object] = {"QUEUE_BACKEND": backend, "WORKERS": 2, "QUEUE_MAXSIZE": 100}
    env.update(FAST_RETRIES, FLOW_LIMITS=FLOW_LIMITS, ALLOWED_HOSTS=allow(upstream))
    if backend == "durable":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    _, api = processes.serve(**env)
    if backend == "durable":
        processes.worker(**env)
    key = urlsplit(upstream).netloc  # the upstream's flow key, host:port
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        gone = client.post("/jobs", json={"url": upstream + "/gone?status=404"}).json()["id"]
        wait_until(lambda: client.get(f"/jobs/{gone}").json()["status"] == "failed", 30, "a 404")
        assert client.post(f"/flows/{key}/pause").json()["paused"] is True
        held = [
            client.post("/jobs", json={"url": f"{upstream}/held/{i}"}).json()["id"]
            for i in range(3)
        ]
        browser.get(api + "/?every_ms=250")
        wait_until(lambda: _jobs_match(browser, api), 15, "the jobs table to show GET /jobs")
        flows = wait_until(lambda: _flows_match(browser, api), 15, "the panel to show GET /flows")
        assert {f["key"] for f in flows["flows"]} >= {key, "api.example.com:443"}
        assert flows["default"] == {"parallelism": 5, "rate": None, "period_s": 1.0}
        assert browser.find_elements("css selector", f'button[data-action=retry][data-id="{gone}"]')

        cancel = f'button[data-action=cancel][data-id="{held[1]}"]'
        wait_until(lambda: _click(browser, cancel), 15, "the cancel button")
        wait_until(
            lambda: client.get(f"/jobs/{held[1]}").json()["status"] == "cancelled",
            15,
            "the job to be cancelled",
        )
        jobs = wait_until(lambda: _jobs_match(browser, api), 15, "the table to show it cancelled")
        assert {j["id"]: j["status"] for j in jobs}[held[1]] == "cancelled"
        assert not browser.find_elements("css selector", cancel)

        retry = f'button[data-action=retry][data-id="{gone}"]'
        wait_until(lambda: _click(browser, retry), 15, "the retry button")
        wait_until(
            lambda: client.get(f"/jobs/{gone}").json()["status"] == "queued",  # its key is paused
            15,
            "the dead letter to be re-queued",
        )
        assert client.get("/dead-letters").json()["dead_letters"] == []

        wait_until(
            lambda: _click(browser, f'button[data-action=resume][data-key="{key}"]'), 15, "resume"
        )
        wait_until(lambda: not client.get(f"/flows/{key}").json()["paused"], 15, "the key resumed")
        ran = [held[0], held[2], gone]
        wait_until(
            lambda: all(
                client.get(f"/jobs/{i}").json()["status"] in ("done", "failed") for i in ran
            ),
            30,
            "the held jobs to run",
        )
        wait_until(lambda: _jobs_match(browser, api), 15, "the table to show them finished")
        wait_until(lambda: _flows_match(browser, api), 15, "the panel to show the key resumed")
