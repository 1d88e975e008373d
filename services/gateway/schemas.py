"""The gateway's request and response schemas: what OpenAPI (``/docs``) documents.

Responses are serialised with orjson straight from dicts (``routes.recommend``), not through
these models: they describe the contract, the hot path does not pay for validating its own output.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

USER_ID_MAX = 64
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
    model_version: str
    fallback: str | None = Field(None, description="null, or the fallback rung that served the request.")
    cached: bool
    request_id: str
