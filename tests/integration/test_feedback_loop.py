"""The feedback loop end to end, on real processes: POST /events -> Redis Stream -> the events
consumer -> Feast rows, seen set, generation -> the next /recommend.

Retrieval, ranking, the gateway (response cache on) and ``python -m services.events`` run as
processes on free ports over one private Redis into which a private Feast project was
materialised (the latest row per entity, as the online store holds: feature_store.testing).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from common.realtime import user_events_key, user_seen_key
from deploy.local import Ports, Stack, start_services
from tests.integration.helpers import feast_db, recommend, wait_item_gone

TOKEN = "feedback-loop-test-admin-token"


@dataclass
class Loop:
    url: str
    events_url: str
    redis: redis.Redis
    stack: Stack


@pytest.fixture(scope="module")
def loop(redis_url: str, bundle_path, tmp_path_factory) -> Iterator[Loop]:
    work = tmp_path_factory.mktemp("feedback-loop")
    stack = Stack(work / "run")
    ports = Ports.free()
    with feast_db(redis_url, 5, work) as db:  # a database of its own in the session's Redis
        env = {**db.env, "ARTIFACTS_DIR": str(bundle_path), "RETRIEVAL_WARMUP_REQUESTS": "5",
               "RANKING_WARMUP_REQUESTS": "5", "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1"}
        try:
            gw = start_services(stack, ports, db.url, extra_env=env, events=True,
                                gateway_env={"GATEWAY_CACHE_TTL_S": "300", "GATEWAY_ADMIN_TOKEN": TOKEN,
                                             "GATEWAY_ENVIRONMENT": "dev"})
            yield Loop(gw, f"http://127.0.0.1:{ports.events_metrics}", db.client, stack)
        finally:
            stack.stop_all()


def test_a_click_leaves_the_next_answer_and_enters_the_user_context(loop: Loop):
    user = "1"
    with httpx.Client(base_url=loop.url, timeout=5.0) as client:
        recommend(client, user)
        cached = recommend(client, user)
        assert cached["cached"] is True  # the answer the click must not be hidden behind
        item = cached["items"][0]["item_id"]
        batch = {"events": [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": "click"}]}
        r = client.post("/events", json=batch)
        assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0}
        after, seconds = wait_item_gone(client, user, item)
        assert seconds < 1.0, f"the click took {seconds:.3f}s to show"
        assert after["fallback"] is None
        # the clicked item is now the most recent item of the user tower's input, and seen
        ex = client.get("/debug/explain", params={"user_id": user, "k": 10},
                        headers={"authorization": f"Bearer {TOKEN}"})
        assert ex.status_code == 200, ex.text
        assert ex.json()["explain"]["retrieval"]["user"]["recent_item_ids"][0] == item
        assert loop.redis.sismember(user_seen_key(user), item)

        # the same batch again: acknowledged as duplicates, applied once
        again = client.post("/events", json=batch)
        assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 1}
        assert loop.redis.zcard(user_events_key(user)) == 1


def test_a_view_is_recent_context_but_not_seen(loop: Loop):
    user = "2"
    with httpx.Client(base_url=loop.url, timeout=5.0) as client:
        item = recommend(client, user)["items"][0]["item_id"]
        r = client.post("/events", json={"events": [
            {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": "view"}]})
        assert r.status_code == 202
        deadline = time.monotonic() + 5
        while loop.redis.zcard(user_events_key(user)) == 0:
            assert time.monotonic() < deadline, "the view was never applied"
            time.sleep(0.01)
        assert not loop.redis.sismember(user_seen_key(user), item)  # "seen" types are click, cart, purchase, rating


def test_the_consumer_reports_health_and_metrics(loop: Loop):
    with httpx.Client(base_url=loop.events_url, timeout=5.0) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        text = client.get("/metrics").text
    assert "recsys_events_applied_total" in text and "recsys_events_lag_entries" in text
