"""The crash-demo page: served beside the demo, and, in headless Chromium, showing both backends
side by side through the kill, the restart and the final table, from the snapshot it is fed.

One test scripts the snapshot (shape: ``apps.demo.page``'s docstring), so each phase can be
asserted on; the last runs the real ``queue-contrast crash-demo --serve`` and reads its page.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from apps.demo.page import create_demo_app, run_with_page
from apps.service.serving import bind
from tests.support.browser import chromium, require_chromium, screenshot
from tests.support.helpers import CLI, Processes, child_env, get_json, wait_until

pytestmark = pytest.mark.slow  # real processes (or a browser): seconds each

JOBS = 40


def _run(backend: str, label: str) -> dict[str, Any]:
    return {
        "backend": backend,
        "label": label,
        "phase": "running",
        "submitted": JOBS,
        "timeline": [[0.5, 0], [1.0, 4], [1.5, 10]],
        "kill_t": None,
        "restart_t": None,
        "done_before_kill": 0,
        "queued_at_kill": 0,
        "in_flight_at_kill": 0,
        "done_after_restart": 0,
        "completed": 0,
        "failed": 0,
        "lost": 0,
        "duplicates": 0,
        "recovery_s": None,
        "unknown_after_restart": 0,
        "error": None,
    }


class ScriptedDemo:
    """A demo state the test moves from phase to phase; ``snapshot`` is what the page polls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {
            "redis": "private redis-server (test)",
            "upstream": "http://127.0.0.1:1",
            "elapsed_s": 1.5,
            "finished": False,
            "jobs": JOBS,
            "runs": [_run("inmemory", "inmemory (asyncio.Queue)"), _run("durable", "durable")],
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.state)

    def kill(self) -> None:
        with self.lock:
            self.state["elapsed_s"] = 2.5
            for run, word in zip(self.state["runs"], ("serve", "worker"), strict=True):
                run.update(kill_t=2.0, restart_t=2.3, phase=f"killed {word}; restarting")
                run.update(done_before_kill=10, queued_at_kill=25, in_flight_at_kill=5)
                run["timeline"].append([2.0, 10])

    def finish(self) -> None:
        with self.lock:
            self.state.update(elapsed_s=6.0, finished=True)
            mem, dur = self.state["runs"]
            mem.update(phase="finished", completed=10, lost=30, unknown_after_restart=40)
            mem["timeline"].append([2.4, 10])
            dur.update(phase="finished", completed=40, done_after_restart=30, duplicates=5)
            dur.update(recovery_s=1.2)
            dur["timeline"] += [[3.0, 18], [4.0, 30], [5.0, 40]]


@pytest.fixture
def demo_page() -> Iterator[tuple[ScriptedDemo, str]]:
    """The demo page app on a free port, served from a thread; stopped and joined at teardown."""
    demo = ScriptedDemo()
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_demo_app(demo.snapshot), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)  # off the main thread uvicorn installs no signal handlers
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "the demo page server to start")
    try:
        yield demo, f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the demo page server did not stop"


async def test_run_with_page_serves_the_snapshot_while_the_demo_runs() -> None:
    """run_with_page serves / and /snapshot while the work runs, returns its result, then stops."""
    urls: list[str] = []
    ready = asyncio.Event()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    async def work() -> tuple[int, dict[str, Any], str]:
        await asyncio.wait_for(ready.wait(), 15)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            page = await client.get(urls[0])
            snap = await client.get(urls[0] + "snapshot")
        return page.status_code, snap.json(), page.text

    demo = ScriptedDemo()
    result = await run_with_page(
        work(), demo.snapshot, "127.0.0.1", 0, linger=False, on_ready=on_ready
    )
    assert result is not None
    status, snap, html = result
    assert status == 200 and "drawChart" in html  # the shared chart script is inlined
    assert snap == demo.snapshot()
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(urls[0])  # the page stopped with the demo (linger=False)


def _shown(driver: Any, backend: str, key: str) -> str:
    text: str = driver.execute_script(
        "return document.querySelector(`[data-run='${arguments[0]}'] [data-k='${arguments[1]}']`)"
        "?.textContent ?? '';",
        backend,
        key,
    )
    return text


def _cells(driver: Any, backend: str, kind: str) -> int:
    count: int = driver.execute_script(
        "return document.querySelectorAll(`[data-run='${arguments[0]}'] .cell.${arguments[1]}`)"
        ".length;",
        backend,
        kind,
    )
    return count


def _final_table(driver: Any) -> dict[tuple[str, str], str]:
    cells = driver.execute_script(
        "return [...document.querySelectorAll('#final [data-key]')]"
        ".map(td => [td.dataset.run, td.dataset.key, td.textContent]);"
    )
    return {(run, key): text for run, key, text in cells}


def test_demo_page_shows_the_kill_the_restart_and_what_each_backend_kept(
    demo_page: tuple[ScriptedDemo, str], tmp_path: Path
) -> None:
    """Side by side: live counts, then SIGKILL, then in-memory's lost jobs vs durable's recovered."""
    require_chromium()
    demo, url = demo_page
    with chromium(tmp_path / "profile") as driver:
        driver.get(url + "?every_ms=100")
        wait_until(lambda: _shown(driver, "durable", "done") == "10", 15, "the live done counts")
        assert _shown(driver, "inmemory", "done") == "10"
        assert _cells(driver, "inmemory", "done") == 10 and _cells(driver, "inmemory", "lost") == 0
        assert not driver.find_element("id", "final").is_displayed()

        demo.kill()
        wait_until(
            lambda: "SIGKILL serve at 2.0 s" in driver.find_element("css selector", "#runs").text,
            15,
            "the kill to show",
        )

        demo.finish()
        wait_until(lambda: driver.find_element("id", "final").is_displayed(), 15, "the final table")
        assert _shown(driver, "inmemory", "lost") == "30"
        assert _shown(driver, "durable", "lost") == "0"
        assert _shown(driver, "durable", "recovered") == "30"
        # in-memory's lost jobs and durable's recovered ones are different squares
        assert (_cells(driver, "inmemory", "lost"), _cells(driver, "inmemory", "recovered")) == (
            30,
            0,
        )
        assert (_cells(driver, "durable", "lost"), _cells(driver, "durable", "recovered")) == (
            0,
            30,
        )

        table = _final_table(driver)
        snap = demo.snapshot()
        for run in snap["runs"]:
            for key in (
                "submitted",
                "done_before_kill",
                "done_after_restart",
                "lost",
                "duplicates",
            ):
                assert table[(run["backend"], key)] == str(run[key]), (run["backend"], key)
        assert table[("inmemory", "recovery_s")] == "never (gone)"
        assert table[("durable", "recovery_s")] == "1.2"

        out = Path(os.environ.get("QC_SCREENSHOTS") or tmp_path)
        assert screenshot(driver, out / "crash-demo-scripted.png").stat().st_size > 0


@pytest.mark.slow
def test_crash_demo_serve_shows_what_each_backend_kept(
    processes: Processes, tmp_path: Path
) -> None:
    """crash-demo --serve: the page's final table and squares are the demo's own counts."""
    require_chromium()
    args = ["--jobs", "40", "--latency-ms", "150", "--backend", "inmemory", "--backend", "durable"]
    demo = processes.spawn(
        [*CLI, "crash-demo", "--serve", "0", "--svg", "", *args],
        r"crash-demo page ready: http://\S+/",
        child_env(),  # no REDIS_URL: the demo starts its own private Redis
        timeout=60,
    )
    ready = re.search(r"crash-demo page ready: (http://\S+/)", demo.output)
    assert ready
    url = ready.group(1)
    with chromium(tmp_path / "profile") as driver:
        driver.get(url)  # open while the demo runs, as a viewer would
        wait_until(lambda: "stays up until Ctrl-C" in demo.output, 150, "the demo to finish")
        wait_until(lambda: driver.find_element("id", "final").is_displayed(), 15, "the final table")
        snap = get_json(url + "snapshot")
        runs = {run["backend"]: run for run in snap["runs"]}
        table = _final_table(driver)
        for backend, run in runs.items():
            assert run["error"] is None, run["error"]
            for key in ("submitted", "done_before_kill", "queued_at_kill", "lost", "duplicates"):
                assert table[(backend, key)] == str(run[key]), (backend, key)
            assert _shown(driver, backend, "lost") == str(run["lost"])
            assert _cells(driver, backend, "lost") == run["lost"]
            assert _cells(driver, backend, "recovered") == run["done_after_restart"]
        assert runs["inmemory"]["lost"] > 0 and runs["durable"]["lost"] == 0
        assert runs["durable"]["done_after_restart"] > 0
        marks = driver.execute_script("return document.querySelectorAll('#chart .mark').length")
        assert marks == 4  # a kill and a restart per backend

        out = Path(os.environ.get("QC_SCREENSHOTS") or tmp_path)
        assert screenshot(driver, out / "crash-demo.png").stat().st_size > 0
    demo.signal(signal.SIGTERM)
    assert demo.wait(timeout=30) == 0
