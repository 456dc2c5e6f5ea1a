"""Start-up check: does this Redis keep jobs across its own restart, and never evict them?"""

from __future__ import annotations

from redis import exceptions as rexc
from redis.asyncio import Redis

from durable.connection import redis_client
from durable.redis_errors import map_redis_errors
from pipeline.settings import Settings


async def persistence_warnings(redis: Redis) -> list[str]:
    """One line per risk found; empty when Redis persists every write and never evicts."""
    try:
        conf: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "save", "maxmemory-policy"):
            conf.update(
                {
                    k.decode() if isinstance(k, bytes) else k: (
                        v.decode() if isinstance(v, bytes) else v
                    )
                    for k, v in (await redis.config_get(name)).items()
                }
            )
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
    policy = conf.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure it may evict "
            "queued jobs; use noeviction"
        )
    return warnings


async def check_redis(settings: Settings) -> list[str]:
    """The start-up check behind ``Producer.check_backend`` and ``WorkerPool.check_backend``."""
    redis = redis_client(settings)  # the same connection settings as the producer's
    try:
        with map_redis_errors(f"connecting to {settings.redis_url}"):
            return await persistence_warnings(redis)
    finally:
        await redis.aclose()
