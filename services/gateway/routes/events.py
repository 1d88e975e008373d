"""``POST /events``: a batch of user events, deduplicated and appended to the event stream.

The body is validated strictly (:class:`~services.gateway.schemas.EventBatch`); the limits that
are settings are checked here: at most ``GATEWAY_MAX_EVENTS_PER_BATCH`` events, no ``ts`` more than
``GATEWAY_EVENT_MAX_FUTURE_S`` ahead of the gateway's clock. Any invalid event refuses the whole
batch (422, each problem named with its index: ``body.events.3.item_id: ...``), so a client never
has to work out which part of a batch was taken. A valid batch goes through the ingest script
(:mod:`services.gateway.events`) and is answered ``202 {"accepted": n, "duplicates": m}`` once
Redis has it. Redis down or slow: ``503`` with ``Retry-After: 1`` (retrying the same batch is
safe: what was appended counts as duplicates). No ``REDIS_URL``: 503, events need Redis.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from fastapi.responses import Response

from common.realtime import Event
from services.gateway.deps import Runtime, RuntimeDep
from services.gateway.events import EventsUnavailable
from services.gateway.metrics import GatewayMetrics
from services.gateway.responses import JSONBytes, error
from services.gateway.schemas import ErrorResponse, EventBatch, EventsAccepted

log = logging.getLogger(__name__)

PATH = "/events"
RETRY_AFTER_S = 1
NO_REDIS = "events need Redis: REDIS_URL is not set on the gateway"

RESPONSES = {
    202: {"model": EventsAccepted, "description": "Appended (`accepted`) or already seen (`duplicates`); durable in Redis."},
    413: {"model": ErrorResponse, "description": "Body larger than GATEWAY_MAX_EVENTS_BODY_BYTES."},
    422: {"model": ErrorResponse, "description": "Invalid batch (nothing taken): one `detail` line per problem, "
                                                 "naming the event's index and field, e.g. `body.events.3.item_id: ...`."},
    503: {"model": ErrorResponse, "description": "Redis down or slow (retry: the same batch is safe to resend), "
                                                 "or no REDIS_URL configured.",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying (when Redis failed).",
                                      "schema": {"type": "integer"}}}},
}


def rejected(metrics: GatewayMetrics, n_events: int) -> None:
    """A batch refused with 422: counted by batch and by event."""
    metrics.event_batches.labels(code="422").inc()
    if n_events:
        metrics.events.labels(outcome="rejected").inc(n_events)


def events_in(body) -> int:
    """How many events a refused body held, as far as can be told."""
    events = body.get("events") if isinstance(body, dict) else None
    return len(events) if isinstance(events, list) else 0


def _problems(batch: EventBatch, runtime: Runtime, now: float) -> list[str]:
    settings = runtime.settings
    if len(batch.events) > settings.max_events_per_batch:
        return [f"body.events: at most {settings.max_events_per_batch} events per batch (got {len(batch.events)})"]
    latest = now + settings.event_max_future_s
    return [f"body.events.{i}.ts: more than {settings.event_max_future_s:g} s in the future"
            for i, e in enumerate(batch.events) if e.ts is not None and e.ts > latest]


async def post_events(batch: EventBatch, runtime: RuntimeDep) -> Response:
    metrics = runtime.metrics
    now = time.time()
    problems = _problems(batch, runtime, now)
    if problems:
        rejected(metrics, len(batch.events))
        return error(422, "invalid request", problems)
    if runtime.events is None:
        metrics.event_batches.labels(code="503").inc()
        return error(503, NO_REDIS)
    events = [Event(e.event_id, e.user_id, e.item_id, e.type, now if e.ts is None else e.ts, e.value, received=now)
              for e in batch.events]
    t = time.perf_counter()
    try:
        outcomes = await runtime.events.append(events)
    except EventsUnavailable as exc:
        metrics.event_batches.labels(code="503").inc()
        log.warning("events: Redis unavailable: %s", exc)
        response = error(503, "event stream unavailable (Redis): retry")
        response.headers["retry-after"] = str(RETRY_AFTER_S)
        return response
    finally:
        metrics.events_append.observe(time.perf_counter() - t)
    accepted = sum(outcomes)
    metrics.event_batches.labels(code="202").inc()
    metrics.events.labels(outcome="accepted").inc(accepted)
    metrics.events.labels(outcome="duplicate").inc(len(outcomes) - accepted)
    return JSONBytes({"accepted": accepted, "duplicates": len(outcomes) - accepted}, status_code=202)


def register(app: FastAPI) -> None:
    app.add_api_route(PATH, post_events, methods=["POST"], status_code=202, response_model=EventsAccepted,
                      responses=RESPONSES, summary="Ingest user events (deduplicated by event_id)")
