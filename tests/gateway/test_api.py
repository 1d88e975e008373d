"""/recommend against a real stack: retrieval, ranking and gateway processes, a private Redis."""

from __future__ import annotations

import time

import pytest

from common.bundle import load_bundle


def test_happy_path(stack, bundle_path, known_users):
    user = known_users[0]
    r = stack.get(user, k=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user
    assert body["fallback"] is None
    assert body["cached"] is False
    assert body["model_version"] == load_bundle(bundle_path, verify=False).version
    items = body["items"]
    assert len(items) == 10
    ids = [i["item_id"] for i in items]
    assert len(set(ids)) == 10
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True), "ranked best first"
    assert all(isinstance(i["title"], str) and i["title"] for i in items), "ml-100k titles come from the catalog"
    assert body["request_id"]
    assert r.headers["x-request-id"] == body["request_id"]


def test_different_users_get_different_lists(stack, known_users):
    lists = {tuple(i["item_id"] for i in stack.get(u, k=10).json()["items"]) for u in known_users[:5]}
    assert len(lists) > 1, "personalised: five users should not all get the same list"


def test_post_with_context_and_exclusions(stack, known_users):
    user = known_users[1]
    first = stack.client.post("/recommend", json={"user_id": user, "k": 20}).json()
    excluded = [i["item_id"] for i in first["items"][:5]]
    r = stack.client.post("/recommend", json={
        "user_id": user, "k": 20, "exclude_item_ids": excluded,
        "context": {"recent_item_ids": [50, 181], "attributes": {"device": "tv"}},
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is None
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert not set(ids) & set(excluded)


def test_unknown_user_gets_cold_start_items(stack):
    r = stack.get("someone-new-123", k=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 7
    assert body["fallback"] is None


def test_cache_hit_after_miss(stack, known_users):
    user, k = known_users[2], 13  # a key no other test uses
    first = stack.get(user, k=k).json()
    assert first["cached"] is False
    deadline = time.monotonic() + 5  # the cache write happens right after the response
    while True:
        second = stack.get(user, k=k).json()
        if second["cached"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert second["cached"] is True
    assert second["items"] == first["items"]
    assert second["model_version"] == first["model_version"]
    assert second["request_id"] != first["request_id"]
    # a different request shape is a different key
    other = stack.client.post("/recommend", json={"user_id": user, "k": k, "exclude_item_ids": [1]}).json()
    assert other["cached"] is False
    m = stack.metrics()
    assert 'gateway_cache_requests_total{result="hit"}' in m


@pytest.mark.parametrize(
    ("method", "kwargs", "needle"),
    [
        ("GET", {"params": {"k": 10}}, "user_id"),
        ("GET", {"params": {"user_id": "1", "k": 0}}, "k"),
        ("GET", {"params": {"user_id": "1", "k": 101}}, "k"),
        ("GET", {"params": {"user_id": "1", "k": "ten"}}, "k"),
        ("GET", {"params": {"user_id": "", "k": 5}}, "user_id"),
        ("GET", {"params": {"user_id": "x" * 65, "k": 5}}, "user_id"),
        ("POST", {"json": {"k": 5}}, "user_id"),
        ("POST", {"json": {"user_id": "1", "k": 500}}, "k"),
        ("POST", {"json": {"user_id": "1", "k": 5, "exclude_item_ids": ["a"]}}, "exclude_item_ids"),
        ("POST", {"json": {"user_id": "1", "k": 5, "context": {"recent_item_ids": "nope"}}}, "recent_item_ids"),
        ("POST", {"json": {"user_id": ["1"], "k": 5}}, "user_id"),
        ("POST", {"json": {"user_id": "1", "unexpected": 1}}, "unexpected"),
        ("POST", {"content": b"{not json", "headers": {"content-type": "application/json"}}, "json"),
        ("POST", {"json": {"user_id": "1", "exclude_item_ids": list(range(1001))}}, "exclude_item_ids"),
    ],
)
def test_bad_input_is_422_with_a_message(stack, method, kwargs, needle):
    r = stack.client.request(method, "/recommend", **kwargs)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid request"
    assert any(needle in line.lower() for line in body["detail"]), body


def test_oversized_body_is_refused(stack):
    r = stack.client.post("/recommend", content=b'{"user_id": "1", "pad": "' + b"x" * 20000 + b'"}',
                          headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "larger than" in r.json()["error"]


def test_health_readiness_docs(stack):
    assert stack.client.get("/healthz").status_code == 200
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["dependencies"] == {"retrieval": "SERVING", "ranking": "SERVING"}
    assert stack.client.get("/docs").status_code == 200
    assert "/recommend" in stack.client.get("/openapi.json").json()["paths"]


def test_metrics_are_exposed(stack, known_users):
    stack.get(known_users[3], k=5)
    m = stack.metrics()
    for name in ('gateway_stage_latency_seconds_bucket{le="0.005",stage="total"}',
                 'gateway_stage_latency_seconds_count{stage="retrieval"}',
                 'gateway_stage_latency_seconds_count{stage="ranking"}',
                 'gateway_stage_latency_seconds_count{stage="cache"}',
                 'gateway_cache_requests_total{result="miss"}',
                 'gateway_circuit_breaker_state{breaker="ranking",gateway_circuit_breaker_state="closed"} 1.0',
                 "gateway_candidates_bucket", "gateway_model_info{", 'gateway_requests_total{code="200"}'):
        assert name in m, name
    assert "gateway_catalog_items 0.0" not in m


def test_one_trace_spans_gateway_retrieval_and_ranking(stack, collector, known_users):
    r = stack.get(known_users[4], k=5)
    assert r.status_code == 200
    trace_id = r.headers["x-trace-id"]
    assert r.json()["request_id"] == trace_id
    assert r.headers["traceparent"].split("-")[1] == trace_id

    def children_of_gateway(spans: list[dict], svc: str) -> list[dict]:
        by_id = {s["span_id"]: s for s in spans}
        return [s for s in spans if s["service"] == svc and s["parent_span_id"] in by_id
                and by_id[s["parent_span_id"]]["service"] == "gateway"]

    # (a known user: the popular back-fill is not needed, so it is not asked and has no span)
    components = {("retrieval", "source two_tower"), ("retrieval", "source item_to_item"),
                  ("retrieval", "merge"), ("ranking", "scorer onnx_ranker")}

    def complete(spans: list[dict]) -> bool:
        return (all(children_of_gateway(spans, svc) for svc in ("retrieval", "ranking"))
                and components <= {(s["service"], s["name"]) for s in spans})

    # the gateway's client spans (the parents) may arrive after the services' server spans
    spans = collector.wait_for(trace_id, complete)
    assert {"gateway", "retrieval", "ranking"} <= {s["service"] for s in spans}, spans
    for svc in ("retrieval", "ranking"):
        assert children_of_gateway(spans, svc), f"{svc} spans are not children of a gateway span of this trace: {spans}"
    assert ("retrieval", "source popular") not in {(s["service"], s["name"]) for s in spans}
    # every component has a span of its own, inside its service's server span
    by_id = {s["span_id"]: s for s in spans}
    for svc, name in components:
        mine = [s for s in spans if s["service"] == svc and s["name"] == name]
        assert mine, f"no span {name!r} from {svc}: {sorted((s['service'], s['name']) for s in spans)}"
        assert by_id[mine[0]["parent_span_id"]]["service"] == svc
