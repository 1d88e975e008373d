"""The gateway app as create_app assembles it (schemas, routes, deps, middleware), in-process and
without its lifespan: no channels, no stack."""

from __future__ import annotations

import asyncio

import httpx

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def _get(app, method: str, path: str, **kw) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def _schema(response: dict) -> dict:
    return response["content"]["application/json"]["schema"]


def test_openapi_documents_every_route_and_status():
    paths = create_app(GatewaySettings()).openapi()["paths"]
    # /metrics is not part of the API
    assert set(paths) == {"/recommend", "/events", "/debug/explain", "/admin/reload", "/healthz", "/readyz"}
    for op in paths["/debug/explain"].values():  # admin: every refusal documented
        assert {"200", "401", "404", "422"} <= set(op["responses"])
    assert set(paths["/admin/reload"]["post"]["responses"]) == {"200", "401", "404"}
    assert set(paths["/recommend"]) == {"get", "post"}
    error_model = {"$ref": "#/components/schemas/ErrorResponse"}
    for method, op in paths["/recommend"].items():
        responses = op["responses"]
        # no 5xx: a failing dependency is a fallback answer (said in the description)
        assert set(responses) == ({"200", "422"} if method == "get" else {"200", "413", "422"})
        assert _schema(responses["200"]) == {"$ref": "#/components/schemas/RecommendResponse"}
        assert all(_schema(responses[c]) == error_model for c in responses if c != "200")
        assert "fallback" in op["description"]
    events = paths["/events"]["post"]["responses"]
    assert set(events) == {"202", "413", "422", "503"}
    assert _schema(events["202"]) == {"$ref": "#/components/schemas/EventsAccepted"}
    assert all(_schema(events[c]) == error_model for c in ("413", "422", "503"))
    assert "Retry-After" in events["503"]["headers"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200"}


def test_before_the_lifespan_readyz_says_starting_and_healthz_is_alive():
    app = create_app(GatewaySettings())
    r = _get(app, "GET", "/readyz")
    assert (r.status_code, r.json()) == (503, {"error": "starting"})
    assert _get(app, "GET", "/healthz").json() == {"status": "alive"}


def test_invalid_body_is_422_in_the_gateway_shape_and_counted(bundle_path):
    # with its lifespan (channels to nowhere connect lazily; the in-process cache without REDIS_URL)
    app = create_app(GatewaySettings(ARTIFACTS_DIR=bundle_path, REDIS_URL=None))

    async def go():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.post("/recommend", json={"user_id": "1", "k": 0}), await client.get("/metrics")

    r, metrics = asyncio.run(go())
    assert r.status_code == 422
    assert r.json()["error"] == "invalid request" and r.json()["detail"][0].startswith("body.k:")
    assert 'gateway_requests_total{code="422"} 1.0' in metrics.text


def test_body_limit_is_413():
    app = create_app(GatewaySettings(max_body_bytes=256))
    r = _get(app, "POST", "/recommend", content=b"{" + b" " * 300 + b"}", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"error": "request body larger than 256 bytes"})
