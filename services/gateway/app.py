"""The FastAPI gateway: ``create_app(settings)`` builds the app; nothing is built at import.

Routes (``services/gateway/routes/``): ``GET/POST /recommend``, ``POST /events``, ``/healthz`` (alive),
``/readyz`` (retrieval and ranking report SERVING over gRPC health), ``/metrics`` (Prometheus,
the app's own registry), ``/docs``. Schemas are in ``schemas.py``, what routes depend on in
``deps.py``. Channels, the cache client, the catalog and (with ``REDIS_URL``) the event log and
the exposure log's writer task are created in the :func:`lifespan` and closed on shutdown.

``GATEWAY_MODE`` picks the runtime of the two stages the :class:`Recommender` calls: ``grpc``
stubs on channels to the services, or ``inprocess`` faces over the same pipelines loaded in this
process (:mod:`services.inprocess`). :func:`from_env` is the app factory uvicorn's workers call.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from common.proto.recsys.v1 import ranking_pb2_grpc, retrieval_pb2_grpc
from common.telemetry import TelemetrySettings, Tracing, grpc_client_interceptors, setup_tracing
from services.components.config import load_config
from services.gateway.cache import build_cache
from services.gateway.catalog import load_catalog
from services.gateway.channels import open_channels
from services.gateway.deployment import DeploymentWatcher
from services.gateway.deps import Runtime
from services.gateway.events import EventLog
from services.gateway.exposures import ExposureLog
from services.gateway.metrics import GatewayMetrics, multiprocess_from_env
from services.gateway.middleware import BodyLimit
from services.gateway.pipeline import ONLINE, Recommender
from services.gateway.precomputed import PrecomputedStore
from services.gateway.responses import JSONBytes, error, readable
from services.gateway.routes import events as events_route
from services.gateway.routes import register_all
from services.gateway.routes.health import SERVICES, serving_status
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

@asynccontextmanager
async def lifespan(app: FastAPI):
    """Create the gateway's long-lived objects (``app.state.runtime``), close them on shutdown."""
    settings: GatewaySettings = app.state.settings
    tracing: Tracing = app.state.tracing
    catalog = load_catalog(settings.artifacts_dir)
    metrics: GatewayMetrics = app.state.metrics
    channels: dict[str, grpc.aio.Channel] = {}
    if settings.inprocess:
        from services import inprocess  # loads FAISS / ONNX Runtime: only in this mode

        # blocking for seconds; in a thread, so the loop still handles signals meanwhile
        local = await asyncio.to_thread(inprocess.load, inprocess.StageSettings.from_env(), settings.artifacts_dir)
        stages = {"retrieval": local.retrieval, "ranking": local.ranking}
        for stage_metrics in local.metrics.values():  # recsys_* of the pipelines, on this /metrics
            metrics.include(stage_metrics.registry)
        where = f"in-process (bundle {local.bundle_version}, pid {os.getpid()})"
    else:
        channels = open_channels(settings, grpc_client_interceptors(tracing) or None)
        stages = {"retrieval": retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"]),
                  "ranking": ranking_pb2_grpc.RankingServiceStub(channels["ranking"])}
        where = (f"retrieval {settings.retrieval_addr}, ranking {settings.ranking_addr} "
                 f"({settings.grpc_lb_policy}{', health-checked' if settings.grpc_health_check else ''})")
    cache = build_cache(settings.redis_url, settings.cache_ttl_s, settings.cache_max_entries,
                        settings.cache_timeout_ms / 1000.0)
    config = load_config(settings.pipeline_config)  # checked by __main__ before start
    ladder = config.fallback.ladder
    # precomputed / hybrid: the lists, seen and recent sets (the settings refuse these modes without REDIS_URL)
    precomputed = PrecomputedStore(settings.redis_url, settings.precomputed_timeout_ms / 1000.0) \
        if settings.serving_mode != ONLINE else None
    recommender = Recommender(settings, retrieval=stages["retrieval"], ranking=stages["ranking"], cache=cache,
                              catalog=catalog, metrics=metrics, ladder=ladder, experiments=config.experiments,
                              precomputed=precomputed)

    async def stages_serve(version: str) -> bool:  # grpc mode: both services report the version loaded
        timeout = settings.readiness_timeout_ms / 1000.0
        states = await asyncio.gather(*(serving_status(channels[name], f"{full_name}/{version}", timeout)
                                        for name, full_name in SERVICES.items()))
        return all(state == "SERVING" for state in states)

    deployment = DeploymentWatcher(settings.artifacts_dir, catalog, on_catalog=recommender.set_catalog,
                                   on_rollout=recommender.set_rollout, counter=metrics.reloads,
                                   ready=None if settings.inprocess else stages_serve, pin_wait_s=settings.pin_wait_s,
                                   stages_poll=local.poll if settings.inprocess else None)
    deployment.read_rollout()  # the canary from the first request on
    watch = asyncio.create_task(deployment.run(settings.reload_poll_s), name="deployment-watcher") \
        if settings.reload_poll_s > 0 else None
    events = exposures = None
    if settings.redis_url:  # the real-time loop needs Redis: without it, no /events, no exposure log
        redis_timeout_s = settings.events_timeout_ms / 1000.0
        events = EventLog(settings.redis_url, dedup_ttl_s=settings.event_dedup_ttl_s, timeout_s=redis_timeout_s)
        exposures = ExposureLog(settings.redis_url, sample_rate=settings.exposure_sample_rate,
                                queue_size=settings.exposure_queue_size, maxlen=settings.exposure_maxlen,
                                timeout_s=redis_timeout_s, metrics=metrics)
        exposures.start()
    app.state.runtime = Runtime(settings=settings, metrics=metrics, recommender=recommender,
                                channels=channels, cache=cache, stages=stages,
                                events=events, exposures=exposures, deployment=deployment)
    log.info("gateway (%s mode, serving mode %s): %s, cache %s (ttl %ss), fallback ladder %s, bundle %s%s, "
             "experiments %s, /events and exposure log %s",
             settings.mode, settings.serving_mode + (f", precomputed lists up to {settings.precomputed_max_age_s:g} s old"
                                                     if precomputed is not None else ""), where, cache.name, settings.cache_ttl_s, " > ".join(ladder),
             catalog.version or f"UNREADABLE ({catalog.error})",
             f" (canary {recommender.rollout.canary.version} {recommender.rollout.canary.percent:g}%)"
             if recommender.rollout.canary else "",
             ", ".join(e.name for e in config.experiments if e.enabled) or "none",
             f"on (exposure sample rate {settings.exposure_sample_rate:g})" if events else "off (no REDIS_URL)")
    gc.collect()
    gc.freeze()  # start-up objects leave the GC's young generations: no full-GC pauses on them
    try:
        yield
    finally:
        if watch is not None:
            watch.cancel()
        await recommender.drain()
        if exposures is not None:
            await exposures.close()
        if events is not None:
            await events.close()
        await cache.close()
        if precomputed is not None:
            await precomputed.close()
        for channel in channels.values():
            await channel.close()
        metrics.worker_exited()
        # flush pending spans here: after a SIGTERM uvicorn re-raises the signal once the
        # lifespan is done, so code after uvicorn.run() in the entry point never runs
        tracing.shutdown()


async def invalid_request(request: Request, exc: RequestValidationError):
    """422 in the gateway's error shape (and counted), instead of FastAPI's default body."""
    metrics: GatewayMetrics = request.app.state.metrics
    if request.url.path == events_route.PATH:
        events_route.rejected(metrics, events_route.events_in(exc.body))
    else:
        metrics.requests.labels(code="422").inc()
    return error(422, "invalid request", readable(exc.errors()))


def _refused(metrics: GatewayMetrics, path: str) -> None:
    """A 413 of the body limit: counted with its endpoint's responses."""
    if path == events_route.PATH:
        metrics.event_batches.labels(code="413").inc()
    elif path == "/recommend":
        metrics.requests.labels(code="413").inc()


def create_app(settings: GatewaySettings, tracing: Tracing | None = None) -> FastAPI:
    app = FastAPI(
        title="recsys gateway",
        version="1",
        description="Real-time recommendations: retrieval (two-tower + FAISS) -> ranking (ONNX) -> filters.",
        lifespan=lifespan,
        default_response_class=JSONBytes,
    )
    app.state.settings = settings
    app.state.tracing = tracing or Tracing(enabled=False)
    # per app: its own registry; several workers (the entry point set the directory): aggregated
    app.state.metrics = GatewayMetrics(multiprocess=multiprocess_from_env())
    app.add_exception_handler(RequestValidationError, invalid_request)
    register_all(app)
    if app.state.tracing.enabled:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       per_path={events_route.PATH: settings.max_events_body_bytes},
                       on_refused=lambda path: _refused(app.state.metrics, path))
    return app


def from_env() -> FastAPI:
    """The app factory of ``python -m services.gateway`` (``uvicorn.run(..., factory=True)``): each
    worker process calls it, so each builds its app from the environment when it starts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(GatewaySettings(), setup_tracing(TelemetrySettings(), "gateway"))
