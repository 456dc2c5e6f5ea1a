"""The HTTP service: the FastAPI app (``app``), its dead-letter routes, the dashboard, Prometheus
metrics and serving under uvicorn. It knows the contract (``pipeline.backend.Producer``), never
which backend is behind it."""
