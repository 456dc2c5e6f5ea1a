"""Which Redis the crash demo runs on: ``REDIS_URL`` when set (an empty database, checked first,
unless ``--allow-nonempty-db``), else a private ``redis-server`` it starts, else the embedded
stand-in; and one database of it per scenario."""

from __future__ import annotations

import os
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import redis

from apps.harness.redis_launcher import RedisProcess, redis_server_path, start_redis
from pipeline import redis_url as urls


def with_db(url: str, offset: int) -> str:
    if urls.is_sentinel(url):
        return urls.with_db(url, urls.parse_sentinel(url).db + offset)
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0) + offset
    return urlunsplit(parts._replace(path=f"/{db}"))


def sync_client(url: str) -> redis.Redis:
    """A blocking client of ``url``: through its Sentinels to the primary for a Sentinel URL."""
    if not urls.is_sentinel(url):
        return redis.Redis.from_url(url)
    from redis.sentinel import Sentinel

    parsed = urls.parse_sentinel(url)
    manager = Sentinel(list(parsed.sentinels), socket_timeout=2)  # type: ignore[no-untyped-call]
    found: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        parsed.service,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
    )
    return found


class NotEmpty(RuntimeError):
    """The demo was pointed at a Redis database that holds data it did not create."""


def require_empty(url: str) -> None:
    """Refuse a database that holds any key: the demo never touches data it did not create."""
    client = sync_client(url)
    try:
        keys = cast(int, client.dbsize())  # the sync client: an int, typed Awaitable | Any
    finally:
        client.close()
    if keys:
        raise NotEmpty(
            f"{url} holds {keys} keys the crash demo did not create; it runs only on an empty "
            "database: point REDIS_URL at an unused one (e.g. redis://host:6379/15), unset "
            "REDIS_URL to let the demo start a private redis-server, or pass --allow-nonempty-db "
            "to run there anyway (it deletes nothing)"
        )


def resolve_redis(
    choice: str = "auto", allow_nonempty: bool = False
) -> tuple[str, RedisProcess | None, str]:
    """auto: REDIS_URL when set, else a private redis-server, else the embedded stand-in."""
    given = os.environ.get("REDIS_URL")
    if given and choice == "auto":
        checked = (
            "may hold other data (--allow-nonempty-db): the demo deletes nothing"
            if allow_nonempty
            else "an empty database, checked before the demo starts"
        )
        return given, None, f"REDIS_URL={urls.describe(given)} (yours: {checked})"
    if choice == "redis-server" and not redis_server_path():
        raise RuntimeError("--redis redis-server: no redis-server on PATH")
    prefer = "embedded" if choice == "embedded" else "redis-server"
    proc = start_redis(persistence="always", prefer=prefer)
    note = proc.description
    if proc.kind == "embedded":
        why = "as asked" if choice == "embedded" else "no redis-server installed"
        note += f" — {why}; the stand-in keeps data in memory only"
    return proc.url, proc, note
