"""The FastAPI gateway: ``create_app(settings)`` builds the app; nothing is built at import.

Routes: ``GET/POST /recommend``, ``/healthz`` (alive), ``/readyz`` (retrieval and ranking
report SERVING over gRPC health), ``/metrics`` (Prometheus, the app's own registry), ``/docs``.
Channels, the cache client and the catalog are created in the lifespan and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi import Query as Q
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from common.telemetry import Tracing, grpc_client_interceptors
from services.gateway.cache import build_cache
from services.gateway.catalog import load_catalog
from services.gateway.metrics import GatewayMetrics
from services.gateway.pipeline import Query, Recommender
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

USER_ID_MAX = 64
CHANNEL_OPTIONS = [
    # come back quickly after a dependency restarts (the default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
SERVICES = {"retrieval": "recsys.v1.RetrievalService", "ranking": "recsys.v1.RankingService"}


# -- API models (the OpenAPI schema; responses are serialised with orjson directly) -------------
class RequestContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recent_item_ids: list[int] = Field(default_factory=list, max_length=100,
                                       description="Items the user interacted with in this session, most recent first.")
    attributes: dict[str, str] = Field(default_factory=dict, max_length=32,
                                       description="Free-form attributes (device, surface...), passed to the services.")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    user_id: str = Field(min_length=1, max_length=USER_ID_MAX, description="MovieLens user id; unknown ids get cold-start items.")
    k: int = Field(10, ge=1, le=100, description="Number of items to return.")
    context: RequestContext | None = None
    exclude_item_ids: list[int] = Field(default_factory=list, description="Items that must not be returned.")


class Item(BaseModel):
    item_id: int
    score: float
    title: str | None = Field(None, description="From the bundle's item catalog; null when unknown.")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[Item]
    model_version: str
    fallback: str | None = Field(None, description="null, or the fallback rung that served the request.")
    cached: bool
    request_id: str


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


def _error(status: int, message: str, detail: list | None = None) -> Response:
    body = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONBytes(body, status_code=status)


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies above ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes)
        if not too_big and declared is None:  # chunked: buffer up to the limit, then replay
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.max_bytes:
                    too_big = True
                    break
            if not too_big:
                body, sent = b"".join(chunks), False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send)
        if too_big:
            response = _error(413, f"request body larger than {self.max_bytes} bytes")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _readable(errors) -> list[str]:
    out = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        out.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
    return out


async def _serving(channel: grpc.aio.Channel, service: str, timeout: float) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def create_app(settings: GatewaySettings, tracing: Tracing | None = None) -> FastAPI:
    tracing = tracing or Tracing(enabled=False)
    metrics = GatewayMetrics()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog = load_catalog(settings.artifacts_dir)
        interceptors = grpc_client_interceptors(tracing) or None
        channels = {
            "retrieval": grpc.aio.insecure_channel(settings.retrieval_addr, options=CHANNEL_OPTIONS, interceptors=interceptors),
            "ranking": grpc.aio.insecure_channel(settings.ranking_addr, options=CHANNEL_OPTIONS, interceptors=interceptors),
        }
        for channel in channels.values():
            channel.get_state(try_to_connect=True)  # connect now, not on the first request
        cache = build_cache(settings.redis_url, settings.cache_ttl_s, settings.cache_max_entries,
                            settings.cache_timeout_ms / 1000.0)
        recommender = Recommender(settings, retrieval_channel=channels["retrieval"],
                                  ranking_channel=channels["ranking"], cache=cache, catalog=catalog, metrics=metrics)
        state.update(recommender=recommender, channels=channels, cache=cache, catalog=catalog)
        log.info("gateway: retrieval %s, ranking %s, cache %s (ttl %ss), bundle %s",
                 settings.retrieval_addr, settings.ranking_addr, cache.name, settings.cache_ttl_s,
                 catalog.version or f"UNREADABLE ({catalog.error})")
        gc.collect()
        gc.freeze()  # start-up objects leave the GC's young generations: no full-GC pauses on them
        try:
            yield
        finally:
            await recommender.drain()
            await cache.close()
            for channel in channels.values():
                await channel.close()
            # flush pending spans here: after a SIGTERM uvicorn re-raises the signal once the
            # lifespan is done, so code after uvicorn.run() in the entry point never runs
            tracing.shutdown()

    app = FastAPI(
        title="recsys gateway",
        version="1",
        description="Real-time recommendations: retrieval (two-tower + FAISS) -> ranking (ONNX) -> filters.",
        lifespan=lifespan,
        default_response_class=JSONBytes,
    )
    app.state.metrics = metrics
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        metrics.requests.labels(code="422").inc()
        return _error(422, "invalid request", _readable(exc.errors()))

    async def serve(q: Query) -> Response:
        recommender: Recommender = state["recommender"]
        span = trace.get_current_span().get_span_context()
        headers = {}
        if span.is_valid:
            request_id = format(span.trace_id, "032x")
            headers["x-trace-id"] = request_id
            headers["traceparent"] = f"00-{request_id}-{format(span.span_id, '016x')}-{int(span.trace_flags):02x}"
        else:
            request_id = uuid.uuid4().hex
        headers["x-request-id"] = request_id
        result = await recommender.recommend(q)
        metrics.requests.labels(code="200").inc()
        body = {
            "user_id": q.user_id, "items": result.items, "model_version": result.model_version,
            "fallback": result.fallback, "cached": result.cached, "request_id": request_id,
        }
        return JSONBytes(orjson.dumps(body), headers=headers)

    @app.get("/recommend", response_model=RecommendResponse, summary="Top-k items for a user")
    async def recommend_get(
        user_id: Annotated[str, Q(min_length=1, max_length=USER_ID_MAX, description="MovieLens user id")],
        k: Annotated[int, Q(ge=1, le=100, description="Number of items")] = 10,
    ):
        return await serve(Query(user_id=user_id, k=k))

    @app.post("/recommend", response_model=RecommendResponse, summary="Top-k items with request context and exclusions")
    async def recommend_post(body: RecommendRequest):
        if len(body.exclude_item_ids) > settings.max_exclude_ids:
            metrics.requests.labels(code="422").inc()
            return _error(422, "invalid request",
                          [f"body.exclude_item_ids: at most {settings.max_exclude_ids} ids are accepted"])
        ctx = body.context or RequestContext()
        return await serve(Query(
            user_id=body.user_id, k=body.k, recent_item_ids=tuple(ctx.recent_item_ids),
            attributes=tuple(sorted(ctx.attributes.items())), exclude_item_ids=tuple(body.exclude_item_ids),
        ))

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return JSONBytes({"status": "alive"})

    @app.get("/readyz", summary="Readiness: retrieval and ranking SERVING over gRPC health")
    async def readyz():
        channels = state.get("channels")
        if not channels:
            return _error(503, "starting")
        timeout = settings.readiness_timeout_ms / 1000.0
        names = list(SERVICES)
        statuses = await asyncio.gather(*(_serving(channels[n], SERVICES[n], timeout) for n in names))
        deps = dict(zip(names, statuses, strict=True))
        ready = all(s == "SERVING" for s in statuses)
        catalog = state["catalog"]
        body = {"ready": ready, "dependencies": deps, "cache": state["cache"].name,
                "bundle": catalog.version or None, "bundle_error": catalog.error}
        return JSONBytes(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if tracing.enabled:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
