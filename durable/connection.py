"""The one way this backend opens a Redis client, so every process connects the same way."""

from __future__ import annotations

from redis.asyncio import Redis

from pipeline.settings import Settings


def redis_client(settings: Settings) -> Redis:
    """One client per process; redis-py reconnects on the next command after a lost connection."""
    client: Redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=5
    )
    return client
