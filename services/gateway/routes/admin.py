"""``POST /admin/reload``: check ``current`` and ``rollout.json`` now instead of at the next poll.

Admin only (``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>``; 404 without a configured token).
The gateway re-reads the canary and, when ``current`` moved, loads the new catalog and pins
requests to the new version; in ``GATEWAY_MODE=inprocess`` it also loads the stages' new arms
(which can take seconds: the call returns when they are in). In ``grpc`` mode retrieval and
ranking follow on their own (``*_RELOAD_POLL_S``, or ``kill -HUP``); their ``/status`` page on
the metrics port shows what they hold.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from services.gateway.deps import RuntimeDep, admin_refusal
from services.gateway.responses import JSONBytes
from services.gateway.schemas import ErrorResponse

RESPONSES = {
    200: {"description": "What changed (`changed`: the catalog version pinned from now on, or a refused "
                         "bundle) and the deployment as this gateway now sees it (current, canary)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`."},
    404: {"model": ErrorResponse, "description": "Disabled: no GATEWAY_ADMIN_TOKEN is configured."},
}


async def reload(request: Request, runtime: RuntimeDep):
    if (refused := admin_refusal(request, runtime)) is not None:
        return refused
    changed = await runtime.deployment.check()
    return JSONBytes({"changed": changed, "deployment": runtime.deployment.status()})


def register(app: FastAPI) -> None:
    app.add_api_route("/admin/reload", reload, methods=["POST"], responses=RESPONSES,
                      summary="Admin: follow a new current bundle / canary now")
