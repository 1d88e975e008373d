"""POST /events against a real gateway process and a private Redis (killed and stalled here).

The gateway runs alone (:func:`lone_gateway`): ingest needs no retrieval or ranking. Each event id
is unique to its test (a uuid prefix), so the stream and idempotency keys are read exactly.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.realtime import ACCEPTED, STREAM, decode_entry, event_id_key
from deploy.local import Stack, free_port, start_redis
from tests.gateway.conftest import lone_gateway


@pytest.fixture(scope="module")
def events_redis(tmp_path_factory) -> Iterator[tuple[Stack, int]]:
    stack = Stack(tmp_path_factory.mktemp("events-redis"))
    port = free_port()
    start_redis(stack, port)
    yield stack, port
    stack.stop_all()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, bundle_path: Path, events_redis):
    _, port = events_redis
    with lone_gateway(tmp_path_factory.mktemp("events-gw"), bundle_path,
                      {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "GATEWAY_EVENTS_TIMEOUT_MS": "300"}) as client:
        yield client


@pytest.fixture()
def r(events_redis) -> Iterator[redis.Redis]:
    _, port = events_redis
    client = redis.Redis(port=port, socket_timeout=5)
    yield client
    client.close()


def _ids(n: int) -> list[str]:
    prefix = uuid.uuid4().hex[:8]
    return [f"{prefix}-{i}" for i in range(n)]


def _event(event_id: str, **kw) -> dict:
    return {"event_id": event_id, "user_id": "u-events", "item_id": 50, "type": "click", **kw}


def _entries(r: redis.Redis, event_ids: list[str]) -> list[dict]:
    wanted = set(event_ids)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in r.xrange(STREAM)
            if fields[b"event_id"].decode() in wanted]


def test_accepted_events_are_in_the_stream_with_every_field(gw, r):
    ids = _ids(2)
    t = time.time()
    resp = gw.post("/events", json={"events": [
        _event(ids[0], type="rating", value=4.5, ts="2024-05-01T12:00:00.250+02:00", item_id=181),
        _event(ids[1], user_id="u-other"),  # no ts: now; no value
    ]})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": 2, "duplicates": 0}
    first, second = _entries(r, ids)
    assert first == {"event_id": ids[0], "user_id": "u-events", "item_id": "181", "type": "rating",
                     "ts": repr(1714557600.25), "value": "4.5", "received": first["received"]}
    assert t - 1 <= float(first["received"]) <= time.time() + 1
    assert set(second) == {"event_id", "user_id", "item_id", "type", "ts", "received"}
    assert second["ts"] == second["received"], "no ts: the time it was received"
    assert decode_entry(second).user_id == "u-other"
    assert r.get(event_id_key(ids[0])) == ACCEPTED
    assert 86400 - 60 <= r.ttl(event_id_key(ids[0])) <= 86400


def test_epoch_seconds_ts_is_kept(gw, r):
    [eid] = _ids(1)
    assert gw.post("/events", json={"events": [_event(eid, ts=1700000000)]}).status_code == 202
    assert _entries(r, [eid])[0]["ts"] == repr(1700000000.0)


def test_a_replayed_batch_is_all_duplicates_and_appends_nothing(gw, r):
    batch = {"events": [_event(i) for i in _ids(3)]}
    assert gw.post("/events", json=batch).json() == {"accepted": 3, "duplicates": 0}
    length = r.xlen(STREAM)
    again = gw.post("/events", json=batch)
    assert again.status_code == 202
    assert again.json() == {"accepted": 0, "duplicates": 3}
    assert r.xlen(STREAM) == length


def test_a_repeated_id_inside_one_batch_is_a_duplicate(gw, r):
    a, b = _ids(2)
    resp = gw.post("/events", json={"events": [_event(a, item_id=1), _event(b), _event(a, item_id=2)]})
    assert resp.json() == {"accepted": 2, "duplicates": 1}
    entries = _entries(r, [a])
    assert [e["item_id"] for e in entries] == ["1"], "the first one is kept"


# the bad event is always at index 3, after three good ones: the message names the index
@pytest.mark.parametrize(("bad", "field"), [
    ({"item_id": True}, "item_id"),
    ({"item_id": "7"}, "item_id"),
    ({"item_id": 1.5}, "item_id"),
    ({"item_id": -1}, "item_id"),
    ({"type": "like"}, "type"),
    ({"event_id": ""}, "event_id"),
    ({"event_id": "x" * 129}, "event_id"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": "u" * 65}, "user_id"),
    ({"user_id": 7}, "user_id"),
    ({"ts": True}, "ts"),
    ({"ts": "2024-13-01T00:00:00Z"}, "ts"),
    ({"ts": "2024-05-01"}, "ts"),
    ({"ts": "2024-05-01T12:00:00"}, "ts"),  # RFC 3339 requires the offset
    ({"ts": "yesterday"}, "ts"),
    ({"ts": "far future"}, "ts"),
    ({"value": True}, "value"),
    ({"value": "4"}, "value"),
    ({"extra": 1}, "extra"),
])
def test_invalid_event_is_422_naming_index_and_field_and_nothing_is_taken(gw, r, bad, field):
    if bad.get("ts") == "far future":
        bad = {"ts": time.time() + 3600}
    ids = _ids(4)
    events = [_event(i) for i in ids[:3]] + [{**_event(ids[3]), **bad}]
    length = r.xlen(STREAM)
    resp = gw.post("/events", json={"events": events})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "invalid request"
    assert any(line.startswith(f"body.events.3.{field}") for line in body["detail"]), body
    assert r.xlen(STREAM) == length, "a refused batch takes nothing"
    assert not r.exists(event_id_key(ids[0]))


def test_ts_slightly_ahead_is_accepted(gw):
    [eid] = _ids(1)
    assert gw.post("/events", json={"events": [_event(eid, ts=time.time() + 60)]}).status_code == 202


def test_nan_value_is_422(gw):
    resp = gw.post("/events", content=b'{"events": [{"event_id": "n", "user_id": "u", "item_id": 1, '
                                      b'"type": "rating", "value": NaN}]}', headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["detail"][0].startswith("body.events.0.value"), resp.text


@pytest.mark.parametrize(("body", "needle"), [
    ({"events": []}, "body.events"),
    ({}, "body.events"),
    ({"events": [{"event_id": "a", "user_id": "u", "item_id": 1, "type": "view"}], "more": 1}, "body.more"),
])
def test_invalid_batch_is_422(gw, body, needle):
    resp = gw.post("/events", json=body)
    assert resp.status_code == 422, resp.text
    assert any(line.startswith(needle) for line in resp.json()["detail"]), resp.json()


def test_more_events_than_the_batch_limit_is_422(gw, r):
    length = r.xlen(STREAM)
    resp = gw.post("/events", json={"events": [_event(i) for i in _ids(501)]})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"] == ["body.events: at most 500 events per batch (got 501)"]
    assert r.xlen(STREAM) == length


def test_events_have_their_own_body_limit(gw):
    # over /recommend's 16 KiB limit, under /events' 256 KiB: accepted
    events = [_event(i, user_id="u" * 60) for i in _ids(200)]
    content = json.dumps({"events": events}).encode()
    assert 16384 < len(content) < 262144
    resp = gw.post("/events", content=content, headers={"content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == 200
    big = b'{"events": [], "pad": "' + b"x" * 262144 + b'"}'
    resp = gw.post("/events", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert resp.json() == {"error": "request body larger than 262144 bytes"}
    # /recommend keeps its own limit
    resp = gw.post("/recommend", content=b'{"user_id": "1", "pad": "' + b"x" * 20000 + b'"}',
                   headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "16384" in resp.json()["error"]


def test_events_metrics(gw):
    m = gw.get("/metrics").text
    for line in ('gateway_events_total{outcome="accepted"}', 'gateway_events_total{outcome="duplicate"}',
                 'gateway_events_total{outcome="rejected"}', 'gateway_event_batches_total{code="202"}',
                 'gateway_event_batches_total{code="422"}', 'gateway_event_batches_total{code="413"}',
                 "gateway_events_append_seconds_count"):
        assert line in m, line


def test_redis_killed_is_503_with_retry_after_then_recovers(gw, r, events_redis):
    stack, port = events_redis
    stack.signal("redis", signal.SIGKILL)
    try:
        for _ in range(3):
            t = time.perf_counter()
            resp = gw.post("/events", json={"events": [_event(i) for i in _ids(2)]})
            assert resp.status_code == 503, resp.text
            assert resp.headers["retry-after"] == "1"
            assert "error" in resp.json()
            assert time.perf_counter() - t < 2.0
        assert 'gateway_event_batches_total{code="503"}' in gw.get("/metrics").text
    finally:
        stack.stop("redis")
        start_redis(stack, port)  # a fresh, empty Redis: the script is loaded again (NOSCRIPT)
    ids = _ids(2)
    resp = gw.post("/events", json={"events": [_event(i) for i in ids]})
    assert (resp.status_code, resp.json()) == (202, {"accepted": 2, "duplicates": 0}), resp.text
    assert len(_entries(r, ids)) == 2


def test_redis_stalled_is_503_within_the_timeout(gw, events_redis):
    stack, _ = events_redis
    stack.signal("redis", signal.SIGSTOP)
    try:
        t = time.perf_counter()
        resp = gw.post("/events", json={"events": [_event(i) for i in _ids(1)]})
        took = time.perf_counter() - t
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "1"
        assert took < 0.300 + 1.0, took  # GATEWAY_EVENTS_TIMEOUT_MS=300, plus a loaded machine's margin
    finally:
        stack.signal("redis", signal.SIGCONT)
    resp = gw.post("/events", json={"events": [_event(i) for i in _ids(1)]})
    assert resp.status_code == 202, resp.text


def test_without_redis_url_events_are_503_saying_so(tmp_path, bundle_path):
    with lone_gateway(tmp_path, bundle_path, {"REDIS_URL": ""}) as client:
        resp = client.post("/events", json={"events": [_event("x")]})
        assert resp.status_code == 503, resp.text
        assert "REDIS_URL" in resp.json()["error"]
        # and /recommend still answers (a fallback: no services here), with no exposure log
        rec = client.get("/recommend", params={"user_id": "1", "k": 3})
        assert rec.status_code == 200 and rec.json()["fallback"] == "all_unavailable"
        assert "gateway_exposures_total{" not in client.get("/metrics").text
