"""The fetch side of the contract: what a job's HTTP request may be and how it is made.

validate    one check of a whole job (method, headers, body, priority, schedule, ...)
urlguard    which addresses a job may reach, in every spelling (SSRF guard)
allowlist   ``ALLOWED_HOSTS``: the named exceptions to the guard
handler     the fetch handler: the one job both backends run (knows nothing of queues)
"""
