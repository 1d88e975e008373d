"""FastAPI dependencies: what a route needs, read from ``app.state``.

``create_app`` puts the settings and the metrics there; the lifespan adds the :class:`Runtime`
(the recommender, its stages and channels, cache, catalog, event and exposure logs, with the settings and
metrics next to them) once
they exist. Nothing here is built at import; routes declare what they use with the ``*Dep``
annotations.

Cost on the hot path, measured: a plain ``def`` dependency runs in FastAPI's thread pool
(~0.13 ms per dependency per request here), an ``async def`` one ~10-20 µs. So the
dependencies are ``async def`` and each route takes exactly one of them.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any

import grpc
from fastapi import Depends, Request
from fastapi.responses import Response

from services.gateway.cache import ResponseCache
from services.gateway.deployment import DeploymentWatcher
from services.gateway.events import EventLog
from services.gateway.exposures import ExposureLog
from services.gateway.metrics import GatewayMetrics
from services.gateway.pipeline import Recommender
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Runtime:
    """The long-lived objects of a running gateway, created by the lifespan."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    recommender: Recommender
    channels: dict[str, grpc.aio.Channel]  # "retrieval", "ranking" (grpc mode; empty in inprocess mode)
    cache: ResponseCache
    stages: dict[str, Any] = field(default_factory=dict)  # what the recommender calls: stubs or in-process faces
    events: EventLog | None = None  # POST /events ingest; None without REDIS_URL
    exposures: ExposureLog | None = None  # the exposure log's writer; None without REDIS_URL
    deployment: DeploymentWatcher | None = None  # current / canary as this gateway sees them (lifespan)

    @property
    def catalog(self):
        """The catalog being served (replaced by the deployment watcher when ``current`` moves)."""
        return self.recommender.catalog


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def get_runtime(request: Request) -> Runtime:
    """The started gateway (a request cannot arrive before the lifespan has run)."""
    return request.app.state.runtime


async def get_runtime_if_started(request: Request) -> Runtime | None:
    """``None`` until the lifespan has started (``/readyz`` then answers 503 "starting")."""
    return getattr(request.app.state, "runtime", None)


def admin_refusal(request: Request, runtime: Runtime) -> Response | None:
    """None when the caller holds the admin token, else the 404 (no GATEWAY_ADMIN_TOKEN: admin
    endpoints do not exist) or 401. Compared in constant time (``hmac.compare_digest``: the time
    taken does not tell how much of a guess was right)."""
    from services.gateway.responses import error

    token = runtime.settings.admin_token
    if token is None:
        return error(404, "not found")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        response = error(401, "admin endpoint: send Authorization: Bearer <GATEWAY_ADMIN_TOKEN>")
        response.headers["www-authenticate"] = "Bearer"
        return response
    return None


MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
StartingRuntimeDep = Annotated[Runtime | None, Depends(get_runtime_if_started)]
