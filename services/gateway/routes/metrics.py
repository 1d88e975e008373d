"""``/metrics``: Prometheus text of the app's own registry, or of every worker's metrics when
several share ``PROMETHEUS_MULTIPROC_DIR`` (not in the OpenAPI schema)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.gateway.deps import MetricsDep


async def prometheus(metrics: MetricsDep):
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def register(app: FastAPI) -> None:
    app.add_api_route("/metrics", prometheus, methods=["GET"], include_in_schema=False)
