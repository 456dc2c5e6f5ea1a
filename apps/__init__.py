"""The applications built on the contract (``pipeline``), each a sub-package:

    apps.service   the HTTP service (FastAPI app, dashboard, Prometheus metrics, serving)
    apps.cli       the command line, and ``chooser``: the one module that names both backends
    apps.demo      the crash demo (run, state, terminal view, web page, SVG chart)
    apps.harness   witness and harness pieces the demo, tests and benchmarks share: the upstream
                   stand-in, process supervision, the Redis launcher, the TCP proxy

Every import arrow points down: applications → the contract ← backends (``inmemory``,
``durable``). Nothing in ``pipeline``, ``inmemory`` or ``durable`` imports from here
(``tests/test_layout.py`` keeps the rule).
"""
