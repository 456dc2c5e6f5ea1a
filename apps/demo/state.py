"""The crash demo's state: its options, its scenarios, and each scenario's live counts.

Plain data, shared by the run (``apps.demo.run``), the terminal view and the web page.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scenario:
    """One column of the demo: a backend, and for durable which worker engine runs the jobs
    (``ours``: our runner; ``stock-arq``: arq's own, unmodified Worker). Backend ``engine`` is a
    comparison row run by ``apps.demo.engine_rows`` (Celery or RabbitMQ, ``apps.engines``):
    ``engine`` names it there, and ``db_offset`` is its ledger's database (a Redis broker's is
    the next one)."""

    key: str
    label: str
    backend: str
    engine: str = "ours"
    db_offset: int = 0

    @property
    def kills(self) -> str:
        return "serve" if self.backend == "inmemory" else "worker"


SCENARIOS = {
    "inmemory": Scenario("inmemory", "inmemory (asyncio.Queue)", "inmemory"),
    "durable": Scenario("durable", "durable (our runner, leases)", "durable"),
    "stock-arq": Scenario("stock-arq", "durable on stock arq's Worker", "durable", "stock-arq", 1),
}
DEFAULT_SCENARIOS = tuple(SCENARIOS)  # what runs without --backend
# the article's other answers (apps.engines), run with --backend NAME or --backend all
ENGINE_SCENARIOS = {
    "celery": Scenario("celery", "Celery defaults (Redis)", "engine", "celery", 2),
    "celery-acks-late": Scenario(
        "celery-acks-late", "Celery acks_late (Redis)", "engine", "celery-acks-late", 4
    ),
    "celery-acks-late-amqp": Scenario(
        "celery-acks-late-amqp",
        "Celery acks_late (RabbitMQ)",
        "engine",
        "celery-acks-late-amqp",
        6,
    ),
    "rabbitmq": Scenario("rabbitmq", "RabbitMQ quorum queue", "engine", "rabbitmq", 7),
}
SCENARIOS.update(ENGINE_SCENARIOS)


@dataclass
class Options:
    jobs: int = 100
    kill_after: float = 0.25
    latency_ms: float = 200
    workers: int = 5
    scenarios: tuple[str, ...] = ("inmemory", "durable", "stock-arq")
    svg: Path | None = Path("crash-demo.svg")
    redis: str = "auto"  # auto | redis-server | embedded
    give_up_after_s: float = 90.0  # longest wait for the kill mark, the finish or the recovery
    allow_nonempty_db: bool = False  # run on a REDIS_URL database holding other data


@dataclass
class Run:
    """The live state and the result of one scenario (also what ``--json`` prints).

    The ``*_at_kill`` counts and ``done_before_kill``/``failed_before_kill`` are one snapshot
    taken at the kill, while no job was being submitted, so they add up:
    ``done_before_kill + failed_before_kill + queued_at_kill + in_flight_at_kill +
    submitted_after_kill == submitted``; and after the restart ``completed ==
    done_before_kill + done_after_restart`` and ``lost == submitted - completed - failed``.
    A count stays ``None`` until it is measured, so a scenario that ended in ``error`` shows
    what it never measured as null, never as 0."""

    backend: str
    label: str
    submitted: int = 0  # jobs the API accepted (202), counted live
    phase: str = "starting"
    done_before_kill: int | None = None  # jobs done at the kill
    failed_before_kill: int | None = None  # jobs failed for good at the kill
    queued_at_kill: int | None = None  # accepted, waiting in the queue at the kill
    in_flight_at_kill: int | None = None  # held by the killed process's workers at the kill
    submitted_after_kill: int | None = None  # accepted after the kill (durable: the API lives on)
    done_after_restart: int | None = None  # completed - done_before_kill
    completed: int | None = None  # jobs done in the end
    failed: int | None = None  # jobs failed for good in the end
    lost: int | None = None  # submitted - completed - failed
    duplicates: int | None = None  # deliveries beyond the first of a job, at the witness
    effects: int | None = None  # effects the witness applied (POST /infer honours Idempotency-Key)
    fetched_by_upstream: int | None = None
    unknown_after_restart: int | None = None
    never_submitted: int | None = None  # jobs the demo never got to submit (inmemory: API gone)
    recovery_s: float | None = None
    kill_t: float | None = None
    restart_t: float | None = None
    timeline: list[list[float]] = field(default_factory=list)  # [t, done], from [0, 0]
    error: str | None = None  # why the scenario could not run to the end: one line
    error_output: list[str] = field(default_factory=list)  # a dead child's last output lines
    skipped: str | None = None  # why a comparison row could not run here (no RabbitMQ): no counts
    held: int | None = None  # Redis broker: unacked jobs waiting out the visibility timeout
    visibility_timeout_s: float | None = None  # the Redis broker's, for the rows that have one
    runs: str = ""  # how a comparison row's workers run the async fetch
    t0: float = field(default_factory=time.time)  # timeline, kill_t, restart_t count from here
    base: dict[str, Any] = field(default_factory=dict)  # /stats before submitting (older jobs)

    def t(self) -> float:
        """Seconds since this scenario started submitting."""
        return round(time.time() - self.t0, 3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DemoState:
    """Everything a progress display (or a web page) needs, updated while the demo runs."""

    options: Options
    redis: str = ""
    rabbit: str = ""  # the RabbitMQ the comparison rows used, or why there was none
    upstream: str = ""
    started: float = field(default_factory=time.time)
    runs: dict[str, Run] = field(default_factory=dict)
    finished: bool = False

    def t(self) -> float:
        return round(time.time() - self.started, 3)

    def snapshot(self) -> dict[str, Any]:
        return {
            "redis": self.redis,
            "rabbit": self.rabbit,
            "upstream": self.upstream,
            "elapsed_s": self.t(),
            "finished": self.finished,
            "jobs": self.options.jobs,
            "runs": [r.to_dict() for r in self.runs.values()],
        }
