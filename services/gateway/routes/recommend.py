"""``GET /recommend`` (user and k in the query) and ``POST /recommend`` (with request context and
exclusions): both become one :class:`~services.gateway.pipeline.Query` for the recommender.
Every answer is offered to the exposure log (:mod:`services.gateway.exposures`, sampled, off the
response's path)."""

from __future__ import annotations

import uuid
from typing import Annotated

import orjson
from fastapi import FastAPI
from fastapi import Query as Q
from fastapi.responses import Response
from opentelemetry import trace

from services.gateway.deps import Runtime, RuntimeDep
from services.gateway.pipeline import Query
from services.gateway.responses import JSONBytes, error
from services.gateway.schemas import (
    K_MAX,
    USER_ID_MAX,
    ErrorResponse,
    RecommendRequest,
    RecommendResponse,
    RequestContext,
)

DESCRIPTION = (
    "Never a 5xx for a failing dependency: when retrieval, ranking or Redis fail or are slow, the answer "
    "is still 200, from the first rung of the fallback ladder that can serve it, named in `fallback` "
    "(`cached` is true when it is the user's last good answer or a cache hit)."
)
INVALID = {"model": ErrorResponse, "description": "Invalid request: one `detail` line per problem (`body.k: ...`)."}
TOO_LARGE = {"model": ErrorResponse, "description": "Body larger than GATEWAY_MAX_BODY_BYTES."}


async def serve(q: Query, runtime: Runtime) -> Response:
    """Run the recommender; the request id is the trace id when tracing is on (so a response can
    be looked up in the traces), else a random one."""
    span = trace.get_current_span().get_span_context()
    headers = {}
    if span.is_valid:
        request_id = format(span.trace_id, "032x")
        headers["x-trace-id"] = request_id
        headers["traceparent"] = f"00-{request_id}-{format(span.span_id, '016x')}-{int(span.trace_flags):02x}"
    else:
        request_id = uuid.uuid4().hex
    headers["x-request-id"] = request_id
    result = await runtime.recommender.recommend(q)
    runtime.metrics.requests.labels(code="200").inc()
    if runtime.exposures is not None:
        runtime.exposures.offer(request_id, q.user_id, result.items, result.model_version, result.fallback,
                                result.cached, result.assignment.bucket)
    body = {
        "user_id": q.user_id, "items": result.items, "model_version": result.model_version,
        "variant": result.assignment.variant, "fallback": result.fallback, "cached": result.cached,
        "mode": result.mode, "request_id": request_id,
    }
    return JSONBytes(orjson.dumps(body), headers=headers)


async def recommend_get(
    runtime: RuntimeDep,
    user_id: Annotated[str, Q(min_length=1, max_length=USER_ID_MAX, description="MovieLens user id")],
    k: Annotated[int, Q(ge=1, le=K_MAX, description="Number of items")] = 10,
):
    return await serve(Query(user_id=user_id, k=k), runtime)


def query_from_body(body: RecommendRequest, runtime: Runtime) -> Query | Response:
    """The POST body as a :class:`Query`, or the 422 for more exclusions than GATEWAY_MAX_EXCLUDE_IDS
    (shared by /recommend and /debug/explain)."""
    limit = runtime.settings.max_exclude_ids
    if len(body.exclude_item_ids) > limit:
        runtime.metrics.requests.labels(code="422").inc()
        return error(422, "invalid request", [f"body.exclude_item_ids: at most {limit} ids are accepted"])
    ctx = body.context or RequestContext()
    return Query(
        user_id=body.user_id, k=body.k, recent_item_ids=tuple(ctx.recent_item_ids),
        attributes=tuple(sorted(ctx.attributes.items())), exclude_item_ids=tuple(body.exclude_item_ids),
    )


async def recommend_post(body: RecommendRequest, runtime: RuntimeDep):
    q = query_from_body(body, runtime)
    return q if isinstance(q, Response) else await serve(q, runtime)


def register(app: FastAPI) -> None:
    app.add_api_route("/recommend", recommend_get, methods=["GET"], response_model=RecommendResponse,
                      responses={422: INVALID}, summary="Top-k items for a user", description=DESCRIPTION)
    app.add_api_route("/recommend", recommend_post, methods=["POST"], response_model=RecommendResponse,
                      responses={413: TOO_LARGE, 422: INVALID},
                      summary="Top-k items with request context and exclusions", description=DESCRIPTION)
