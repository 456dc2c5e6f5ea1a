"""The article's other answers as comparison engines: Celery (on Redis or RabbitMQ) and RabbitMQ
with an asyncio consumer, each running the same job as our backends — the same fetch code
(``pipeline.fetch.handler.Fetcher``), the same ``POST /infer`` with its ``Idempotency-Key`` — so the
crash demo and the benchmarks can show them beside ``inmemory``, ``durable`` and ``stock-arq``.

They are comparison rows, not backends behind the contract: nothing in ``pipeline``, ``inmemory``,
``durable`` or ``apps.service`` imports this package, and its libraries (celery, kombu, aio-pika)
come with the optional ``[engines]`` extra. What each engine did is written to a small ledger in
Redis (:mod:`apps.engines.ledger`), as stock arq writes our records; the upstream witness counts the
deliveries and effects.
"""
