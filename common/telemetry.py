"""OpenTelemetry tracing, off by default, configured from the standard ``OTEL_*`` variables.

Call :func:`setup_tracing` once in a process entry point (retrieval, ranking, gateway). It
installs an SDK ``TracerProvider`` with an OTLP/gRPC span exporter only when
``OTEL_TRACES_EXPORTER=otlp`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise it does
nothing and tracing costs nothing on the hot path (no interceptors are installed).

The exporter itself reads the other standard variables (``OTEL_EXPORTER_OTLP_*`` headers,
timeouts, ``OTEL_RESOURCE_ATTRIBUTES``...), so everything the OpenTelemetry docs describe works.

gRPC spans come from ``opentelemetry-instrumentation-grpc`` through explicit interceptors
(:func:`grpc_server_interceptors`, :func:`grpc_client_interceptors`) rather than global
monkey-patching, so what is traced is visible where servers and channels are built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class TelemetrySettings(BaseSettings):
    """The subset of the standard OpenTelemetry variables this project acts on."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    traces_exporter: str | None = Field(
        None,
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"),
        description="`otlp` exports spans over OTLP/gRPC; `none` disables tracing even when an endpoint is set.",
    )
    exporter_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP collector (e.g. http://otel-collector:4317); setting it enables tracing.",
    )
    service_name: str | None = Field(
        None,
        validation_alias=AliasChoices("OTEL_SERVICE_NAME"),
        description="Service name on the spans; defaults to the component name.",
    )

    @property
    def enabled(self) -> bool:
        exporter = (self.traces_exporter or "").strip().lower()
        if exporter:
            return exporter == "otlp"
        return bool(self.exporter_otlp_endpoint)


@dataclass
class Tracing:
    """What :func:`setup_tracing` installed; ``shutdown()`` flushes pending spans."""

    enabled: bool
    provider: object | None = None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # type: ignore[attr-defined]


def setup_tracing(settings: TelemetrySettings, default_service_name: str) -> Tracing:
    """Install the global tracer provider when tracing is enabled; a no-op otherwise."""
    if not settings.enabled:
        return Tracing(enabled=False)
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: settings.service_name or default_service_name})
    provider = TracerProvider(resource=resource)
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS / _INSECURE itself.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing enabled: OTLP exporter, service %s", settings.service_name or default_service_name)
    return Tracing(enabled=True, provider=provider)


def grpc_server_interceptors(tracing: Tracing) -> list:
    """Server interceptors creating a span per call (empty when tracing is off).

    Health checks and reflection are not traced: orchestrators poll them every few seconds.
    """
    if not tracing.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    untraced = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection."))
    return [aio_server_interceptor(filter_=filters.negate(untraced))]


def grpc_client_interceptors(tracing: Tracing) -> list:
    """Interceptors for ``grpc.aio`` channels that propagate the trace context (empty when off)."""
    if not tracing.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())
