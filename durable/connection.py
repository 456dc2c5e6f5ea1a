"""The one way this backend opens a Redis client, so every process connects the same way.

Commands are packed by hiredis's C packer instead of redis-py's pure-Python one (the asyncio
client has no hiredis packer of its own): our scripts take 30-60 keys and arguments per call, and
packing them in Python cost ~85 µs a call against ~10 µs (measured on this project's finish call),
paid on every enqueue and every job's end. The bytes on the wire are identical; an argument type
hiredis does not take falls back to redis-py's packer (and its error).

A ``redis+sentinel://`` URL (``pipeline.redis_url``) gives a client of redis-py's
``redis.asyncio.sentinel``: its pool asks the Sentinels for the primary's address on every new
connection, drops idle connections when that address changes, and turns a ``READONLY`` reply (the
primary it was talking to was demoted) into a ``ConnectionError`` after closing that connection,
so the next command connects to the new primary. To this backend a failover is therefore the
Redis trouble it already rides out: refused or reset connections, ``READONLY``, then answers.
"""

from __future__ import annotations

from typing import Any

import hiredis
from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel

from pipeline.redis_url import SentinelURL, is_sentinel, parse_sentinel
from pipeline.settings import Settings

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 10.0  # above ACK_TIMEOUT's limit (5 s): a WAIT's reply comes within it


class HiredisPacking:
    """Mixed into redis-py's asyncio connection class (TCP, TLS or unix socket alike)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (isinstance(first, str) and " " in first) or (
            isinstance(first, bytes) and b" " in first
        ):
            args = (*first.split(), *args[1:])  # "CONFIG GET" is two words, as redis-py sends it
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)
            return packed


def sentinels(url: SentinelURL) -> Sentinel:
    """A client of the URL's Sentinels (no credentials: those are the data nodes')."""
    return Sentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": CONNECT_TIMEOUT_S,
        },
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=5,
    )


class SentinelRedis(Redis):
    """The primary's client; closing it closes its Sentinel connections too."""

    sentinels_of: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels_of is not None:
            for node in self.sentinels_of.sentinels:
                await node.aclose()


def redis_client(settings: Settings) -> Redis:
    """One client per process; redis-py reconnects on the next command after a lost connection
    (through the Sentinels, to whichever node is the primary then, for a Sentinel URL)."""
    client: Redis
    if is_sentinel(settings.redis_url):
        url = parse_sentinel(settings.redis_url)
        manager = sentinels(url)
        primary: SentinelRedis = manager.master_for(
            url.service,
            redis_class=SentinelRedis,
            db=url.db,
            username=url.username,
            password=url.password,
            ssl=url.tls,
        )
        primary.sentinels_of = manager
        client = primary
    else:
        client = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=5,
        )
    pool = client.connection_pool
    base: type[AbstractConnection] = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
    return client


def arq_settings(redis_url: str) -> RedisSettings:
    """arq's own settings for ``redis_url`` (its ``from_dsn`` reads no Sentinel URL)."""
    if not is_sentinel(redis_url):
        return RedisSettings.from_dsn(redis_url)
    url = parse_sentinel(redis_url)
    return RedisSettings(
        host=list(url.sentinels),
        sentinel=True,
        sentinel_master=url.service,
        database=url.db,
        username=url.username,
        password=url.password,
        ssl=url.tls,
        conn_timeout=int(CONNECT_TIMEOUT_S),
    )
