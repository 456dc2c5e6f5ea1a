"""Start-up check: does this Redis keep jobs across its own restart, and never evict them?

A Redis that may evict keys (any ``maxmemory-policy`` but ``noeviction``) can silently drop a
queued job, its record or its lease: ``serve`` and ``worker`` refuse to start on one, with one line
naming the setting, unless ``ALLOW_EVICTION=true`` (then it is a warning). A Redis that keeps
nothing on disk only gets a warning: jobs then survive a worker crash, not a Redis restart.

Each process also says which Redis it uses (address, database, version, persistence) and what
else that database holds: keys that are not this service's (``arq:*``, ``qc:*``) are a warning, so
pointing ``serve`` or ``worker`` at a database someone else uses is visible at once.
"""

from __future__ import annotations

import logging

from redis import exceptions as rexc
from redis.asyncio import Redis

from durable.connection import redis_client, sentinels
from durable.redis_errors import map_redis_errors
from pipeline.errors import BackendUnavailable, SettingsError
from pipeline.redis_url import describe, is_sentinel, parse_sentinel
from pipeline.settings import Settings

EVICTION = "maxmemory-policy"
OURS = (b"arq:", b"qc:")  # the key prefixes of arq's job format and of our own structures
SCAN_LIMIT = 10_000  # keys looked at for other data: enough to tell, bounded on a big database
EXAMPLES = 3

log = logging.getLogger("queue_contrast")


async def _config(redis: Redis) -> dict[str, str]:
    conf: dict[str, str] = {}
    for name in ("appendonly", "appendfsync", "save", EVICTION):
        for k, v in (await redis.config_get(name)).items():
            conf[k.decode() if isinstance(k, bytes) else k] = (
                v.decode() if isinstance(v, bytes) else v
            )
    return conf


async def persistence_warnings(redis: Redis) -> list[str]:
    """One line per risk found; empty when Redis persists every write and never evicts."""
    try:
        conf = await _config(redis)
    except rexc.ResponseError as exc:
        return [
            f"cannot read Redis persistence settings (CONFIG GET refused: {exc}); "
            "assume jobs do not survive a Redis restart"
        ]
    warnings = []
    aof = conf.get("appendonly") == "yes"
    if not aof and not conf.get("save"):
        warnings.append(
            "Redis keeps nothing on disk (appendonly no, no save points): queued jobs "
            "survive a worker crash but NOT a Redis restart"
        )
    elif not aof:
        warnings.append(
            "Redis persists only RDB snapshots (appendonly no): jobs enqueued since the "
            "last snapshot are lost if Redis restarts"
        )
    policy = conf.get(EVICTION, "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis {EVICTION} is {policy}: under memory pressure it may evict queued jobs, "
            "their records and their leases; use noeviction"
        )
    return warnings


def refuse_eviction(warnings: list[str], settings: Settings) -> list[str]:
    """Raise SettingsError for an evicting Redis unless ALLOW_EVICTION=true; else the warnings."""
    evicting = [w for w in warnings if EVICTION in w]
    if evicting and not settings.allow_eviction:
        raise SettingsError(
            f"{evicting[0]} (set it with CONFIG SET {EVICTION} noeviction, or start with "
            "ALLOW_EVICTION=true to run anyway)"
        )
    return warnings


async def check_service(settings: Settings) -> None:
    """For a Sentinel URL: some Sentinel must know its service. None that answers knowing it is a
    settings error (exit 2, one line naming the service); none answering is Redis trouble."""
    if not is_sentinel(settings.redis_url):
        return
    url = parse_sentinel(settings.redis_url)
    manager = sentinels(url)
    answered, unreachable = [], []
    try:
        for node, (host, port) in zip(manager.sentinels, url.sentinels, strict=True):
            try:
                await node.execute_command("SENTINEL MASTER", url.service)  # type: ignore[no-untyped-call]
                return
            except rexc.ResponseError:  # "No such master with that name"
                answered.append(f"{host}:{port}")
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                unreachable.append(f"{host}:{port} ({exc})")
    finally:
        for node in manager.sentinels:
            await node.aclose()
    if answered:
        raise SettingsError(
            f"invalid REDIS_URL={describe(settings.redis_url)!r}: no Sentinel knows service "
            f"{url.service!r} (asked {', '.join(answered)}; check SERVICE_NAME, the name after "
            "'sentinel monitor')"
        )
    raise BackendUnavailable(
        f"no Sentinel answered for service {url.service!r}: {'; '.join(unreachable)}"
    )


async def foreign_keys(redis: Redis) -> tuple[int, list[str], bool]:
    """(keys seen that are not this service's, up to three of their names, whether the scan
    stopped at ``SCAN_LIMIT`` before the end of the database)."""
    seen = others = 0
    examples: list[str] = []
    async for key in redis.scan_iter(count=1000):
        seen += 1
        if not key.startswith(OURS):
            others += 1
            if len(examples) < EXAMPLES:
                examples.append(key.decode(errors="replace"))
        if seen >= SCAN_LIMIT:
            return others, examples, True
    return others, examples, False


async def describe_redis(redis: Redis, url: str) -> tuple[str, list[str]]:
    """One line saying which Redis this is and what it holds, and a warning when the database
    holds keys that are not this service's."""
    try:
        info = await redis.info("server")
    except rexc.ResponseError:  # a stand-in without INFO
        info = {}
    total = await redis.dbsize()
    try:
        conf = await _config(redis)
        save = f"save {conf['save']!r}" if conf.get("save") else "no RDB snapshots"
        kept = f"appendonly {conf.get('appendonly', '?')}, "
        kept += f"appendfsync {conf.get('appendfsync', '?')}, {save}"
    except rexc.ResponseError:
        kept = "persistence unknown (CONFIG GET refused)"
    others, examples, partial = await foreign_keys(redis)
    line = (
        f"Redis {describe(url)} (version {info.get('redis_version', '?')}, {kept}): "
        f"{total} key(s) in this database"
    )
    if not others:
        return line + (", all this service's" if total else ""), []
    some = "at least " if partial else ""
    warning = (
        f"this Redis database holds {some}{others} key(s) that are not this service's "
        f"(e.g. {', '.join(repr(e) for e in examples)}): is it shared with other data? "
        "Give the queue a database of its own (REDIS_URL=redis://host:port/N)"
    )
    return line, [warning]


async def check_redis(settings: Settings, redis: Redis | None = None) -> list[str]:
    """The start-up check behind ``Producer.check_backend`` and ``WorkerPool.check_backend``:
    logs which Redis this is; returns the warnings (raises for an evicting one). Uses ``redis``
    when given, else a connection of its own with the producer's settings."""
    await check_service(settings)
    client = redis or redis_client(settings)
    try:
        with map_redis_errors(f"connecting to {describe(settings.redis_url)}"):
            warnings = await persistence_warnings(client)
            line, shared = await describe_redis(client, settings.redis_url)
    finally:
        if redis is None:
            await client.aclose()
    kept = refuse_eviction([*warnings, *shared], settings)  # a refusal is the one line said
    log.info("%s", line)
    return kept
