"""The in-memory backend: a ``asyncio.PriorityQueue`` and worker tasks in one process.

Delivery is at most once: a job is lost if the process dies before it finishes.

    pipeline.py   InMemoryPipeline: producer and worker pool in one object (the design in words)
    room.py       the QUEUE_MAXSIZE bound every waiting job holds a place in
    timers.py     one heap and one loop timer: run_at schedules, back-offs, flow wake-ups
    flowgate.py   per-key flow control: limits, pauses, throttles, the keys' own lines
    entry.py      a live job's mutable state
    records.py    records (by id and submission order, expiring), stored bodies, dead letters
    index.py      cursor pagination over an append-only sequence
"""

from inmemory.pipeline import InMemoryPipeline

__all__ = ["InMemoryPipeline"]
