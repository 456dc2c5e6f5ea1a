"""Publishing jobs to RabbitMQ as the ``rabbitmq`` row does: persistent messages to the durable
quorum queue, each publish awaited until the broker confirms it (publisher confirms: a quorum queue
confirms once a majority of its replicas has the message)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika

from apps.engines.rabbit_consumer import declare

CONFIRMS_IN_FLIGHT = 32  # publishes awaiting their confirm at once


async def publish(amqp_url: str, queue: str, jobs: list[dict[str, Any]]) -> int:
    """Publish every job and return how many the broker confirmed (all of them, or it raises)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel, queue)
        gate = asyncio.Semaphore(CONFIRMS_IN_FLIGHT)

        async def one(job: dict[str, Any]) -> None:
            message = aio_pika.Message(
                json.dumps(job).encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=job["id"],
                content_type="application/json",
            )
            async with gate:
                await channel.default_exchange.publish(message, routing_key=queue)

        await asyncio.gather(*(one(job) for job in jobs))
        return len(jobs)
    finally:
        await connection.close()


async def delete_queue(amqp_url: str, queue: str) -> None:
    """Remove a queue this program declared (on an AMQP_URL it was given)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()
