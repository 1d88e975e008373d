"""``popular`` and ``item_to_item`` reading the events loop's live state from a real Redis.

The keys are written here the way the events consumer writes them (common/realtime.py: one
``PopularScale`` for the decayed popularity, co-visitation counts per item); the consumer's own
tests check that it writes them, these that the sources read and blend them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from benchmarks.harness import bundle_ids
from common.bundle import load_bundle
from common.realtime import ITEM_COUNTS, POPULAR, POPULAR_META, PopularScale, covisit_key
from services.components.sources.item_to_item import ItemToItemSource
from services.components.sources.popular import PopularSource
from services.components.types import Query
from services.live import LiveState

DB = 7  # a database of its own in the session's Redis


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(redis_url, db=DB, socket_timeout=1.0)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path, verify=False)


def _popular(bundle, live, **options) -> PopularSource:
    src = PopularSource("popular", refresh_s=0.0, **options)
    src.load_artifacts(bundle)
    src.attach(live)
    return src


def test_live_popularity_is_added_to_the_bundle_prior(client, bundle):
    live = LiveState(client, registry=_registry())
    src = _popular(bundle, live, prior_events=100.0)
    q = Query(user_id="new", uid=None, k=10)
    before = src.fetch(q, 10)
    np.testing.assert_array_equal(before.item_ids, src.bundle_ids[:10])  # no live state yet: the bundle's list
    tail_item = int(src.bundle_ids[-1])  # the least popular item of the bundle
    now = time.time()
    scale = PopularScale(epoch=now - 3600, half_life_s=21600)
    client.hset(POPULAR_META, mapping={"epoch": scale.epoch, "half_life_s": scale.half_life_s})
    client.zincrby(POPULAR, scale.increment(500.0, now), tail_item)  # 500 events just now
    after = src.fetch(q, 10)
    assert int(after.item_ids[0]) == tail_item  # 500 fresh events outweigh a 100-event prior
    assert after.scores[0] == pytest.approx(500.0 + 100.0 * src.bundle_scores[-1] / src.bundle_scores.sum(), rel=1e-3)
    # decay: the same events a day ago (4 half-lives) weigh 1/16
    client.delete(POPULAR)
    client.zincrby(POPULAR, scale.increment(500.0, now - 86400), tail_item)
    old = src.fetch(q, len(src.bundle_ids))
    pos = int(np.flatnonzero(old.item_ids == tail_item)[0])
    assert old.scores[pos] == pytest.approx(500.0 / 16 + 100.0 * src.bundle_scores[-1] / src.bundle_scores.sum(), rel=1e-3)


def test_popular_keeps_serving_when_redis_fails(client, bundle):
    registry = _registry()
    dead = LiveState(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), registry=registry)
    src = _popular(bundle, dead)
    got = src.fetch(Query(user_id="new", uid=None, k=5), 5)
    np.testing.assert_array_equal(got.item_ids, src.bundle_ids[:5])
    assert registry.get_sample_value("recsys_live_state_errors_total", {"read": "popular"}) == 1.0


def test_live_covisitation_adds_neighbours_of_the_recent_items(client, bundle):
    live = LiveState(client, registry=_registry())
    src = ItemToItemSource("item_to_item")
    src.load_artifacts(bundle)
    seed = int(src.table.item_ids[0])
    table_ids, _ = src.table.lookup(np.array([seed]), 1000)
    newcomer = int(next(i for i in bundle_ids(bundle.root, "item_ids") if i not in set(table_ids.tolist()) and i != seed))
    q = Query(user_id="1", uid=1, k=10, recent=np.array([seed], np.int64))
    src.attach(live)
    without = src.fetch(q, 20)
    assert newcomer not in without.item_ids.tolist()
    # users watched `newcomer` right after `seed` 50 times today
    client.zadd(covisit_key(seed), {newcomer: 50})
    client.hset(ITEM_COUNTS, mapping={seed: 50, newcomer: 50})
    with_live = src.fetch(q, 20)
    assert int(with_live.item_ids[0]) == newcomer  # cosine 1.0 beats every table neighbour
    assert with_live.scores[0] == pytest.approx(1.0, rel=1e-5)
    assert seed not in with_live.item_ids.tolist()
    off = ItemToItemSource("item_to_item", live_seeds=0)
    off.load_artifacts(bundle)
    off.attach(live)
    assert off.live is None and newcomer not in off.fetch(q, 20).item_ids.tolist()


def _registry():
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()
