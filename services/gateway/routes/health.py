"""``/healthz`` (the process is alive) and ``/readyz`` (retrieval and ranking report SERVING over
the standard gRPC health service; 503 with each dependency's status otherwise). In
``GATEWAY_MODE=inprocess`` the stages are loaded before the app serves at all (lifespan), so once
the runtime exists they are SERVING; same response shape."""

from __future__ import annotations

import asyncio

import grpc
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.channels import SERVICE_NAMES as SERVICES
from services.gateway.deps import StartingRuntimeDep
from services.gateway.responses import JSONBytes, error


async def serving_status(channel: grpc.aio.Channel, service: str, timeout: float) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def healthz():
    return JSONBytes({"status": "alive"})


async def readyz(runtime: StartingRuntimeDep):
    if runtime is None or not (runtime.channels or runtime.stages):
        return error(503, "starting")
    names = list(SERVICES)
    if runtime.channels:
        timeout = runtime.settings.readiness_timeout_ms / 1000.0
        statuses = await asyncio.gather(*(serving_status(runtime.channels[n], SERVICES[n], timeout) for n in names))
    else:  # in-process stages: loaded and warmed up in the lifespan
        statuses = ["SERVING" if runtime.stages.get(n) is not None else "NOT_SERVING" for n in names]
    deps = dict(zip(names, statuses, strict=True))
    ready = all(s == "SERVING" for s in statuses)
    catalog = runtime.catalog
    body = {"ready": ready, "dependencies": deps, "cache": runtime.cache.name,
            "bundle": catalog.version or None, "bundle_error": catalog.error,
            "deployment": runtime.deployment.status() if runtime.deployment is not None else None}
    return JSONBytes(body, status_code=200 if ready else 503)


def register(app: FastAPI) -> None:
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness")
    app.add_api_route("/readyz", readyz, methods=["GET"], summary="Readiness: retrieval and ranking SERVING over gRPC health")
