"""A deliberately broken copy of each script fails its contract checks.

Each mutation below is a one-line slip someone could plausibly make (and a reviewer miss) in a
script of ``durable/lua`` or a lib of ``durable/lua/lib``; ``why`` says why it is plausible. The
test loads the broken copy with ``Scripts(redis, overrides=...)`` and runs the contract checks of
every script that contains the broken file (the functions of ``tests/test_scripts_*.py``
registered with ``scripts_kit.contract``), each on a flushed Redis, until one fails. A mutation
that no check notices is a hole in the tests: this test then fails, naming it.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from durable.scripts import INCLUDE, NAMES
from tests.support.scripts_kit import CONTRACTS, Check, Lua

# every module of contract checks registers its checks when imported
for _path in sorted(Path(__file__).parent.glob("test_scripts_*.py")):
    if _path.stem != Path(__file__).stem:
        importlib.import_module(f"tests.{_path.stem}")

LUA = resources.files("durable").joinpath("lua")
LIBS = sorted(f"lib/{p.name}" for p in LUA.joinpath("lib").iterdir() if p.name.endswith(".lua"))


@dataclass(frozen=True)
class Mutation:
    file: str  # a script name ("finish") or a lib ("lib/flow.lua")
    old: str  # exact text, found once in the file
    new: str
    why: str

    @property
    def path(self) -> str:
        return self.file if "/" in self.file else f"{self.file}.lua"

    def original(self) -> str:
        return LUA.joinpath(self.path).read_text(encoding="utf-8")

    def broken(self) -> str:
        return self.original().replace(self.old, self.new)

    def scripts(self) -> list[str]:
        """The scripts this file is part of."""
        if "/" not in self.file:
            return [self.file]
        return [n for n in NAMES if self.file in INCLUDE.findall(script_text(n))]


def script_text(name: str) -> str:
    return LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")


M = Mutation
MUTATIONS = [
    # -- enqueue.lua --------------------------------------------------------------------------
    M(
        "enqueue_batch",
        "elseif queued >= maxsize then",
        "elseif queued > maxsize then",
        "off by one in a batch's backpressure: one job over QUEUE_MAXSIZE",
    ),
    M(
        "enqueue_batch",
        "    queued = queued + 1\n",
        "",
        "the count taken once and never updated: a batch fills the queue past its bound",
    ),
    M(
        "enqueue_batch",
        "  + redis.call('ZCARD', K.flow_parked)\n",
        "",
        "jobs parked by flow control forgotten in a batch's queue count",
    ),
    M(
        "enqueue_batch",
        "local score = priority * SPAN + seq",
        "local score = priority * SPAN + i",
        "a batch scores by its own position, not the submission sequence: order across batches lost",
    ),
    M(
        "enqueue",
        "if queued >= maxsize then",
        "if queued > maxsize then",
        "off by one in backpressure: the queue takes one job over QUEUE_MAXSIZE",
    ),
    M(
        "enqueue",
        "  + redis.call('ZCARD', K.flow_parked)\n",
        "",
        "jobs parked by flow control forgotten in the queue count (they are off arq:queue)",
    ),
    M(
        "enqueue",
        "'(' .. RUNNING_SCORE",
        "'+inf'",
        "running jobs (still in arq:queue at RUNNING_SCORE) counted as waiting",
    ),
    M(
        "enqueue",
        "local score = priority * SPAN + seq",
        "local score = seq * SPAN + priority",
        "the two factors of the score swapped: submission order beats priority",
    ),
    M(
        "enqueue",
        "if redis.call('EXISTS', K.job) == 1 or redis.call('EXISTS', K.in_progress) == 1 then\n"
        "    return {-2, ''}",
        "if redis.call('EXISTS', K.job) == 1 then\n    return {-2, ''}",
        "the requeue guard checks arq's job key only, not a stock worker's in-progress key",
    ),
    M(
        "enqueue",
        "  redis.call('HDEL', K.dead, id)\n",
        "",
        "a requeue that leaves the dead letter behind (it could be requeued twice)",
    ),
    M(
        "enqueue",
        "if run_at_ms ~= '' and tonumber(run_at_ms) > now then",
        "if run_at_ms ~= '' and tonumber(run_at_ms) < now then",
        "the run_at comparison inverted",
    ),
    # -- claim.lua ------------------------------------------------------------------------------
    M(
        "claim",
        "local FIXED_KEYS = 16 ",
        "local FIXED_KEYS = 14 ",
        "the fixed keys miscounted (16, so the candidates' keys start at 17): wrong KEYS read",
    ),
    M(
        "claim",
        "tonumber(ARGV[3]), tonumber(ARGV[4])\n",
        "tonumber(ARGV[4]), tonumber(ARGV[3])\n",
        "two ARGV positions swapped: in-progress TTL and default max tries",
    ),
    # -- lib/claim.lua ----------------------------------------------------------------------------
    M(
        "lib/claim.lua",
        "  redis.call('ZADD', K.queue, RUNNING_SCORE, id)\n",
        "",
        "a leased job left at its due score in arq's queue (a stock arq worker would run it)",
    ),
    M(
        "lib/claim.lua",
        "\n       and redis.call('EXISTS', kp) == 0 then",
        " then",
        "the stock-arq in-progress check dropped: a job a stock arq worker runs is run twice",
    ),
    M(
        "lib/claim.lua",
        "redis.call('HEXISTS', K.running, id) == 0\n",
        "true\n",
        "the lease check dropped, trusting the RUNNING_SCORE alone",
    ),
    M(
        "lib/claim.lua",
        "if ahead and ahead < tonumber(score) then",
        "if ahead and ahead > tonumber(score) then",
        "the FIFO-within-a-key comparison inverted",
    ),
    M(
        "lib/claim.lua",
        "return attempt, attempt > most,",
        "return attempt, attempt >= most,",
        "off by one: the last allowed attempt flagged exhausted",
    ),
    M(
        "lib/claim.lua",
        "local score = redis.call('HGET', K.delayed_score, id) or DEFAULT_SCORE",
        "local score = DEFAULT_SCORE",
        "a promoted job loses its priority and place",
    ),
    M(
        "lib/claim.lua",
        "return redis.call('ZRANGEBYSCORE', K.queue, '-inf', now, 'LIMIT', 0, n)",
        "return redis.call('ZRANGEBYSCORE', K.queue, '-inf', '+inf', 'LIMIT', 0, n)",
        "candidates not bounded by now: running and deferred jobs named as candidates",
    ),
    M(
        "lib/claim.lua",
        "if rated and not exhausted then",
        "if false then",
        "the ZADD of a rate-limited start skipped: the rate is never reached",
    ),
    M(
        "lib/claim.lua",
        "if rated and not exhausted then",
        "if rated then",
        "an exhausted job (failed without a fetch) takes a start of its key's rate",
    ),
    M(
        "lib/claim.lua",
        "    redis.call('HDEL', kr, 'released')\n",
        "",
        "the released mark kept: every later claim counts another duplicate",
    ),
    M(
        "lib/claim.lua",
        "for _, z in ipairs({K.scheduled, K.retry, K.flow_waiting}) do",
        "for _, z in ipairs({K.scheduled, K.retry}) do",
        "next due forgets flow-waiting keys: an idle worker sleeps through a key's recheck",
    ),
    M(
        "lib/claim.lua",
        "  if not known[1] then",
        "  if known[1] then",
        "the foreign test turned around: our jobs flagged foreign, arq's left bare",
    ),
    # -- finish.lua -----------------------------------------------------------------------------
    M(
        "finish",
        "if not held or string.sub(held, 1, #token) ~= token then",
        "if not held then",
        "the lease check dropped: a worker that lost its lease still writes (no fencing)",
    ),
    M(
        "finish",
        "  else\n    redis.call('ZREM', K.queue, id)\n",
        "  else\n",
        "a final end that forgets to take the job off arq's queue",
    ),
    M(
        "finish",
        "    redis.call('HSET', K.delayed_score, id, score)\n",
        "",
        "a retry that does not keep its score: promoted back without its priority",
    ),
    M(
        "finish",
        "    if redis.call('HGET', J.record, 'last_token') == token then return 2 end\n",
        "",
        "a repeated finish after a lost reply counted as fenced",
    ),
    M(
        "finish",
        "if not before or before < until_ms then",
        "if not before or before > until_ms then",
        "the throttle comparison inverted: a shorter throttle shortens a longer one",
    ),
    M(
        "finish",
        "now - tonumber(record_ttl_s) * 1000,",
        "now - tonumber(record_ttl_s),",
        "seconds used as ms: records younger than their TTL leave the job index",
    ),
    M(
        "finish",
        "  flow_ended(fk, now)\n  return 1\n",
        "  return 1\n",
        "the flow slot never freed: a key at its parallelism stays full",
    ),
    M(
        "finish",
        "local FIXED_KEYS = 23 ",
        "local FIXED_KEYS = 21 ",
        "the fixed keys miscounted: the next claim's candidate keys read from the wrong KEYS index",
    ),
    M(
        "finish",
        "    if not live then redis.call('ZREM', K.index, old) end\n",
        "    redis.call('ZREM', K.index, old)\n",
        "pruning by finish time alone: a requeued dead letter vanishes from GET /jobs",
    ),
    M(
        "finish",
        "    redis.call('EXPIRE', J.record, record_ttl_s)\n",
        "",
        "a final record that never expires",
    ),
    M(
        "finish",
        "FIXED_KEYS + 1 + i * JOB_KEYS)",
        "FIXED_KEYS + 1)",
        "several ends in one call all written to the first end's keys",
    ),
    M(
        "finish",
        "for i = 0, ended - 1 do",
        "for i = 0, math.min(ended, 1) - 1 do",
        "only the first of several ends in one call recorded",
    ),
    M(
        "finish",
        "  for bucket, n in pairs(durations) do redis.call('HINCRBY', K.durations, bucket, n) end\n",
        "",
        "the ends of one call summed but never added to the durations histogram",
    ),
    M(
        "finish",
        "for name, n in pairs(counts) do redis.call('HINCRBY', K.stats, name, n) end\n",
        "",
        "the ends of one call counted but never added to the counters",
    ),
    # -- release.lua ----------------------------------------------------------------------------
    M(
        "release",
        "if held and string.sub(held, 1, #token) == token then",
        "if held then",
        "the token check dropped: a re-claimed job is taken from its new holder",
    ),
    M(
        "release",
        "'^[^|]*|[^|]*|([^|]*)|(.*)$'",
        "'^[^|]*|([^|]*)|[^|]*|(.*)$'",
        "the lease's fields read one off: back in the queue at its attempt number",
    ),
    M(
        "release",
        "'status', 'queued', 'released', '1'",
        "'status', 'queued'",
        "the released mark forgotten: the re-delivery is not counted a duplicate",
    ),
    M(
        "release",
        "why == 'orphan' and 'recovered' or 'released'",
        "why == 'shutdown' and 'recovered' or 'released'",
        "the two reasons' counters swapped",
    ),
    M(
        "release",
        "  k = k + 2\n",
        "",
        "the per-job KEYS pointer not advanced: every job uses the first job's keys",
    ),
    # -- heartbeat.lua --------------------------------------------------------------------------
    M(
        "heartbeat",
        "#!lua flags=allow-oom\n",
        "#!lua\n",
        "the allow-oom flag dropped: a full Redis lets every lease lapse",
    ),
    M(
        "heartbeat",
        "    if deadline < now then",
        "    if deadline > now then",
        "the orphan comparison inverted: live workers' jobs released",
    ),
    M(
        "heartbeat",
        "  if holders[wid] == nil then\n    redis.call('ZREM', K.workers, wid)",
        "  if true then\n    redis.call('ZREM', K.workers, wid)",
        "workers forgotten while they still hold leases",
    ),
    M(
        "heartbeat",
        "if not held or string.sub(held, 1, #token) ~= token then",
        "if not held then",
        "a re-claimed lease not reported gone: two workers fetch the job",
    ),
    M(
        "heartbeat",
        "local FORGET_AFTER_MS = 60000 ",
        "local FORGET_AFTER_MS = 6000 ",
        "a minute written as 6 s: workers forgotten while barely lapsed",
    ),
    M(
        "heartbeat",
        "    if not listed[entries[i]] then",
        "    if listed[entries[i]] then",
        "unlisted test inverted: the worker is told to release the jobs it runs",
    ),
    # -- cancel.lua -----------------------------------------------------------------------------
    M(
        "cancel",
        "if held then\n  flow_ended(fk, now)",
        "if held then\n  flow_review(fk, now)",
        "a cancelled running job's flow slot not freed",
    ),
    M(
        "cancel",
        "  redis.call('ZREM', K.flow_parked, fk .. '|' .. pad(parked_score) .. '|' .. id)\n",
        "",
        "a cancelled parked job left in the parking (it would run later)",
    ),
    M(
        "cancel",
        "  redis.call('PUBLISH', cancel_channel, id)\n",
        "",
        "the worker of a cancelled running job never told",
    ),
    M(
        "cancel",
        "if status == 'done' or status == 'failed' then",
        "if status == 'done' then",
        "a failed job cancelled: its dead letter's record said cancelled",
    ),
    M(
        "cancel",
        "  if not redis.call('ZSCORE', K.queue, id) then return {-1, ''} end\n  status = 'queued'",
        "  return {-1, ''}",
        "an arq-enqueued (record-less) job taken for unknown",
    ),
    # -- flow_admin.lua -------------------------------------------------------------------------
    M(
        "flow_admin",
        "  if configured then",
        "  if false then",
        "no tombstone: deleting a configured limit brings FLOW_LIMITS' back",
    ),
    M(
        "flow_admin",
        "  redis.call('HDEL', K.flow_throttled, fk)\n",
        "",
        "resume that leaves an upstream's throttle in place",
    ),
    M(
        "flow_admin",
        "if fk == '*' then",
        "if fk == '' then",
        "a default change reviews only the '*' key itself",
    ),
    M(
        "flow_admin",
        "else\n  flow_review(fk, now)\nend",
        "end",
        "a limit change without a review: parked jobs wait for the next recheck",
    ),
    # -- outcome.lua ----------------------------------------------------------------------------
    M(
        "outcome",
        "if kind == 'queued' then",
        "if kind == 'retry' then",
        "the adapter's 'queued' (a retry) mistaken for a final end",
    ),
    M(
        "outcome",
        "if kind == 'failed' and dead_letter ~= '' then",
        "if kind == 'failed' and dead_letter == '' then",
        "the dead-letter test inverted: failed jobs leave no letter",
    ),
    M(
        "outcome",
        "if kind == 'running' then return 1 end\n",
        "",
        "a running record treated as an end: counted, expiring",
    ),
    # -- lib/time.lua -----------------------------------------------------------------------------
    M(
        "lib/time.lua",
        "return tonumber(t[1]) * 1000 + ",
        "return tonumber(t[1]) + ",
        "TIME's seconds taken as ms: every time a script keeps is decades in the past",
    ),
    # -- trim_results.lua and lib/budget.lua ----------------------------------------------------
    M(
        "trim_results",
        "  if not status or is_final(status) then\n",
        "  if true then\n",
        "a record dropped without asking whether its job lives again (a re-queued dead letter)",
    ),
    M(
        "trim_results",
        "    redis.call('HSET', record, 'body_dropped', 'space')\n",
        "",
        "a body dropped silently: its record does not say why GET /jobs/{id}/result has none",
    ),
    M(
        "trim_results",
        "  while state[1] > byte_low do",
        "  while state[1] > byte_budget do",
        "a trim stops at the budget, not its low water: one trim per job once it is full",
    ),
    M(
        "lib/budget.lua",
        "'kept_body_bytes', -tonumber(size))",
        "'kept_body_bytes', tonumber(size))",
        "a forgotten body's bytes added to the sum instead of taken from it",
    ),
    M(
        "lib/budget.lua",
        "  if size > 0 then",
        "  if size >= 0 then",
        "a finished job without a body listed among the kept bodies",
    ),
    M(
        "lib/budget.lua",
        "          redis.call('ZCARD', K.finished)}",
        "          redis.call('ZCARD', K.kept)}",
        "the record count read from the kept bodies, not the finished records",
    ),
    # -- lib/flow.lua -----------------------------------------------------------------------------
    M(
        "lib/flow.lua",
        "'(' .. fk .. '|' .. pad(now - period) .. '|~'",
        "'(' .. fk .. '|' .. pad(now - period - 1) .. '|~'",
        "off by one in the window: a start exactly one period ago still counted",
    ),
    M(
        "lib/flow.lua",
        "'LIMIT', n - r, 1)[1]",
        "'LIMIT', 0, 1)[1]",
        "the wait computed from the oldest start, not the one that frees room",
    ),
    M(
        "lib/flow.lua",
        "if p and active(fk) >= p then",
        "if p and active(fk) > p then",
        "the parallelism comparison off by one: p + 1 fetches at once",
    ),
    M(
        "lib/flow.lua",
        "if own and own ~= '-' then return parse_limit(own) end",
        "if own then return parse_limit(own) end",
        "the tombstone read as a limit (of nothing): the '*' default skipped",
    ),
    M(
        "lib/flow.lua",
        "    redis.call('ZADD', K.hints, score, id)\n    redis.call('HDEL', K.delayed_score, id)\n"
        "    redis.call('ZREM', K.flow_parked, m)",
        "    redis.call('HDEL', K.delayed_score, id)\n    redis.call('ZREM', K.flow_parked, m)",
        "un-parked jobs not hinted: idle workers sleep until their poll",
    ),
    M(
        "lib/flow.lua",
        "  if until_ms and until_ms > now then return 0 end\n",
        "",
        "a review ignores the throttle: parked jobs go while the upstream asked to wait",
    ),
    M(
        "lib/flow.lua",
        "  if redis.call('HEXISTS', K.flow_paused, fk) == 1 then return now + FLOW_RECHECK_MS, false end\n",
        "",
        "pause not checked at claim time",
    ),
    M(
        "lib/flow.lua",
        "  if not own then own = redis.call('HGET', K.flow_config, fk) end\n",
        "",
        "FLOW_LIMITS (qc:flow:config) never read for a key",
    ),
    M(
        "lib/flow.lua",
        "(tonumber(per) or DEFAULT_PERIOD_MS) + SEND_MARGIN_MS",
        "(tonumber(per) or DEFAULT_PERIOD_MS)",
        "the send margin left out of the window: arrivals at the upstream exceed the rate",
    ),
    # -- flow_recount.lua ---------------------------------------------------------------------
    M(
        "flow_recount",
        "  if string.sub(m, -#suffix) == suffix then redis.call('ZREM', K.flow_starts, m) end\n",
        "",
        "the old start left in the window: the job's start counted twice",
    ),
    M(
        "flow_recount",
        "if n >= r then",
        "if n > r then",
        "off by one: a recount into a full window counts a start over the rate",
    ),
    M(
        "flow_recount",
        "if not held or string.sub(held, 1, #token) ~= token then return -1 end",
        "if not held then return -1 end",
        "a lease not checked: a worker that lost its job moves another's start",
    ),
    M(
        "flow_recount",
        "if until_ms and until_ms > now then return math.max(1, until_ms - now) end",
        "",
        "a throttle ignored: the request leaves while the upstream asked to wait",
    ),
]


def test_every_script_and_lib_has_a_mutation_and_checks() -> None:
    """Each script of durable/lua and each lib has at least one mutation and contract checks."""
    files = {m.file for m in MUTATIONS}
    assert set(NAMES) | set(LIBS) <= files
    assert all(CONTRACTS.get(name) for name in NAMES)


async def test_the_shipped_scripts_pass_every_check_run_as_mutations_run_them(
    redis_url: str,
) -> None:
    """Run back to back on one harness (as below), the scripts as shipped fail no check: a
    mutation's failure is its own, not the runner's."""
    every: dict[str, Check] = {}
    for checks in CONTRACTS.values():
        every.update(checks)
    assert await first_failure(redis_url, list(every.values()), {}) is None


def checks_for(mutation: Mutation) -> list[Check]:
    found: dict[str, Check] = {}
    for name in mutation.scripts():
        found.update(CONTRACTS[name])
    return list(found.values())


async def first_failure(url: str, checks: list[Check], overrides: dict[str, str]) -> str | None:
    """Run ``checks`` on the broken copy until one fails; say which and how. (Loading the copy
    must succeed: a mutation is a slip, not a syntax error.)"""
    async with Lua.open(url, overrides) as lua:
        for check in checks:
            await lua.reset()
            try:
                await check(lua)
            except Exception as exc:  # an assertion, a script error, a reply the caller can't read
                first = (str(exc).strip().splitlines() or [""])[0][:160]
                return f"{check.__name__}: {type(exc).__name__}: {first}"
    return None


@pytest.mark.parametrize(
    "mutation",
    MUTATIONS,
    ids=[f"{m.file}:{re.sub(r'[^a-z0-9]+', '-', m.why.lower())[:50]}" for m in MUTATIONS],
)
async def test_a_broken_copy_fails_the_scripts_checks(redis_url: str, mutation: Mutation) -> None:
    """The mutated script (or lib) still loads, and at least one of its contract checks fails."""
    assert mutation.original().count(mutation.old) == 1, "the mutation's text is not found once"
    overrides = {mutation.file: mutation.broken()}
    caught = await first_failure(redis_url, checks_for(mutation), overrides)
    print(f"{mutation.file} ({mutation.why}) caught by {caught}")
    assert caught, f"no contract check of {mutation.scripts()} notices: {mutation.why}"
