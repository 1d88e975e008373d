"""``GET/POST /debug/explain``: the answer to a /recommend request plus how it was made.

Admin only: ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>``, compared in constant time
(:func:`services.gateway.deps.admin_refusal`). Without a configured token the endpoint does not exist (404), so a deployment that never set one exposes
nothing; a missing or wrong token is 401. The request is answered by the same recommender as
/recommend, with ``explain`` switched on: the pipeline runs in full (cache status is reported,
not used), retrieval and ranking return their account of it, and nothing is cached. A plain
/recommend collects none of this.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi import Query as Q
from fastapi.responses import Response

from services.gateway.deps import Runtime, RuntimeDep, admin_refusal
from services.gateway.pipeline import Query
from services.gateway.responses import JSONBytes
from services.gateway.routes.recommend import query_from_body
from services.gateway.schemas import K_MAX, USER_ID_MAX, RecommendRequest

RESPONSES = {
    401: {"description": "Missing or wrong `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`."},
    404: {"description": "Disabled: no GATEWAY_ADMIN_TOKEN is configured."},
    422: {"description": "Invalid request (the same rules as /recommend)."},
}


async def _explain(q: Query, runtime: Runtime):
    explain: dict = {}
    t = time.perf_counter()
    result = await runtime.recommender.recommend(q, explain=explain)
    ranking = explain.get("ranking")
    if ranking:  # the scorer's inputs of the returned items only
        shown = {str(i["item_id"]) for i in result.items}
        ranking["items"] = {i: row for i, row in ranking["items"].items() if i in shown}
    catalog = runtime.catalog
    explain["gateway"] = {"bundle": catalog.version or None, "bundle_error": catalog.error,
                          "ladder": list(runtime.recommender.ladder),
                          "seconds": round(time.perf_counter() - t, 6)}
    answer = {"user_id": q.user_id, "items": result.items, "model_version": result.model_version,
              "variant": result.assignment.variant if result.assignment else None,
              "fallback": result.fallback, "cached": result.cached, "mode": result.mode}
    return JSONBytes({"answer": answer, "explain": explain})


async def explain_get(
    request: Request,
    runtime: RuntimeDep,
    user_id: Annotated[str, Q(min_length=1, max_length=USER_ID_MAX, description="MovieLens user id")],
    k: Annotated[int, Q(ge=1, le=K_MAX, description="Number of items")] = 10,
):
    if (refused := admin_refusal(request, runtime)) is not None:
        return refused
    return await _explain(Query(user_id=user_id, k=k), runtime)


async def explain_post(request: Request, body: RecommendRequest, runtime: RuntimeDep):
    if (refused := admin_refusal(request, runtime)) is not None:
        return refused
    q = query_from_body(body, runtime)
    return q if isinstance(q, Response) else await _explain(q, runtime)


def register(app: FastAPI) -> None:
    app.add_api_route("/debug/explain", explain_get, methods=["GET"], responses=RESPONSES,
                      summary="Admin: the answer for a user, and how it was made")
    app.add_api_route("/debug/explain", explain_post, methods=["POST"], responses=RESPONSES,
                      summary="Admin: the answer for a /recommend body, and how it was made")
