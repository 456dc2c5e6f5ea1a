"""OpenTelemetry's SDK, set up at process start (``serve``, ``worker``) from the standard variables.

Tracing is off unless the environment asks for it the standard way: ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) names a collector, or ``OTEL_TRACES_EXPORTER`` is
``otlp`` or ``console``; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off.
It then needs the ``otel`` extra (``pip install 'queue-contrast[otel]'``: the SDK and the OTLP/HTTP
exporter); without it a warning says so and nothing else changes.

Everything else is the SDK's own reading of the standard variables: the resource from
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` defaults to
``queue-contrast-serve`` or ``queue-contrast-worker`` here, not ``unknown_service``), the
sampler from ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, the batch processor from
``OTEL_BSP_*``, the exporter's endpoint, headers, timeout and compression from
``OTEL_EXPORTER_OTLP_*``. Spans still queued are exported
when the process exits normally (the SDK's own exit hook); a SIGKILL loses them, as it loses
everything else the process held.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger("queue_contrast.tracing")

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# The standard variables docker-compose.yml and .env.example pass through (read by the SDK, or
# here, never by Settings); the SDK reads the rest of OTEL_* too.
STANDARD_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
)


def wanted(environ: Mapping[str, str]) -> str | None:
    """The exporter the environment asks for (``otlp`` or ``console``), or None: tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter in ("otlp", "otlp_proto_http", "console"):
        return "console" if exporter == "console" else "otlp"
    if exporter:
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console): off", exporter)
        return None
    return "otlp" if any(environ.get(name) for name in ENDPOINT_VARS) else None


def configure_tracing(
    default_service: str = "queue-contrast", environ: Mapping[str, str] | None = None
) -> bool:
    """Install the SDK's tracer provider when the environment asks for tracing; True if it did.
    ``default_service`` is the ``service.name`` unless the environment names one."""
    env = os.environ if environ is None else environ
    exporter_name = wanted(env)
    if exporter_name is None:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        log.warning(
            "OTEL_* asks for traces, but the OpenTelemetry SDK is not installed: "
            "pip install 'queue-contrast[otel]'; tracing stays off"
        )
        return False
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if exporter_name == "otlp" and protocol != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is shipped; using it", protocol
        )
    resource = Resource.create()
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        resource = resource.merge(Resource({SERVICE_NAME: default_service}))
    exporter: SpanExporter
    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: %s exporter, service.name=%s",
        exporter_name,
        resource.attributes.get(SERVICE_NAME),
    )
    return True
