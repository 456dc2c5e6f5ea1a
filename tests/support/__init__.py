"""What the tests share, none of it a test: ``helpers`` (bounded waits, private Redis, processes),
``harness`` (a backend and its service in-process), ``service_api`` (the app over ASGI),
``fake_producer`` (a Producer that records), ``local_servers`` (TLS and odd HTTP servers),
``scripts_kit`` (the Lua scripts against a real Redis, and their broken copies), ``browser``
(headless Chromium), ``image_recipe`` (the Dockerfile followed without an engine)."""
