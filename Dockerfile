# queue-contrast: one image for every service in docker-compose.yml (api, worker, upstream).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

LABEL org.opencontainers.image.title="queue-contrast" \
      org.opencontainers.image.version="0.2.0"

WORKDIR /app

# 1. Dependencies, from pyproject.toml alone: this layer is rebuilt only when pyproject.toml changes.
#    (tests/test_compose.py follows this recipe step by step, without a Docker engine.)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt \
    && rm requirements.txt
#    The optional `otel` extra too (OpenTelemetry's SDK and OTLP/HTTP exporter, a few MB): tracing
#    stays off until OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/tracing.md).
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['otel']))" \
        > otel.txt \
    && pip install -r otel.txt \
    && rm otel.txt

# 2. The project itself (code changes rebuild only this small layer).
COPY README.md ./
COPY pipeline/ pipeline/
COPY inmemory/ inmemory/
COPY durable/ durable/
COPY apps/ apps/
RUN pip install --no-deps . && rm -rf build *.egg-info

# 3. Run as an unprivileged user that owns nothing in the image.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER app

EXPOSE 8000
# The api's check; docker-compose.yml overrides it for the worker (no port) and upstream (8081).
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=3)" || exit 1

CMD ["queue-contrast", "serve"]
