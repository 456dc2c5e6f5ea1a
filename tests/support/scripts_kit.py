"""The kit of the direct script tests (``tests/test_scripts_*.py``): each Lua script of
``durable/lua`` called exactly as its Python caller calls it, against the private redis-server.

Every KEYS/ARGV layout comes from the caller's own code (``producer.enqueue_call``,
``producer.cancel_call``, the worker's ``claims.claim``, ``finisher.finish_call``,
``leases.release`` and ``leases.heartbeat_call``, the ``Trimmer``'s ``trim``,
``flow_store.admin``, ``arq_compat.record``), never re-derived here: a caller and a script that
disagree on a layout fail these tests.

A contract check is a plain ``async def test_...(lua: Lua)`` registered with :func:`contract` under
the scripts whose contract it states. pytest runs it once on the scripts as shipped;
``test_scripts_mutations.py`` runs the same functions on deliberately broken copies (``Scripts(redis,
overrides=...)``) and requires that at least one of them fails. So a check takes only ``lua`` and
starts from an empty Redis.

The private redis-server runs with ``appendfsync always`` for the crash tests; while a check runs
it is set to ``everysec`` (these tests are about the scripts' logic, and run about 3x faster), then put
back.

Time: every script reads Redis's ``TIME``. Checks read it too (:meth:`Lua.now_ms`) before and after
a call and bound what the script wrote between the two; nothing waits on the wall clock.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis

from durable import flow_store, keys, producer
from durable.arq_compat import record as outcome_record
from durable.budget import Trimmer
from durable.claims import ClaimReply
from durable.endings import finish_call
from durable.runner import Claimed, DurableWorker
from durable.scripts import Scripts
from pipeline.budget import Budget
from pipeline.jobs import FlowLimit, Job, Outcome, Status
from pipeline.retry import Decision
from pipeline.settings import Settings
from tests.support.helpers import async_wait_until, need_redis_server

Check = Callable[["Lua"], Awaitable[None]]

# script name -> {check name: check}. A lib's checks are those of every script that includes it.
CONTRACTS: dict[str, dict[str, Check]] = {}

MAXSIZE = 50
RESULT_TTL = 600  # s: a finished record's TTL in these tests
HEARTBEAT_TTL_MS = 3000
OOM_MAXMEMORY = "1"  # bytes: any write refused with OOM (noeviction) unless the script allows it


def contract(*scripts: str) -> Callable[[Check], Check]:
    """Register a check as part of the contract of ``scripts`` (names as in ``Scripts``)."""

    def register(check: Check) -> Check:
        assert check.__doc__, f"{check.__name__}: a contract check says in its docstring what holds"
        for name in scripts:
            CONTRACTS.setdefault(name, {})[check.__name__] = check
        return check

    return register


@functools.cache
def settings_for(url: str, flow_limits: str = "") -> Settings:
    """The settings of every caller in these tests (built once: pydantic-settings is slow)."""
    return Settings.from_env(
        {},
        queue_backend="durable",
        redis_url=url,
        queue_maxsize=MAXSIZE,
        max_tries=3,
        result_ttl=RESULT_TTL,
        heartbeat_interval=1.0,
        heartbeat_ttl=HEARTBEAT_TTL_MS / 1000,
        flow_limits=flow_limits,
    )


async def _no_fetch(job: Job, attempt: int) -> Outcome:
    raise AssertionError("the script tests never fetch")


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Beat:
    """A heartbeat's reply, decoded."""

    gone: list[str]
    orphans: dict[str, str]
    deadline: float | None
    unlisted: dict[str, str]


@dataclass
class Finished:
    """A finish call's reply: written (1, 2 already, 0 fenced), the claim round, and the budget
    state (kept body bytes, finished records; lib/budget.lua)."""

    written: int
    round: ClaimReply
    budget: tuple[int, int] = (0, 0)


@dataclass
class Lua:
    """The scripts (as shipped, or a broken copy) on one flushed Redis, and their callers."""

    redis: Redis
    scripts: Scripts
    settings: Settings
    url: str
    jobs: dict[str, Job] = field(default_factory=dict)
    _arq: ArqRedis | None = None
    _seq: int = 0
    last_budget: tuple[int, int] = (0, 0)  # the last finish call's budget state

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, overrides: dict[str, str] | None = None) -> AsyncIterator[Lua]:
        need_redis_server()
        redis = Redis.from_url(url)
        lua: Lua | None = None
        fsync = (await redis.config_get("appendfsync")).get("appendfsync")
        try:
            if fsync == "always":  # durability is not what these test
                await redis.config_set("appendfsync", "everysec")
            scripts = Scripts(redis, overrides)
            await scripts.load()
            lua = cls(redis, scripts, settings_for(url), url)
            await lua.reset()
            yield lua
        finally:
            if lua is not None and lua._arq is not None:
                await lua._arq.aclose()
            if fsync == "always":
                await redis.config_set("appendfsync", fsync)
            await redis.aclose()

    async def reset(self) -> None:
        """An empty Redis again (the scripts stay loaded: FLUSHALL keeps the script cache)."""
        await self.redis.flushall()
        self.jobs.clear()
        self._seq = 0

    # -- jobs and workers -------------------------------------------------------------------------
    def job(self, **fields: Any) -> Job:
        """A new job (a fresh id, host a.example unless told)."""
        self._seq += 1
        fields.setdefault("url", f"https://a.example/{self._seq}")
        fields.setdefault("id", f"job-{self._seq}")
        job = Job(**fields)
        self.jobs[job.id] = job
        return job

    def worker(self) -> DurableWorker:
        """A worker object used only as the caller of the scripts (never run)."""
        w = DurableWorker(self.settings, _no_fetch)
        w.redis = self.redis
        w.scripts = self.scripts
        return w

    @property
    def arq(self) -> ArqRedis:
        """arq's own client on the same Redis (jobs enqueued the stock way: "foreign")."""
        if self._arq is None:
            self._arq = ArqRedis.from_url(self.url)
        return self._arq

    async def arq_enqueue(self, job: Job, **kwargs: Any) -> None:
        """Enqueue ``job`` with arq's own client, as an arq user would."""
        self.jobs[job.id] = job
        enqueued = await self.arq.enqueue_job(
            keys.FUNCTION, job.to_dict(), _job_id=job.id, **kwargs
        )
        assert enqueued is not None
        if not kwargs:  # arq scores it now, rounded to the nearest ms: due once Redis gets there
            score = await self.redis.zscore(keys.QUEUE, job.id)
            assert score is not None

            async def due() -> bool:
                return await self.now_ms() >= score

            await async_wait_until(due, 1.0, f"Redis's clock to reach {job.id}'s score", 0.001)

    # -- the scripts, called as their callers call them ---------------------------------------------
    async def submit(
        self, job: Job, mode: str = "submit", maxsize: int = MAXSIZE
    ) -> tuple[int, str]:
        """``enqueue.lua`` with ``producer.enqueue_call``'s layout."""
        job_keys, args = producer.enqueue_call(job, mode, maxsize)
        code, status = await self.scripts["enqueue"](job_keys, args)
        return int(code), text(status)

    async def submit_new(self, **fields: Any) -> Job:
        """A new job, enqueued."""
        job = self.job(**fields)
        code, status = await self.submit(job)
        assert code == 1, (code, status)
        return job

    async def alive(self, worker: DurableWorker) -> None:
        """Give ``worker`` a lease deadline an hour ahead unless it has one (a lapsed worker claims
        nothing: claim.lua and finish.lua check the claimer's own deadline). A test that lapses a
        worker on purpose sets its deadline itself, which this leaves alone."""
        deadline = await self.now_ms() + 3_600_000
        await self.redis.zadd(keys.WORKERS, {worker.worker_id: deadline}, nx=True)

    async def claim(
        self, worker: DurableWorker, candidates: list[str], most: int = 0
    ) -> ClaimReply:
        """``claim.lua`` with the worker's own call (``Claims.claim``)."""
        await self.alive(worker)
        return await worker.claims.claim(most or max(len(candidates), 1), candidates)

    async def claim_one(self, worker: DurableWorker, job: Job) -> Claimed:
        round_ = await self.claim(worker, [job.id])
        assert [c.job_id for c in round_.claimed] == [job.id], round_
        return round_.claimed[0]

    async def finish(
        self,
        worker: DurableWorker,
        claimed: Claimed,
        end: str = "done",
        outcome: Outcome | None = None,
        *,
        delay_s: float = 0.0,
        throttle_s: float | None = None,
        timed: bool = True,
        candidates: Iterable[str] = (),
        claim_next: bool = True,
    ) -> Finished:
        """``finish.lua`` with the worker's own layout (``Finisher.finish_call`` and
        ``Claims.claim_args``), as ``Finisher.finish`` sends it."""
        job = self.jobs.get(claimed.job_id) or Job(url="", id=claimed.job_id)
        outcome = outcome or default_outcome(end, claimed.attempt)
        decision = Decision(end, delay_s, throttle_s)  # type: ignore[arg-type]
        await self.alive(worker)
        part = worker.finisher.finish_call(job, claimed, outcome, decision, timed)
        (written,), round_ = await self.finish_many(
            worker, [part], candidates, most=1 if claim_next else 0
        )
        return Finished(written, round_, self.last_budget)

    async def finish_many(
        self,
        worker: DurableWorker,
        parts: list[tuple[list[str], list[Any]]],
        candidates: Iterable[str] = (),
        most: int = 0,
    ) -> tuple[list[int], ClaimReply]:
        """``finish.lua`` recording several ends in one call (each part from
        ``Finisher.finish_call``), claiming up to ``most``, as ``durable.endings`` sends it."""
        await self.alive(worker)
        job_keys, args = finish_call(worker.state, worker.claims, parts, most, list(candidates))
        reply = await self.scripts["finish"](job_keys, args)
        kept_bytes, records = reply[4]
        self.last_budget = (int(kept_bytes), int(records))  # the budget state it answered
        return [int(w) for w in reply[0]], ClaimReply.parse(*reply[1:4])

    async def release(
        self, worker: DurableWorker, jobs: list[tuple[str, str]], why: str = "orphan"
    ) -> list[str]:
        """``release.lua`` with the worker's own call (``Leases.release``)."""
        return await worker.leases.release(jobs, why)

    async def heartbeat(self, worker: DurableWorker, held: list[tuple[str, str]]) -> Beat:
        """``heartbeat.lua`` with the worker's own call (``Leases.heartbeat_call``)."""
        gone, orphans, deadline, unlisted = await worker.leases.heartbeat_call(held)
        return Beat(
            [text(g) for g in gone],
            pairs(orphans),
            float(deadline) if deadline else None,
            pairs(unlisted),
        )

    async def cancel(self, job_id: str) -> tuple[int, str]:
        """``cancel.lua`` with ``producer.cancel_call``'s layout."""
        job_keys, args = producer.cancel_call(job_id, RESULT_TTL)
        code, status = await self.scripts["cancel"](job_keys, args)
        return int(code), text(status)

    async def trim(self, budget: Budget) -> bool:
        """``trim_results.lua`` as a worker's ``Trimmer`` calls it (from no known heads)."""
        return await Trimmer(budget).trim(self.scripts["trim_results"])

    async def admin(self, op: str, key: str, value: str = "") -> int:
        """``flow_admin.lua`` through ``flow_store.admin``."""
        return int(await flow_store.admin(self.scripts, op, key, value))

    async def outcome(self, job: Job, attempt: int, kind: str, outcome: Outcome | None) -> Any:
        """``outcome.lua`` through the stock-arq adapter's ``arq_compat.record``: its reply."""
        return await outcome_record(self.scripts, self.settings, job, attempt, kind, outcome)

    # -- flow state, written as its owners write it ----------------------------------------------
    async def limit(
        self,
        key: str,
        parallelism: int | None = None,
        rate: int | None = None,
        period_s: float = 1.0,
    ) -> None:
        """A run-time limit of ``key``, stored as ``PUT /flows/{key}`` stores it (no review)."""
        value = flow_store.encode(FlowLimit(parallelism, rate, period_s))
        await self.redis.hset(keys.FLOW_LIMITS, key, value)

    async def configure(self, limits: str) -> None:
        """``FLOW_LIMITS`` (JSON) seeded into Redis as every process does at start."""
        await flow_store.seed(self.redis, settings_for(self.url, flow_limits=limits))

    # -- reading ----------------------------------------------------------------------------------
    async def now_ms(self) -> int:
        """Redis's clock, in ms, as the scripts read it."""
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def record(self, job_id: str) -> dict[str, str]:
        return texts(await self.redis.hgetall(keys.RECORD + job_id))

    async def hash(self, key: str) -> dict[str, str]:
        return texts(await self.redis.hgetall(key))

    async def zset(self, key: str) -> dict[str, float]:
        return {text(m): s for m, s in await self.redis.zrange(key, 0, -1, withscores=True)}

    async def order(self, key: str) -> list[str]:
        return [text(m) for m in await self.redis.zrange(key, 0, -1)]

    async def stats(self) -> dict[str, int]:
        return {k: int(float(v)) for k, v in (await self.hash(keys.STATS)).items()}

    async def lease(self, job_id: str) -> str | None:
        raw = await self.redis.hget(keys.RUNNING, job_id)
        return None if raw is None else text(raw)

    async def parked(self) -> list[str]:
        """Members of ``qc:flow:parked`` ("key|score|id")."""
        return [text(m) for m in await self.redis.zrange(keys.FLOW_PARKED, 0, -1)]

    async def parked_ids(self, flow: str) -> list[str]:
        return [m.rsplit("|", 1)[1] for m in await self.parked() if m.split("|", 1)[0] == flow]

    async def queue_score(self, job_id: str) -> float | None:
        return await self.redis.zscore(keys.QUEUE, job_id)

    async def snapshot(self, *, without: Iterable[str] = ()) -> dict[str, Any]:
        """Every key and its value (not its TTL): "nothing changed" is an equal snapshot. The
        workers' deadlines are left out (``alive`` registers a claimer: not a job's state)."""
        skip = {*without, keys.WORKERS}
        out: dict[str, Any] = {}
        async for raw in self.redis.scan_iter(count=1000):
            name = text(raw)
            if name in skip:
                continue
            kind = text(await self.redis.type(raw))
            if kind == "string":
                out[name] = await self.redis.get(raw)
            elif kind == "hash":
                out[name] = await self.redis.hgetall(raw)
            elif kind == "zset":
                out[name] = await self.redis.zrange(raw, 0, -1, withscores=True)
            elif kind == "set":
                out[name] = await self.redis.smembers(raw)
            else:
                out[name] = await self.redis.lrange(raw, 0, -1)
        return out

    @contextlib.asynccontextmanager
    async def out_of_memory(self) -> AsyncIterator[None]:
        """Redis refusing writes (maxmemory reached, noeviction) for the block."""
        before = await self.redis.config_get("maxmemory*")
        await self.redis.config_set("maxmemory-policy", "noeviction")
        await self.redis.config_set("maxmemory", OOM_MAXMEMORY)
        try:
            yield
        finally:
            await self.redis.config_set("maxmemory", before["maxmemory"])
            await self.redis.config_set("maxmemory-policy", before["maxmemory-policy"])


def texts(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def pairs(flat: list[Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def default_outcome(end: str, attempt: int) -> Outcome:
    if end == "done":
        return Outcome(
            Status.DONE,
            http_status=200,
            bytes=5,
            elapsed_s=0.042,
            attempts=attempt,
            headers={"content-type": "text/plain"},
            body=b"hello",
        )
    return Outcome(
        Status.FAILED,
        http_status=503,
        elapsed_s=0.3,
        attempts=attempt,
        error="HTTP 503",
        retryable=end == "retry",
        body=b"busy",
    )


def token(claimed: Claimed, worker: DurableWorker) -> str:
    """The lease token ``worker|attempt|`` the worker fences its writes with."""
    return f"{worker.worker_id}|{claimed.attempt}|"


def pad(n: float) -> str:
    """lib/flow.lua's fixed-width number in lex members."""
    return f"{n:017.3f}"


def between(low: float, value: float | None, high: float) -> bool:
    return value is not None and low <= value <= high
