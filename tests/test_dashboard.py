"""The dashboard in a real browser: headless Chromium loads ``GET /`` from a running ``serve`` and,
once the submitted jobs are finished, shows exactly the numbers ``GET /stats`` returns; its jobs
table and flows panel show what ``GET /jobs`` and ``GET /flows`` return, and their buttons cancel,
re-queue, pause and resume through the API. A row of the jobs table opens that job: its record,
each attempt's end, the stored body and the RFC 3339 times, as ``GET /jobs/{id}`` and
``GET /jobs/{id}/result`` answer them, with a credential in the URL masked.

Set ``QC_SCREENSHOTS=docs`` to write the screenshots the docs show (``dashboard.png`` is the
durable run, ``dashboard-inmemory.png`` the in-memory one, ``dashboard-job.png`` one job opened
on the durable backend); otherwise they go to a temp dir.
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
            "url": job["url"],
            "attempts": job["attempts"],
            "created_at_iso": job["created_at_iso"],
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
        # a time's cell holds its unix value and shows its RFC 3339 text (the *_iso beside it)
        flow = {k: v for k, v in flow.items() if not k.endswith("_iso")}
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


# -- one job, opened from its row --------------------------------------------------------------

SECRET = "s3cr3t-never-shown"  # an API key in a query parameter: sent to the upstream, never shown


def _job_view(driver: Any, job_id: str) -> dict[str, Any] | None:
    """What the open job view shows (its record's fields, attempts and stored body), once it shows
    ``job_id`` at its final status, else None."""
    shown: dict[str, Any] | None = driver.execute_script(
        """const view = document.getElementById('job-view');
        const body = document.getElementById('job-body');
        if (view.hidden || view.dataset.open !== arguments[0] || !body.dataset.status) return null;
        const values = (root) => Object.fromEntries([...root.querySelectorAll('[data-field]')]
          .map(c => [c.dataset.field, c.dataset.value]));
        return {status: body.dataset.status, record: values(body.querySelector('dl')),
          attempts: [...body.querySelectorAll('[data-attempt]')].map(r => ({
            attempt: r.dataset.attempt, ...values(r)})),
          result: body.querySelector('pre[data-field=result]')?.textContent ?? null,
          text: view.innerText, hash: location.hash};""",
        job_id,
    )
    return shown if shown and shown["status"] in ("done", "failed") else None


@pytest.mark.parametrize("backend", ["inmemory", "durable"])
def test_a_row_opens_its_job_with_every_attempt_its_result_and_times(
    backend: str,
    browser: Any,
    processes: Processes,
    upstream: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """The jobs table shows each job's URL, path included, with an ``api_key`` query parameter
    masked (nowhere on the page in clear). Clicking a row opens that job: its record as
    ``GET /jobs/{id}`` answers it, its two attempts (a 503 retried, then the 200) with their ends
    and RFC 3339 times, and its stored body; the close button hides it again."""
    env: dict[str, object] = {"QUEUE_BACKEND": backend, "WORKERS": 2, "QUEUE_MAXSIZE": 100}
    env.update(FAST_RETRIES, ALLOWED_HOSTS=allow(upstream))
    if backend == "durable":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    _, api = processes.serve(**env)
    if backend == "durable":
        processes.worker(**env)
    retried_url = (
        f"{upstream}/reports/2026/q4?fail_times=1&status=503&api_key={SECRET}"
        "&text=quarterly+figures"
    )
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        retried = client.post("/jobs", json={"url": retried_url}).json()["id"]
        plain = client.post("/jobs", json={"url": f"{upstream}/reports/2026/q3"}).json()["id"]
        for job_id in (retried, plain):
            wait_until(
                lambda i=job_id: client.get(f"/jobs/{i}").json()["status"] == "done", 30, "done"
            )
        record = client.get(f"/jobs/{retried}").json()
        body = client.get(f"/jobs/{retried}/result").text
    # the upstream got the key; the API shows it masked (checked on the page below too)
    sent = get_json(f"{upstream}/requests?job={retried}")["requests"]
    assert len(sent) == 2 and all(f"api_key={SECRET}" in r["query"] for r in sent)
    assert record["url"] == retried_url.replace(SECRET, "***")
    assert record["attempts"] == 2 and body == "quarterly figures"

    browser.get(api + "/?every_ms=250")
    rows = wait_until(lambda: _jobs_match(browser, api), 15, "the jobs table to show GET /jobs")
    urls = {r["id"]: r["url"] for r in rows}
    assert urls[plain] == f"{upstream}/reports/2026/q3"  # one host, two paths: told apart
    assert "/reports/2026/q4?" in urls[retried] and "api_key=***" in urls[retried]
    assert SECRET not in browser.page_source

    wait_until(lambda: _click(browser, f'tr[data-job="{retried}"] td.url'), 15, "the job's row")
    view = wait_until(lambda: _job_view(browser, retried), 15, "the job view to open")
    assert view["hash"] == f"#job/{retried}"
    for field in ("status", "url", "attempts", "flow_key", "created_at_iso", "finished_at_iso"):
        assert _same(record[field], view["record"][field]), field
    if record.get("trace_id") is not None:  # a backend that traces: shown as it is
        assert view["record"]["trace_id"] == record["trace_id"]
    else:
        assert "trace_id" not in view["record"]
    attempts = [
        (a["attempt"], a["end"], a["http_status"], a["ended_at_iso"]) for a in view["attempts"]
    ]
    assert attempts == [
        ("1", "retry", "503", record["tries"][0]["ended_at_iso"]),
        ("2", "done", "200", record["tries"][1]["ended_at_iso"]),
    ]
    assert record["tries"][1]["ended_at_iso"] == record["finished_at_iso"]
    assert view["result"] == "quarterly figures"
    assert SECRET not in browser.page_source

    if backend == "durable":  # one picture of an opened job for the docs
        out = Path(os.environ.get("QC_SCREENSHOTS") or tmp_path)
        assert screenshot(browser, out / "dashboard-job.png").stat().st_size > 0

    wait_until(lambda: _click(browser, "button[data-action=close-job]"), 15, "the close button")
    wait_until(
        lambda: browser.execute_script("return document.getElementById('job-view').hidden"),
        15,
        "the job view to close",
    )
