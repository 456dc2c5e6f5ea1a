"""queue-contrast: one URL-fetching job pipeline on two interchangeable backends.

``pipeline`` holds everything backend-neutral: the contract (jobs, outcomes, errors, the
producer/worker interface), settings, the fetch handler, the HTTP service, the upstream stand-in
and the CLI. ``inmemory`` and ``durable`` implement the contract; ``pipeline.chooser`` is the one
place that names both.
"""
