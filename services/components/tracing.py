"""Spans for components, only when tracing is on.

With tracing off the pipelines hold no tracer and open no span: even a no-op span costs a few
microseconds of context handling, and a request runs a dozen components. With it on, each
source (its fetch and the filters over its candidates), the merge and the scorer get a span
named after the component, under the service's server span (or the gateway's request span in
``inprocess`` mode)."""

from __future__ import annotations

from contextlib import nullcontext


def component_tracer():
    """The components' tracer when a tracer provider is installed (setup_tracing ran), else None."""
    from opentelemetry import trace

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    return trace.get_tracer("recsys.components")


def span(tracer, name: str, **attributes):
    """``with span(tracer, "source two_tower", k=300) as s:`` - a no-op context without a tracer."""
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(name, attributes={f"recsys.{k}": v for k, v in attributes.items()})
