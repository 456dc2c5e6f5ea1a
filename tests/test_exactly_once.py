"""At-least-once delivery, exactly-once effects: POST jobs to an upstream that honours
``Idempotency-Key``, a durable worker SIGKILLed mid-run, counted at the witness.

Every fetch carries ``Idempotency-Key: <job id>``, the same on every attempt and re-delivery. The
upstream stand-in's ``POST /infer`` applies a key's effect once and answers a repeat with the
stored response. So after the kill the witness must see more deliveries than jobs (the killed
worker's requests were delivered again) but exactly one effect per job.
"""

from __future__ import annotations

import signal

import pytest

from apps.harness.redis_launcher import RedisProcess
from durable.producer import DurableProducer
from pipeline.jobs import Job, Status
from pipeline.settings import Settings
from tests.support.helpers import Processes, async_wait_until, get_json, wait_until

pytestmark = pytest.mark.slow  # real processes: seconds

N = 24
SLOTS = 6
LATENCY_MS = 400


async def test_killed_worker_redelivers_but_every_effect_applies_once(
    processes: Processes, redis_url: str, redis_proc: RedisProcess
) -> None:
    """deliveries > jobs after a SIGKILL mid-run, effects == jobs, every job done once, and each
    job's stored result is its own echoed JSON body."""
    _, upstream = processes.upstream(latency_ms=LATENCY_MS)
    host = upstream.removeprefix("http://")
    env = {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": redis_url,
        "WORKERS": SLOTS,
        "HEARTBEAT_INTERVAL": 0.5,
        "HEARTBEAT_TTL": 1.5,
        "ALLOWED_HOSTS": host,
    }
    settings = Settings.from_env(
        {}, queue_backend="durable", redis_url=redis_url, queue_maxsize=N, allowed_hosts=host
    )
    producer = DurableProducer(settings)
    await producer.start()
    try:
        worker = processes.worker(**env)
        ids = [f"infer-{i}" for i in range(N)]
        for i, job_id in enumerate(ids):
            await producer.submit(
                Job(
                    url=f"{upstream}/infer",
                    id=job_id,
                    method="POST",
                    body=f'{{"prompt": "p{i}"}}',
                    body_type="json",
                )
            )
        wait_until(lambda: get_json(upstream + "/stats")["in_flight"] >= SLOTS // 2, 30, "fetches")
        worker.signal(signal.SIGKILL)
        worker.wait(timeout=10)
        processes.worker(**env)

        async def all_done() -> bool:
            records = [await producer.get(i) for i in ids]
            return all(r is not None and r.status is Status.DONE for r in records)

        await async_wait_until(all_done, 60, "every POST job to end done after the kill", 0.1)
        stats = get_json(upstream + "/stats")
        print(f"\ndeliveries={stats['deliveries']} effects={stats['effects']} jobs={N}")
        assert stats["deliveries"] > N, "the killed worker's requests were delivered again"
        assert stats["effects"] == N, "yet every job's effect was applied exactly once"
        effects = get_json(upstream + "/effects")
        assert set(effects) == set(ids) and all(e["effects"] == 1 for e in effects.values())
        for i, job_id in enumerate(ids):
            body = await producer.result(job_id)
            assert body is not None and f'"p{i}"' in body.body.decode()
    finally:
        await producer.close()
