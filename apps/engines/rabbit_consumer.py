"""``python -m apps.engines.rabbit_consumer``: the ``rabbitmq`` row's worker — a small asyncio
consumer (aio-pika) of a durable QUORUM queue with manual acknowledgements and prefetch = WORKERS.

Each delivery runs as its own task on one event loop (aio-pika starts one per message, and the
prefetch bounds how many are unacknowledged at once): the job's fetch with our fetcher, its start
and end in the ledger, then ``ack``. A message is acked only after its job ended, so a consumer
that dies — SIGKILL included — leaves every message it held unacknowledged, and RabbitMQ hands them
to another consumer as soon as it sees the connection close. The connection is a plain one, not
``connect_robust``: a lost broker ends the process, as a crash would.

Environment: ``ENGINE_BROKER_URL`` (amqp://…), ``ENGINE_QUEUE``, ``ENGINE_LEDGER_URL``, and the
fetcher's ``WORKERS``, ``JOB_TIMEOUT``, ``ALLOWED_HOSTS``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aio_pika
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aiormq.abc import FieldTable

from apps.engines.job import (
    BROKER_ENV,
    LEDGER_ENV,
    QUEUE_ENV,
    fetch_once,
    fetch_settings,
    required,
)
from apps.engines.ledger import STARTED_AT, STARTED_LUA, STARTS, STATUS
from pipeline.fetch.handler import Fetcher

QUORUM: FieldTable = {"x-queue-type": "quorum"}


async def declare(channel: aio_pika.abc.AbstractChannel | AbstractRobustChannel, name: str) -> None:
    """The queue both sides declare: durable, quorum (replicated with Raft on a cluster)."""
    await channel.declare_queue(name, durable=True, arguments=QUORUM)


async def consume(amqp_url: str, queue: str, ledger_url: str) -> None:
    settings = fetch_settings()
    connection = await aio_pika.connect(amqp_url)
    ledger = aioredis.Redis.from_url(ledger_url)
    fetcher = Fetcher(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.workers)
        await declare(channel, queue)
        q = await channel.get_queue(queue)

        async def on_message(message: AbstractIncomingMessage) -> None:
            job = json.loads(message.body)
            now = repr(time.time())
            await ledger.eval(STARTED_LUA, 3, STATUS, STARTS, STARTED_AT, job["id"], now)
            ok = await fetch_once(fetcher, job)
            await ledger.hset(STATUS, job["id"], "done" if ok else "failed")
            await message.ack()

        await q.consume(on_message)
        print(
            f"worker ready: rabbitmq consumer on {queue}, prefetch {settings.workers}", flush=True
        )
        connection.close_callbacks.add(lambda *_: stop.set())  # broker gone: end, as a crash
        await stop.wait()
    finally:
        await connection.close()
        await fetcher.aclose()
        await ledger.aclose()


def main() -> None:
    asyncio.run(consume(required(BROKER_ENV), required(QUEUE_ENV), required(LEDGER_ENV)))


if __name__ == "__main__":
    main()
