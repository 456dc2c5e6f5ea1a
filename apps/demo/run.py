"""``queue-contrast crash-demo``: the same workload on each backend, a SIGKILL mid-run, a restart.

For every scenario it starts ``serve`` (and, for durable, ``worker``) as real processes against one
``upstream`` witness, submits ``--jobs`` jobs, SIGKILLs the process that runs the workers once
``--kill-after`` of them are done, restarts it at once, and counts — at the upstream, which cannot
lie for the service — what was done, lost and fetched twice, and how long the orphans took to run
again. Scenarios run side by side:

* ``inmemory``   — the asyncio.Queue inside ``serve``; the kill takes queued and in-flight jobs with it;
* ``durable``    — Redis in arq's job format, our runner: a dead worker's leases lapse with its
  heartbeat and its jobs run again within ``HEARTBEAT_TTL`` plus a moment;
* ``stock-arq``  — the same producer and jobs on arq's own, unmodified Worker (``worker --engine
  stock-arq``): arq's recovery waits for the in-progress key to expire (job timeout + 10 s after the
  job *started*).

Every job is an AI-inference-style ``POST /infer`` with a JSON body; the witness honours the
``Idempotency-Key`` each fetch carries, so the table shows deliveries beyond one (at least once)
beside effects applied (exactly once per job on the durable backends).

Redis: ``REDIS_URL`` when given; otherwise a private ``redis-server`` (AOF, fsync always) if one is
installed, else the embedded stand-in (fakeredis's TCP server in its own process).
Which Redis is chosen, and one database of it per scenario: ``apps.demo.redis_target``.

One module (~510 lines): a scenario's phases (start, submit, kill, restart, count) share the
processes and the one snapshot the columns are read from; the table, the page and the picture
live beside it (terminal, page, chart), the state they show in ``state``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from apps.demo import chart as demo_chart
from apps.demo.redis_target import NotEmpty, require_empty, resolve_redis, with_db
from apps.demo.state import SCENARIOS, DemoState, Options, Run, Scenario
from apps.harness.processes import ChildExited, Proc, Processes, child_env
from apps.harness.redis_launcher import RedisProcess
from pipeline.backend import MAX_PAGE

STOCK_POLL_S = 0.05
DEMO_JOB_TIMEOUT_S = 3  # short, so stock arq's recovery (timeout + 1 + 10 s) fits in the demo
POLL_S = 0.1
NEAR_KILL_POLL_S = 0.01  # within one round of the workers of the kill mark: watch closely
SUBMIT_CONCURRENCY = 16


class Submitter:
    """Submits a scenario's jobs, a few at a time; :meth:`pause` holds back new submissions and
    returns once none is on the wire, so what is read then counts every accepted job once."""

    def __init__(self, client: httpx.AsyncClient, run: Run) -> None:
        self.client = client
        self.run = run
        self.accepted: list[str] = []  # job ids the API answered 202, in order
        self._open = asyncio.Event()
        self._open.set()
        self._on_wire = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, jobs: list[dict[str, Any]]) -> None:
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def one(job: dict[str, Any]) -> None:
            async with gate:
                while not self._open.is_set():  # woken by resume(), maybe paused again since
                    await self._open.wait()
                self._on_wire += 1
                self._idle.clear()
                try:
                    r = await self.client.post("/jobs", json=job)
                    r.raise_for_status()
                    self.accepted.append(job["id"])
                    self.run.submitted += 1
                finally:
                    self._on_wire -= 1
                    if not self._on_wire:
                        self._idle.set()

        await asyncio.gather(*(one(job) for job in jobs))

    async def pause(self) -> None:
        self._open.clear()
        await self._idle.wait()

    def resume(self) -> None:
        self._open.set()


class Demo:
    def __init__(
        self, state: DemoState, redis_url: str, upstream: str, shared: Processes | None = None
    ) -> None:
        self.state = state
        self.redis_url = redis_url
        self.upstream = upstream
        self.shared = shared or Processes()  # the upstream: every scenario needs it alive
        self.opts = state.options
        # on a database that may hold older records, job ids unique to this run cannot collide
        self.tag = f"{secrets.token_hex(3)}-" if self.opts.allow_nonempty_db else ""
        self.engine_rows: Any = None  # apps.demo.engine_rows.Rows, when a comparison row runs

    def env(self, sc: Scenario) -> dict[str, str]:
        """The children's environment; ALLOWED_HOSTS names only the demo's own upstream (a
        loopback address, which the URL guard refuses unless it is listed)."""
        return child_env(
            ALLOWED_HOSTS=urlsplit(self.upstream).netloc,
            QUEUE_BACKEND=sc.backend,
            REDIS_URL=with_db(self.redis_url, sc.db_offset),
            WORKERS=self.opts.workers,
            QUEUE_MAXSIZE=max(self.opts.jobs, 10),
            JOB_TIMEOUT=DEMO_JOB_TIMEOUT_S,
            # stock arq polls its queue every POLL_DELAY (arq's poll_delay, 0.5 s by default):
            # short, so it keeps its slots as busy as ours and the kill finds jobs in flight
            **({"POLL_DELAY": STOCK_POLL_S} if sc.engine == "stock-arq" else {}),
            API_TOKEN="",  # the demo's own service on loopback, which only the demo talks to
        )

    async def run(self, sc: Scenario) -> Run:
        run = self.state.runs[sc.key]
        scene = Scene(sc, run, Processes(), self.shared)
        try:
            if sc.backend == "engine":  # a comparison row (Celery, RabbitMQ): engine_rows
                await self.engine_rows.run(scene)
            else:
                await self._run(scene)
        except Exception as exc:  # reported in the table, never swallowed silently
            # a child that died explains the failure better than what its death caused
            gone = exc if isinstance(exc, ChildExited) else scene.first_exited()
            if gone is not None:
                run.error, run.error_output = gone.summary, gone.lines
            else:
                run.error = f"{type(exc).__name__}: {exc}"
            run.lost = None  # never measured: an error row must not read "lost 0"
            run.phase = "error"
        finally:
            await asyncio.to_thread(scene.procs.stop_all)
        return run

    def jobs_of(self, sc: Scenario) -> list[dict[str, Any]]:
        """The scenario's jobs. Each job's upstream latency is ``--latency-ms`` times one of
        0.55, 0.65, ... 1.45 (mean 1.0), as real fetches vary: workers that all took exactly as
        long would finish in lockstep, ``done`` would jump by WORKERS at a time, and no kill
        could land between."""
        jobs = []
        for n in range(self.opts.jobs):
            latency = self.opts.latency_ms * (0.55 + (n * 3 % 10) / 10)
            jobs.append(
                {
                    "url": f"{self.upstream}/infer?latency_ms={latency:.0f}",
                    "id": f"{sc.key}-{self.tag}{n}",
                    "method": "POST",
                    "json": {"prompt": f"summarise document {n}", "scenario": sc.key},
                }
            )
        return jobs

    async def _run(self, scene: Scene) -> None:
        sc, run, procs = scene.sc, scene.run, scene.procs
        env = self.env(sc)
        serve, api = await asyncio.to_thread(procs.serve, **env)
        target: Proc = serve
        if sc.backend == "durable":
            target = await asyncio.to_thread(procs.worker, sc.engine, **env)
        jobs = self.jobs_of(sc)
        ids = [job["id"] for job in jobs]
        kill_at = max(1, int(self.opts.jobs * self.opts.kill_after))
        async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as client:
            run.base = await self._stats(client)  # zero, unless the database held older jobs
            run.phase = "submitting"
            run.t0 = time.time()
            run.timeline.append([0.0, 0])
            submitter = Submitter(client, run)
            # submit while watching progress: the kill must not wait for the last submission
            submitting = asyncio.create_task(self._submit(submitter, run, jobs))
            try:
                # the counts at the kill come from one reading taken while no job is being
                # submitted, so each accepted job is in exactly one of done, failed, queued, in
                # flight
                stats = await self._until_kill_mark(client, scene, submitting, submitter, kill_at)
                at_kill = len(submitter.accepted)
                if sc.backend == "inmemory":  # the last reading: the kill takes the queue with it
                    self.kill(scene, target)
                    snapshot = self._stats_counts(stats, run)
                    submitting.cancel()  # the kill takes the API down: stop submitting
                else:  # the worker is dead: the records in Redis hold still until the restart
                    self.kill(scene, target)
                    await asyncio.to_thread(target.wait, 10)
                    statuses = await self._statuses(client, submitter.accepted[:at_kill])
                    snapshot = Counter(statuses.values())
                    scene.orphans = [i for i, s in statuses.items() if s == "running"]
                    submitter.resume()  # the API lives on: every job gets submitted
                    await submitting
            finally:
                submitting.cancel()  # no-op once it is done
                await asyncio.gather(submitting, return_exceptions=True)
        await asyncio.to_thread(target.wait, 10)
        self._note_kill(run, snapshot)
        scene.accepted_at_kill = at_kill
        if run.phase == "submitting":
            run.phase = "running"
        run.phase = f"killed {sc.kills}; restarting"
        if sc.backend == "inmemory":
            _, api = await asyncio.to_thread(procs.serve, **env)
        else:
            await asyncio.to_thread(procs.worker, sc.engine, **env)
        run.restart_t = run.t()
        run.phase = "recovering"
        async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as client:
            if sc.backend == "inmemory":
                await self._after_inmemory_restart(client, run, submitter.accepted)
            else:
                await self._after_durable_restart(client, scene, submitter.accepted)
        run.submitted_after_kill = run.submitted - scene.accepted_at_kill
        await self.count_at_witness(scene, ids)
        run.phase = "finished"

    def kill(self, scene: Scene, target: Proc) -> None:
        scene.killed.append(target)
        target.signal(signal.SIGKILL)
        scene.kill_wall = time.time()
        scene.run.kill_t = scene.run.t()

    @staticmethod
    def _note_kill(run: Run, counts: Counter[str]) -> None:
        """The counts at the kill, from one snapshot of the jobs accepted by then."""
        run.done_before_kill = counts["done"]
        run.failed_before_kill = counts["failed"]
        run.queued_at_kill = counts["queued"] + counts["scheduled"]
        run.in_flight_at_kill = counts["running"]

    async def _submit(self, submitter: Submitter, run: Run, jobs: list[dict[str, Any]]) -> None:
        """Submit every job, a few at a time, so the queue fills before much is done."""
        await submitter.submit(jobs)
        if run.phase == "submitting":
            run.phase = "running"

    @staticmethod
    async def _stats(client: httpx.AsyncClient) -> dict[str, Any]:
        stats: dict[str, Any] = (await client.get("/stats")).json()
        return stats

    @staticmethod
    def _stats_counts(stats: dict[str, Any], run: Run) -> Counter[str]:
        """The service's own counts, by status (the in-memory service reads them all at once)."""
        counts = {k: stats[k] - run.base.get(k, 0) for k in ("done", "failed", "queued", "running")}
        return Counter({**counts, "scheduled": stats.get("scheduled", 0)})

    async def _statuses(self, client: httpx.AsyncClient, ids: list[str]) -> dict[str, str]:
        """Each job's status as its record says, read a page of records at a time."""
        wanted, found = set(ids), {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": MAX_PAGE, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/jobs", params=params)).raise_for_status().json()
            found.update({j["id"]: j["status"] for j in page["jobs"] if j["id"] in wanted})
            cursor = page["next_cursor"]
            if cursor is None:
                break
        missing = [i for i in ids if i not in found]
        if missing:
            raise RuntimeError(f"{len(missing)} accepted jobs have no record, e.g. {missing[0]}")
        return found

    async def _after_inmemory_restart(
        self, client: httpx.AsyncClient, run: Run, accepted: list[str]
    ) -> None:
        codes = [(await client.get(f"/jobs/{i}")).status_code for i in accepted]
        run.unknown_after_restart = codes.count(404)
        run.never_submitted = self.opts.jobs - run.submitted
        run.completed, run.failed = run.done_before_kill, run.failed_before_kill
        run.timeline.append([run.t(), run.completed or 0])

    async def _after_durable_restart(
        self, client: httpx.AsyncClient, scene: Scene, accepted: list[str]
    ) -> None:
        run = scene.run
        run.never_submitted = self.opts.jobs - run.submitted
        recovered = asyncio.create_task(self._recovered(client, scene))
        try:
            await self._until(
                client,
                scene,
                lambda s: s["done"] + s["failed"] >= len(accepted),
                self.opts.give_up_after_s,
            )
            run.recovery_s = await recovered
        finally:
            recovered.cancel()
            await asyncio.gather(recovered, return_exceptions=True)
        final = Counter((await self._statuses(client, accepted)).values())
        run.completed, run.failed = final["done"], final["failed"]

    async def _poll(self, client: httpx.AsyncClient, scene: Scene) -> dict[str, Any]:
        """One /stats reading (``done`` and ``failed`` of this run only: minus ``run.base``),
        added to the timeline; a child that has exited ends the wait (:class:`ChildExited`)."""
        scene.check_running()
        run = scene.run
        raw = await self._stats(client)
        stats = {**raw, **{k: raw[k] - run.base.get(k, 0) for k in ("done", "failed")}}
        run.timeline.append([run.t(), stats["done"]])
        return stats

    def _gave_up(self, run: Run, stats: dict[str, Any], timeout: float) -> TimeoutError:
        return TimeoutError(
            f"{run.backend}: gave up waiting after {timeout:g} s (done {stats['done']}, failed "
            f"{stats['failed']}, queued {stats['queued']}, running {stats['running']} of "
            f"{run.submitted} submitted)"
        )

    async def _until_kill_mark(
        self,
        client: httpx.AsyncClient,
        scene: Scene,
        submitting: asyncio.Task[None],
        submitter: Submitter,
        kill_at: int,
    ) -> dict[str, Any]:
        """Poll /stats until ``kill_at`` jobs are done; returns that reading, taken while no job
        was being submitted. Within one round of the workers of the mark (once enough jobs are
        accepted that some stay queued at the kill) submitting pauses, and polling quickens to
        every NEAR_KILL_POLL_S; the caller resumes it after the kill. On a busy machine the pause
        (the submissions on the wire must be answered first) can let the kill land a few jobs
        past the mark; the counts are read at the kill either way."""
        run, near = scene.run, kill_at - self.opts.workers
        enough = min(self.opts.jobs, kill_at + 2 * self.opts.workers)  # some stay queued
        timeout = self.opts.give_up_after_s
        deadline = time.monotonic() + timeout
        paused = False
        while True:
            if submitting.done() and submitting.exception() is not None:
                await submitting  # a submission failed: that is the scenario's error
            stats = await self._poll(client, scene)
            if paused and stats["done"] >= kill_at:
                return stats
            if not paused and stats["done"] >= near and run.submitted >= enough:
                await submitter.pause()
                paused = True
                continue  # the next reading is the first one with nothing on the wire
            if time.monotonic() > deadline:
                raise self._gave_up(run, stats, timeout)
            await asyncio.sleep(NEAR_KILL_POLL_S if stats["done"] >= near else POLL_S)

    async def _until(
        self,
        client: httpx.AsyncClient,
        scene: Scene,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> dict[str, Any]:
        """Poll /stats every POLL_S until ``predicate``; a child that exits meanwhile ends the
        wait at once (:class:`ChildExited`)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self._poll(client, scene)
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise self._gave_up(scene.run, stats, timeout)
            await asyncio.sleep(POLL_S)

    async def _witness(self, ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the upstream saw of these jobs: hits per job id, and deliveries/effects per
        Idempotency-Key (the job id)."""
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            jobs = (await client.get(self.upstream + "/jobs")).json()
            effects = (await client.get(self.upstream + "/effects")).json()
        return {i: jobs[i] for i in ids if i in jobs}, {i: effects[i] for i in ids if i in effects}

    @staticmethod
    async def _status(client: httpx.AsyncClient, job_id: str) -> str:
        response = await client.get(f"/jobs/{job_id}")
        return str(response.json()["status"]) if response.status_code == 200 else "unknown"

    async def _recovered(self, client: httpx.AsyncClient, scene: Scene) -> float | None:
        """Seconds from the kill until every job it orphaned has finished again."""
        pending = set(scene.orphans)
        deadline = time.monotonic() + self.opts.give_up_after_s
        while pending and time.monotonic() < deadline:
            scene.check_running()
            for job_id in list(pending):
                if await self._status(client, job_id) in ("done", "failed"):
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(POLL_S / 2)
        if pending or not scene.orphans:
            return None
        return round(time.time() - scene.kill_wall, 2)

    async def count_at_witness(self, scene: Scene, ids: list[str]) -> None:
        run = scene.run
        witness, effects = await self._witness(ids)
        run.fetched_by_upstream = len(witness)
        run.duplicates = sum(int(j["hits"]) for j in witness.values()) - len(witness)
        run.effects = sum(int(e["effects"]) for e in effects.values())
        completed, failed = run.completed or 0, run.failed or 0
        run.done_after_restart = completed - (run.done_before_kill or 0)
        run.lost = run.submitted - completed - failed


@dataclass
class Scene:
    """One scenario while it runs: its processes, the one it killed, the jobs the kill orphaned."""

    sc: Scenario
    run: Run
    procs: Processes
    shared: Processes
    killed: list[Proc] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    kill_wall: float = 0.0
    accepted_at_kill: int = 0

    def check_running(self) -> None:
        """Raise :class:`ChildExited` if a process the scenario needs has exited."""
        self.shared.check_running()
        self.procs.check_running(self.killed)

    def first_exited(self) -> ChildExited | None:
        try:
            self.check_running()
        except ChildExited as gone:
            return gone
        return None


async def run_demo(state: DemoState, on_tick: Callable[[DemoState], None] | None = None) -> None:
    """Run every chosen scenario side by side; ``on_tick`` is called a few times a second."""
    opts = state.options
    redis_proc: RedisProcess | None = None
    procs = Processes()
    ticker: asyncio.Task[None] | None = None
    stop_engines: Callable[[], None] = _nothing
    try:
        redis_url, redis_proc, state.redis = await asyncio.to_thread(
            resolve_redis, opts.redis, opts.allow_nonempty_db
        )
        for key in opts.scenarios:
            if SCENARIOS[key].backend != "inmemory" and not opts.allow_nonempty_db:
                require_empty(with_db(redis_url, SCENARIOS[key].db_offset))
                if SCENARIOS[key].backend == "engine":  # and its Redis broker's database
                    require_empty(with_db(redis_url, SCENARIOS[key].db_offset + 1))
        _, upstream = await asyncio.to_thread(procs.upstream, opts.latency_ms)
        state.upstream = upstream
        for key in opts.scenarios:
            sc = SCENARIOS[key]
            state.runs[key] = Run(backend=key, label=sc.label)
        if on_tick is not None:
            ticker = asyncio.create_task(_tick(state, on_tick))
        demo = Demo(state, redis_url, upstream, procs)
        if any(SCENARIOS[k].backend == "engine" for k in opts.scenarios):
            from apps.demo.engine_rows import start_engines

            demo.engine_rows, stop_engines = await start_engines(demo)
        await asyncio.gather(*(demo.run(SCENARIOS[k]) for k in opts.scenarios))
    finally:
        state.finished = True
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            on_tick and on_tick(state)
        await asyncio.to_thread(procs.stop_all)
        await asyncio.to_thread(stop_engines)
        if redis_proc is not None:
            await asyncio.to_thread(redis_proc.stop)


def _nothing() -> None:
    pass


async def _tick(state: DemoState, on_tick: Callable[[DemoState], None]) -> None:
    while True:
        on_tick(state)
        await asyncio.sleep(0.25)


def write_outputs(state: DemoState, as_json: bool) -> str:
    runs = [r.to_dict() for r in state.runs.values()]
    if state.options.svg is not None:
        title = (
            f"crash-demo: {state.options.jobs} jobs, SIGKILL after "
            f"{state.options.kill_after:.0%} done, restart at once"
        )
        state.options.svg.write_text(demo_chart.render(runs, title))
    if as_json:
        return json.dumps({"redis": state.redis, "rabbit": state.rabbit, "runs": runs}, indent=2)
    return ""


def main(opts: Options, as_json: bool, page_port: int | None = None) -> int:
    """Run the demo and print its results; with ``page_port``, also serve the live page there
    (``apps.demo.page``), which stays up with the final state until Ctrl-C."""
    from apps.demo import terminal as demo_view

    view = demo_view.ProgressView(sys.stderr)
    state = DemoState(opts)

    async def demo() -> None:
        try:
            await run_demo(state, view.update)
        finally:
            view.close()
        text = write_outputs(state, as_json)
        if as_json:
            print(text, flush=True)
        else:
            demo_view.print_table(state)

    try:
        if page_port is None:
            asyncio.run(demo())
        else:
            from apps.demo.page import run_with_page

            asyncio.run(run_with_page(demo(), state.snapshot, "127.0.0.1", page_port))
    except NotEmpty as exc:
        print(f"queue-contrast crash-demo: {exc}", file=sys.stderr, flush=True)
        return 2
    return 1 if any(r.error for r in state.runs.values()) else 0
