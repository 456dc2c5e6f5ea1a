"""The crash demo's comparison rows (``--backend celery|celery-acks-late|celery-acks-late-amqp|
rabbitmq``): the article's other answers, on the same jobs, the same kill moment and the same
witness as the other rows.

There is no HTTP API in front of them (they are not backends behind our contract): the demo puts
the jobs on the engine's queue itself (Celery's ``send_task``; a confirmed publish to RabbitMQ),
reads what the workers did from their ledger (``apps.engines.ledger``) — done, failed, running —
and asks the broker what it still holds. The kill comes once ``--kill-after`` of the jobs are done;
the counts at the kill are one ledger reading taken once the killed worker was reaped; a new
worker starts at once. Then it waits until nothing more can happen without a clock running out:

* every job done or failed (what RabbitMQ, and Celery with ``acks_late`` on RabbitMQ, reach: the
  dead consumer's unacked messages are redelivered when its connection closes); or
* on a Redis broker, the queue empty, the new worker idle, and only the dead worker's unacked
  messages left (``held``): kombu hands those back only ``visibility_timeout`` (3600 s by
  default) after their delivery. Celery's default (early ack) acknowledged what it was running
  before running it: those jobs are nowhere any more — ``lost``.

``lost = submitted - done - failed - held``; ``held`` is shown beside it, never counted as done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import redis

from apps.demo.redis_target import with_db
from apps.demo.state import SCENARIOS
from apps.engines import ledger
from apps.engines.engines import (
    ENGINES,
    Engine,
    ready_on_redis,
    start_worker,
    submit,
    unacked_on_redis,
    worker_env,
)
from apps.engines.job import payload
from apps.engines.rabbit_node import NoRabbit, RabbitNode, resolve_rabbit

# The demo and the scene are ``apps.demo.run``'s Demo and Scene (which imports this module: typed
# as Any here, so there is no import cycle); what a row uses of them: the demo's ``redis_url``,
# ``upstream``, ``opts``, ``tag``, ``state``, its ``jobs_of``, ``kill`` and ``count_at_witness``;
# the scene's ``sc``, ``run``, ``procs``, ``orphans``, ``kill_wall`` and ``check_running``.
Demo = Any
Scene = Any

POLL_S = 0.1
NEAR_KILL_POLL_S = 0.01


class Rows:
    """The engine rows of one demo run, sharing its Redis and (when one is needed) RabbitMQ."""

    def __init__(self, demo: Demo, rabbit: RabbitNode | NoRabbit | None) -> None:
        self.demo = demo
        self.rabbit = rabbit

    async def run(self, scene: Scene) -> None:
        engine = ENGINES[scene.sc.engine]
        run = scene.run
        run.runs = engine.runs
        if engine.holds_until_timeout:
            run.visibility_timeout_s = engine.timeout_s
        if engine.needs_rabbit and not isinstance(self.rabbit, RabbitNode):
            run.skipped = f"skipped: {self.rabbit or 'no RabbitMQ'}"
            run.phase = "skipped"
            return
        await Row(self, scene, engine).play()


class Row:
    def __init__(self, rows: Rows, scene: Scene, engine: Engine) -> None:
        demo = rows.demo
        self.demo, self.scene, self.engine, self.run = demo, scene, engine, scene.run
        sc = scene.sc
        self.ledger_url = with_db(demo.redis_url, sc.db_offset)
        if engine.needs_rabbit:
            assert isinstance(rows.rabbit, RabbitNode)
            self.broker = rows.rabbit.url
        else:
            self.broker = with_db(demo.redis_url, sc.db_offset + 1)
        self.queue = f"qc-{sc.key}-{demo.tag}{int(time.time())}"
        opts = demo.opts
        self.env = worker_env(
            engine,
            self.broker,
            self.ledger_url,
            self.queue,
            ALLOWED_HOSTS=urlsplit(demo.upstream).netloc,
            WORKERS=opts.workers,
            JOB_TIMEOUT=3,
        )
        self.client = redis.Redis.from_url(self.ledger_url)
        self.ids: set[str] = set()

    def _start(self) -> Any:
        return start_worker(self.scene.procs, self.engine, self.demo.opts.workers, self.env)

    def _read(self) -> ledger.Snapshot:
        self.scene.check_running()
        snap = self._ledger()
        self.run.timeline.append([self.run.t(), snap.counts()["done"]])
        return snap

    async def play(self) -> None:
        run, opts = self.run, self.demo.opts
        try:
            worker = await asyncio.to_thread(self._start)
            jobs = [payload(j) for j in self.demo.jobs_of(self.scene.sc)]
            ids = [j["id"] for j in jobs]
            self.ids = set(ids)
            run.phase = "submitting"
            run.t0 = time.time()
            run.timeline.append([0.0, 0])
            run.submitted = await submit(self.engine, self.broker, self.queue, jobs)
            run.phase = "running"
            kill_at = max(1, int(opts.jobs * opts.kill_after))
            at_kill = await self._until_kill_mark(kill_at)
            self.demo.kill(self.scene, worker)
            await asyncio.to_thread(worker.wait, 10)
            at_kill = await asyncio.to_thread(self._ledger)
            self._note_kill(at_kill)
            held_at_kill = len(self._unacked())
            run.phase = "killed worker; restarting"
            await asyncio.to_thread(self._start)
            run.restart_t = run.t()
            run.phase = "recovering"
            await self._until_settled(at_kill, held_at_kill)
            final = await asyncio.to_thread(self._ledger)
            counts = final.counts()
            run.completed, run.failed = counts["done"], counts["failed"]
            run.never_submitted = opts.jobs - run.submitted
            await self.demo.count_at_witness(self.scene, ids)
            run.held = len(self._held(final))
            run.lost = (run.lost or 0) - run.held
            run.phase = "finished"
        finally:
            self.client.close()

    def _ledger(self) -> ledger.Snapshot:
        """The ledger, of this run's jobs only (``--allow-nonempty-db`` may share a database)."""
        return ledger.read(self.client).only(self.ids)

    def _unacked(self) -> list[str]:
        if not self.engine.holds_until_timeout:
            return []
        return [i for i in unacked_on_redis(self.broker) if i in self.ids]

    def _held(self, snap: ledger.Snapshot) -> set[str]:
        """Jobs not done or failed whose message the Redis broker holds unacked (a job done but
        killed before its ack is there too: it will run again, a duplicate, not a held job)."""
        return {i for i in self._unacked() if snap.status.get(i) not in ("done", "failed")}

    async def _until_kill_mark(self, kill_at: int) -> ledger.Snapshot:
        """The quarter mark, at a moment a job runs: the demo's jobs all take the same time, so a
        pool that starts the next job a few ms after the last ended (Celery's threads pool)
        ends them in waves, and a kill right at the mark would fall in the gap between two waves
        (nothing running, nothing to lose), which our rows, claiming the next job in the same
        call, never offer. A wave later it kills anyway."""
        deadline = time.monotonic() + self.demo.opts.give_up_after_s
        near = kill_at - self.demo.opts.workers
        while True:
            snap = await asyncio.to_thread(self._read)
            counts = snap.counts()
            done = counts["done"]
            if done >= kill_at and (
                counts["running"] > 0 or done >= near + 2 * self.demo.opts.workers
            ):
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.run.backend}: {done} done, never reached {kill_at}")
            await asyncio.sleep(NEAR_KILL_POLL_S if done >= near else POLL_S)

    def _note_kill(self, snap: ledger.Snapshot) -> None:
        run, counts = self.run, snap.counts()
        run.done_before_kill, run.failed_before_kill = counts["done"], counts["failed"]
        run.in_flight_at_kill = counts["running"]
        run.queued_at_kill = run.submitted - sum(counts.values())
        run.submitted_after_kill = 0  # every job was on the queue before the kill
        self.scene.orphans = sorted(snap.running())

    async def _until_settled(self, at_kill: ledger.Snapshot, held_at_kill: int) -> None:
        """Until every job has ended, or (Redis broker) only the dead worker's unacked are left;
        notes the recovery time when every job in flight at the kill has ended again."""
        run = self.run
        deadline = time.monotonic() + self.demo.opts.give_up_after_s
        while True:
            snap = await asyncio.to_thread(self._read)
            self._note_recovery(snap, at_kill)
            counts = snap.counts()
            if counts["done"] + counts["failed"] >= run.submitted:
                return
            if self.engine.holds_until_timeout and await asyncio.to_thread(
                self._idle_but_held, snap, at_kill, held_at_kill
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{run.backend}: gave up after {self.demo.opts.give_up_after_s:g} s "
                    f"({counts['done']} done, {counts['running']} running of {run.submitted})"
                )
            await asyncio.sleep(POLL_S)

    def _idle_but_held(self, snap: ledger.Snapshot, at_kill: ledger.Snapshot, held: int) -> bool:
        """The queue is empty, the new worker runs nothing, and what the broker still holds
        unacked is no more than the dead worker's."""
        restarted_running = [
            i for i in snap.running() if snap.starts.get(i, 0) > at_kill.starts.get(i, 0)
        ]
        return (
            not restarted_running
            and ready_on_redis(self.broker, self.queue) == 0
            and len(self._unacked()) <= held
        )

    def _note_recovery(self, snap: ledger.Snapshot, at_kill: ledger.Snapshot) -> None:
        orphans = self.scene.orphans
        if self.run.recovery_s is not None or not orphans:
            return
        again = [
            i
            for i in orphans
            if snap.status.get(i) in ("done", "failed")
            and snap.starts.get(i, 0) > at_kill.starts.get(i, 0)
        ]
        if len(again) == len(orphans):
            self.run.recovery_s = round(time.time() - self.scene.kill_wall, 2)


async def start_engines(demo: Demo) -> tuple[Rows, Callable[[], None]]:
    """The engine rows of ``demo``, with RabbitMQ when a chosen row needs it (``AMQP_URL``, else
    a private node: :func:`apps.engines.rabbit_node.resolve_rabbit`); returns them and what
    stops that node."""
    # every row waits on blocking calls in threads (a child's ready line, a reap): with seven rows
    # the default pool (cores + 4 threads) runs out and the kill-mark readings queue behind them
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
    rabbit: RabbitNode | NoRabbit | None = None
    chosen = [SCENARIOS[k] for k in demo.opts.scenarios if SCENARIOS[k].backend == "engine"]
    if any(ENGINES[sc.engine].needs_rabbit for sc in chosen):
        try:
            rabbit = await asyncio.to_thread(resolve_rabbit)
            demo.state.rabbit = rabbit.description
        except NoRabbit as exc:
            rabbit = exc
            demo.state.rabbit = f"none: {exc}"
    node = rabbit if isinstance(rabbit, RabbitNode) else None
    return Rows(demo, rabbit), (node.stop if node is not None else lambda: None)
