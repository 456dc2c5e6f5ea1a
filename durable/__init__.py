"""The durable backend: jobs live in Redis and run in arq worker processes.

Delivery is at least once: a job whose worker dies is re-delivered (within seconds, see
``durable.heartbeat``), so a job may run twice; its outcome is recorded once per job id.
"""
