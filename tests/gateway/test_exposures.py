"""The exposure log: /recommend answers in ``{recsys:exp}:stream``, off the request's path.

Full answers on the shared stack (its gateway's Redis is the session one); fallback answers,
sampling, a dead Redis and shutdown on gateways of their own (:func:`lone_gateway`, no services:
every answer is the popular-list fallback) with a private Redis.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis

from common.realtime import EXPOSURES
from deploy.local import Stack, start_redis
from tests.gateway.conftest import lone_gateway, poll


def _exposures(r: redis.Redis, request_ids: set[str] | None = None) -> dict[str, dict]:
    out = {}
    for _, fields in r.xrange(EXPOSURES):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        if request_ids is None or entry["request_id"] in request_ids:
            out[entry["request_id"]] = entry
    return out


def _counter(metrics: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


@pytest.fixture()
def own_redis(tmp_path):
    stack = Stack(tmp_path / "redis")
    url = start_redis(stack)
    client = redis.Redis.from_url(url, socket_timeout=5)
    yield stack, url, client
    client.close()
    stack.stop_all()


def test_full_and_cached_answers_are_logged_with_positions(stack, known_users, redis_url):
    r = redis.Redis.from_url(redis_url, socket_timeout=5)
    user, k = known_users[30], 7
    t = time.time()
    first = stack.get(user, k=k).json()
    assert poll(lambda: stack.get(user, k=k).json()["cached"])
    hit = stack.get(user, k=k).json()
    post = stack.client.post("/recommend", json={"user_id": user, "k": 3, "exclude_item_ids": [1]}).json()
    wanted = {first["request_id"], hit["request_id"], post["request_id"]}
    logged = poll(lambda: (e := _exposures(r, wanted)) and len(e) == 3 and e)
    assert logged, _exposures(r, wanted)
    entry = logged[first["request_id"]]
    assert set(entry) == {"request_id", "user_id", "items", "model_version", "fallback", "cached", "bucket", "ts"}
    assert entry["user_id"] == user
    assert json.loads(entry["items"]) == [[i["item_id"], pos] for pos, i in enumerate(first["items"])]
    assert entry["model_version"] == first["model_version"]
    assert (entry["fallback"], entry["cached"], entry["bucket"]) == ("", "0", "")
    assert t - 1 <= float(entry["ts"]) <= time.time() + 1
    assert logged[hit["request_id"]]["cached"] == "1"
    assert json.loads(logged[hit["request_id"]]["items"]) == json.loads(entry["items"])
    assert len(json.loads(logged[post["request_id"]]["items"])) == 3
    assert 'gateway_exposures_total{outcome="written"}' in stack.metrics()
    r.close()


def test_fallback_answers_are_logged_with_their_rung(tmp_path, bundle_path, own_redis, popular):
    _, url, r = own_redis
    with lone_gateway(tmp_path / "gw", bundle_path, {"REDIS_URL": url}) as gw:
        body = gw.get("/recommend", params={"user_id": "1", "k": 4}).json()
        assert body["fallback"] == "all_unavailable"
        logged = poll(lambda: _exposures(r, {body["request_id"]}))
        entry = logged[body["request_id"]]
        assert entry["fallback"] == "all_unavailable"
        assert json.loads(entry["items"]) == [[item, pos] for pos, item in enumerate(popular[:4])]


def test_explain_is_not_logged(tmp_path, bundle_path, own_redis):
    _, url, r = own_redis
    token = "an-admin-token-long-enough"
    with lone_gateway(tmp_path / "gw", bundle_path, {"REDIS_URL": url, "GATEWAY_ADMIN_TOKEN": token}) as gw:
        resp = gw.get("/debug/explain", params={"user_id": "1", "k": 3}, headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        gw.get("/recommend", params={"user_id": "1", "k": 3})  # a marker: once it is logged, so would be explain
        assert poll(lambda: r.xlen(EXPOSURES) >= 1)
        time.sleep(0.2)
        assert r.xlen(EXPOSURES) == 1


def test_sample_rate_zero_writes_nothing(tmp_path, bundle_path, own_redis):
    _, url, r = own_redis
    with lone_gateway(tmp_path / "gw", bundle_path, {"REDIS_URL": url, "GATEWAY_EXPOSURE_SAMPLE_RATE": "0"}) as gw:
        for _ in range(5):
            assert gw.get("/recommend", params={"user_id": "1", "k": 3}).status_code == 200
        time.sleep(0.3)
        m = gw.get("/metrics").text
    assert r.xlen(EXPOSURES) == 0
    assert _counter(m, 'gateway_exposures_total{outcome="sampled_out"}') == 5
    assert _counter(m, 'gateway_exposures_total{outcome="written"}') == 0


def test_redis_down_never_fails_or_slows_a_request_and_is_counted(tmp_path, bundle_path, own_redis):
    stack, url, _ = own_redis
    env = {"REDIS_URL": url, "GATEWAY_CACHE_TTL_S": "0"}  # no cache: only the exposure log uses Redis
    with lone_gateway(tmp_path / "gw", bundle_path, env) as gw:
        stack.signal("redis", signal.SIGSTOP)  # stalled: every write times out
        try:
            times = []
            for _ in range(10):
                t = time.perf_counter()
                resp = gw.get("/recommend", params={"user_id": "1", "k": 3})
                times.append(time.perf_counter() - t)
                assert resp.status_code == 200
            assert max(times) < 0.5, times  # a stalled write costs the writer its timeout, not the request
        finally:
            stack.signal("redis", signal.SIGCONT)
        stack.signal("redis", signal.SIGKILL)
        for _ in range(5):
            assert gw.get("/recommend", params={"user_id": "1", "k": 3}).status_code == 200
        assert poll(lambda: _counter(gw.get("/metrics").text, 'gateway_exposures_total{outcome="failed"}') >= 1)


def test_a_full_queue_drops_and_counts(tmp_path, bundle_path, own_redis):
    stack, url, _ = own_redis
    env = {"REDIS_URL": url, "GATEWAY_CACHE_TTL_S": "0", "GATEWAY_EXPOSURE_QUEUE_SIZE": "1"}
    with lone_gateway(tmp_path / "gw", bundle_path, env) as gw:
        stack.signal("redis", signal.SIGSTOP)  # the writer is stuck on its first batch
        try:
            for _ in range(6):
                assert gw.get("/recommend", params={"user_id": "1", "k": 3}).status_code == 200
            m = gw.get("/metrics").text
        finally:
            stack.signal("redis", signal.SIGCONT)
    assert _counter(m, 'gateway_exposures_total{outcome="dropped"}') >= 1


def test_queued_exposures_are_written_at_shutdown(tmp_path: Path, bundle_path, own_redis):
    _, url, r = own_redis
    with lone_gateway(tmp_path / "gw", bundle_path, {"REDIS_URL": url}) as gw:
        ids = {gw.get("/recommend", params={"user_id": str(i), "k": 2}).json()["request_id"] for i in range(20)}
        gw.stack.stop("gateway")  # SIGTERM: the lifespan drains the queue
    assert set(_exposures(r, ids)) == ids
