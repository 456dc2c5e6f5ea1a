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
    (``ours``: our runner; ``stock-arq``: arq's own, unmodified Worker)."""

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


@dataclass
class Options:
    jobs: int = 100
    kill_after: float = 0.25
    latency_ms: float = 200
    workers: int = 5
    scenarios: tuple[str, ...] = ("inmemory", "durable", "stock-arq")
    svg: Path | None = Path("crash-demo.svg")
    redis: str = "auto"  # auto | redis-server | embedded
    allow_nonempty_db: bool = False  # run on a REDIS_URL database holding other data


@dataclass
class Run:
    """The live state and the result of one scenario (also what ``--json`` prints)."""

    backend: str
    label: str
    submitted: int = 0
    phase: str = "starting"
    done_before_kill: int = 0
    queued_at_kill: int = 0
    in_flight_at_kill: int = 0
    done_after_restart: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0  # deliveries beyond the first of a job, at the witness
    effects: int = 0  # effects the witness applied (POST /infer honours Idempotency-Key)
    fetched_by_upstream: int = 0
    unknown_after_restart: int = 0
    recovery_s: float | None = None
    kill_t: float | None = None
    restart_t: float | None = None
    timeline: list[list[float]] = field(default_factory=list)  # [t, done], from [0, 0]
    error: str | None = None
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
    upstream: str = ""
    started: float = field(default_factory=time.time)
    runs: dict[str, Run] = field(default_factory=dict)
    finished: bool = False

    def t(self) -> float:
        return round(time.time() - self.started, 3)

    def snapshot(self) -> dict[str, Any]:
        return {
            "redis": self.redis,
            "upstream": self.upstream,
            "elapsed_s": self.t(),
            "finished": self.finished,
            "jobs": self.options.jobs,
            "runs": [r.to_dict() for r in self.runs.values()],
        }
