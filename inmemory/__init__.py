"""The in-memory backend: a bounded ``asyncio.PriorityQueue`` and worker tasks in one process.

Delivery is at most once: a job is lost if the process dies before it finishes.
"""

from inmemory.pipeline import InMemoryPipeline

__all__ = ["InMemoryPipeline"]
