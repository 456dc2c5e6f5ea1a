"""RabbitMQ, the article's "use RabbitMQ": a durable quorum queue, publisher confirms, manual acks
after the job, prefetch = WORKERS, consumed by our small aio-pika consumer — SIGKILLed mid-run
on a private node, counted at the upstream witness. And the boundary: the engines' libraries
stay out of the service, the contract and the backends."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from apps.engines.rabbit_node import RabbitNode
from apps.harness.redis_launcher import RedisProcess
from tests.support.engines_kit import Rig, kill, private_rabbit
from tests.support.helpers import Processes

rabbit = pytest.fixture(scope="module")(private_rabbit)
ROOT = Path(__file__).resolve().parent.parent
ENGINE_LIBRARIES = ("celery", "kombu", "aio_pika", "aiormq", "apps.engines")


@pytest.mark.slow
def test_quorum_queue_consumer_loses_none_and_redelivers_on_connection_loss(
    rabbit: RabbitNode, own_redis: RedisProcess, upstream: str, processes: Processes
) -> None:
    """Two consumers; one is SIGKILLed with every slot busy. Nothing is lost: the other gets the
    dead one's unacknowledged messages when RabbitMQ sees its connection close — each orphan's
    second delivery reaches the upstream before its first would have been answered (one job's
    time) — every job ends done, and each effect is applied once (the redeliveries are replays)."""
    ledger_url = own_redis.url.rsplit("/", 1)[0] + "/1"
    rig = Rig.of(
        "rabbitmq", broker=rabbit.url, ledger_url=ledger_url, upstream=upstream, procs=processes
    )
    slow = 8000  # a generous job: the claim is "within one job's time", on a loaded machine too
    jobs = rig.jobs(rig.workers, slow, "quorum")  # one per slot of the first consumer
    ids = [j["id"] for j in jobs]
    first = rig.start()
    rig.submit(jobs)
    at_kill = rig.wait_running(rig.workers)
    rig.start()  # the standby: idle, its slots free
    killed_at = kill(first)
    end = rig.wait_done(ids, timeout=60)
    seen, effects = rig.witness(), rig.effects()
    assert at_kill.running() == set(ids)
    assert all(end.status[i] == "done" for i in ids)  # none lost
    for i in ids:
        assert seen[i]["hits"] == 2, seen[i]
        assert killed_at <= seen[i]["last"] < seen[i]["first"] + slow / 1000, seen[i]
    assert sum(effects[i]["effects"] for i in ids) == len(ids)
    assert sum(effects[i]["replays"] for i in ids) == len(ids)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_service_the_contract_and_the_backends_import_no_engine() -> None:
    """Celery, kombu and aio-pika are an optional extra: only apps/engines and the demo's
    engine rows may import them (the service, the contract, the backends, the CLI's modules
    at import time never do)."""
    offenders = []
    for package in ("pipeline", "inmemory", "durable", "apps/service", "apps/cli", "apps/harness"):
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = {
                m
                for m in _imports(path)
                if any(m == e or m.startswith(e + ".") for e in ENGINE_LIBRARIES)
            }
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []
