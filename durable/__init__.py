"""The durable backend: jobs live in Redis, in arq's job format, and run in worker processes.

Delivery is at least once: a job whose worker dies (or freezes past its lease) is re-delivered
within ``HEARTBEAT_TTL`` plus a moment, so a job may run twice; its outcome is recorded once, by
the attempt that holds the lease. ``durable.runner`` holds the job's state machine.
"""
