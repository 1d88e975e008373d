"""The gateway's request and response schemas: what OpenAPI (``/docs``) documents.

Responses are serialised with orjson straight from dicts (``routes.recommend``), not through
these models: they describe the contract, the hot path does not pay for validating its own output.

``POST /events`` is validated strictly (:class:`EventIn`): no coercion of a bool or a string
into a number, no unknown fields, RFC 3339 timestamps with their offset. The limits that are
settings (events per batch, how far in the future ``ts`` may be) are checked by the route.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, WithJsonSchema

from common.realtime import EVENT_TYPES

USER_ID_MAX = 64
EVENT_ID_MAX = 128
K_MAX = 100


class RequestContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recent_item_ids: list[int] = Field(default_factory=list, max_length=100,
                                       description="Items the user interacted with in this session, most recent first.")
    attributes: dict[str, str] = Field(default_factory=dict, max_length=32,
                                       description="Free-form attributes (device, surface...), passed to the services.")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    user_id: str = Field(min_length=1, max_length=USER_ID_MAX, description="MovieLens user id; unknown ids get cold-start items.")
    k: int = Field(10, ge=1, le=K_MAX, description="Number of items to return.")
    context: RequestContext | None = None
    exclude_item_ids: list[int] = Field(default_factory=list, description="Items that must not be returned.")


class Item(BaseModel):
    item_id: int
    score: float
    title: str | None = Field(None, description="From the bundle's item catalog; null when unknown.")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[Item]
    model_version: str = Field(description="The bundle version that retrieved and ranked this answer.")
    variant: str = Field(description="The arm the user is assigned to: `current`, `canary` and/or the experiment "
                                     "bucket (`experiment:variant` pairs, comma-separated).")
    fallback: str | None = Field(None, description="null, or the fallback rung that served the request.")
    cached: bool
    mode: Literal["online", "precomputed", "hybrid"] = Field(
        description="The path that answered (GATEWAY_SERVING_MODE, or `online` when the precomputed list could not be "
                    "used): `online` = retrieval + ranking for this request; `precomputed` = the user's precomputed list "
                    "after the real-time filters (request exclusions, seen and recent items); `hybrid` = that list "
                    "re-ranked by ranking with the request's context. A cache hit names the path of the cached answer.")
    request_id: str


class ErrorResponse(BaseModel):
    """Every non-2xx answer of the gateway (``responses.error``)."""

    error: str
    detail: list[str] | None = Field(None, description="One line per problem, e.g. `body.events.3.item_id: ...`.")


# -- POST /events ------------------------------------------------------------------------------
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def parse_ts(value):
    """An RFC 3339 date-time string -> epoch seconds; anything else is left to the number
    validation (which refuses a bool)."""
    if not isinstance(value, str):
        return value
    if not _RFC3339.fullmatch(value):
        raise ValueError("ts must be epoch seconds or an RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00Z")
    try:  # the separator and the zone letter may be lower case in RFC 3339, not for fromisoformat
        return datetime.fromisoformat(f"{value[:10]}T{value[11:].upper()}").timestamp()
    except ValueError as exc:
        raise ValueError(f"ts is not a valid RFC 3339 date-time: {exc}") from None


Timestamp = Annotated[
    float,
    BeforeValidator(parse_ts),
    Field(strict=True, ge=0, allow_inf_nan=False),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "description": "epoch seconds"},
                              {"type": "string", "format": "date-time", "description": "RFC 3339"}]}),
]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(min_length=1, max_length=EVENT_ID_MAX, description="Client-chosen unique id: a replay is a duplicate, not a second event.")
    user_id: str = Field(min_length=1, max_length=USER_ID_MAX)
    item_id: StrictInt = Field(ge=0)
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    ts: Timestamp | None = Field(None, description="When it happened: epoch seconds or RFC 3339; default: when received.")
    value: float | None = Field(None, strict=True, allow_inf_nan=False, description="E.g. the rating; a finite number.")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, description="1 .. GATEWAY_MAX_EVENTS_PER_BATCH events.")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events appended to the event stream.")
    duplicates: int = Field(description="Events whose event_id was already accepted (also earlier in the same batch): not appended again.")
