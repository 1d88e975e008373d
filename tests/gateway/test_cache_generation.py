"""Response cache invalidation by per-user generation (``INCR {u:<user>}:gen`` by the consumer).

On a real stack and its Redis (the test bumps the generation with redis-py, as the consumer
does), and in-process with a real Redis for the race: an answer computed while the generation
moved is written with the generation its request started with, so it is never served.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis
from redis.crc import key_slot

from common.realtime import generation_key, user_recent_key
from services.gateway.cache import (
    InProcessCache,
    NullCache,
    RedisCache,
    cache_key,
    encode_entry,
    fresh_entry,
    stale_key,
)
from tests.gateway.conftest import poll


@pytest.fixture()
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


def test_a_cached_answer_is_a_miss_right_after_the_users_generation_moves(stack, known_users, r):
    user, k = known_users[20], 17  # a key no other test uses
    r.delete(generation_key(user))
    first = stack.get(user, k=k).json()
    assert first["cached"] is False
    assert poll(lambda: stack.get(user, k=k).json()["cached"]), "the full answer was cached"
    entry = orjson.loads(r.get(cache_key(first["model_version"], user, k, None, [])))
    assert entry["gen"] == 0 and entry["items"] == first["items"]

    r.incr(generation_key(user))  # the consumer applied an event of this user
    after = stack.get(user, k=k).json()
    assert after["cached"] is False and after["fallback"] is None, "computed again, not served from the cache"
    assert poll(lambda: stack.get(user, k=k).json()["cached"]), "the fresh answer is cached again"
    assert orjson.loads(r.get(cache_key(first["model_version"], user, k, None, [])))["gen"] == 1

    r.incr(generation_key(user))
    assert stack.get(user, k=k).json()["cached"] is False
    # another user's generation does not touch this one's entries
    assert poll(lambda: stack.get(user, k=k).json()["cached"])
    r.incr(generation_key(known_users[21]))
    assert stack.get(user, k=k).json()["cached"] is True


def test_the_users_keys_share_one_cluster_slot():
    for user in ("42", "someone{odd}", "x" * 64):
        slots = {key_slot(k.encode()) for k in (generation_key(user), stale_key(user), user_recent_key(user),
                                                cache_key("v1", user, 10, {"recent": [1]}, [3]))}
        assert len(slots) == 1, user
    assert cache_key("v1", "42", 10, None, []) != cache_key("v1", "42}", 10, None, [])


def test_fresh_entry_needs_the_current_generation():
    raw = encode_entry(3, [{"item_id": 1, "score": 0.5, "title": None}], "v1")
    assert fresh_entry(raw, 3)["items"][0]["item_id"] == 1
    assert fresh_entry(raw, 4) is None
    assert fresh_entry(None, 0) is None
    assert fresh_entry(orjson.dumps({"items": [], "model_version": "v1"}), 0) is None, "an entry of before generations"


def test_caches_without_redis_have_generation_zero():
    async def scenario():
        c = InProcessCache(ttl_s=10, max_entries=10)
        await c.set("k", b"v")
        return await c.lookup("u", "k"), await NullCache().lookup("u", "k")

    assert asyncio.run(scenario()) == ((0, b"v"), (0, None))


def test_redis_lookup_reads_generation_and_entry_in_one_round_trip(redis_url, r):
    user = "gen-lookup-user"
    r.delete(generation_key(user), "some-key")

    async def scenario():
        cache = RedisCache(redis_url, ttl_s=60, timeout_s=1.0)
        try:
            missing = await cache.lookup(user, cache_key("v", user, 1, None, []))
            r.set(generation_key(user), 7)
            await cache.set(cache_key("v", user, 1, None, []), b"entry")
            return missing, await cache.lookup(user, cache_key("v", user, 1, None, []))
        finally:
            await cache.close()

    assert asyncio.run(scenario()) == ((0, None), (7, b"entry"))


def test_an_answer_computed_while_the_generation_moved_is_never_served(redis_url, r):
    """The race: the request reads generation g, the consumer bumps it (features changed) while
    retrieval runs, the answer is written under g and is therefore unreachable."""
    import grpc

    from common.proto.recsys.v1 import common_pb2
    from services.gateway.catalog import Catalog
    from services.gateway.metrics import GatewayMetrics
    from services.gateway.pipeline import Query, Recommender
    from services.gateway.settings import GatewaySettings

    user = "gen-race-user"
    r.delete(generation_key(user))
    bump = {"on": True}

    async def scenario():
        cache = RedisCache(redis_url, ttl_s=60, timeout_s=1.0)
        channel = grpc.insecure_channel("127.0.0.1:1")
        rec = Recommender(GatewaySettings(), retrieval_channel=channel, ranking_channel=channel, cache=cache,
                          catalog=Catalog(version="v"), metrics=GatewayMetrics())

        async def retrieve(q, context, deadline, *_):
            if bump["on"]:
                r.incr(generation_key(user))  # an event applied mid-request
            return common_pb2.CandidateList(item_ids=[3, 2, 1], scores=[0.3, 0.2, 0.1]), "v"

        async def rank(q, context, cands, deadline, *_, **__):
            return cands, "v"

        rec._retrieve, rec._rank = retrieve, rank
        try:
            first = await rec.recommend(Query(user, 2))
            await rec.drain()
            raced = await rec.recommend(Query(user, 2))  # the entry carries gen 0, the user is at 1
            await rec.drain()
            bump["on"] = False
            settled = await rec.recommend(Query(user, 2))  # computed at 2, nothing moved: cached
            await rec.drain()
            hit = await rec.recommend(Query(user, 2))
            return first, raced, settled, hit
        finally:
            await cache.close()

    first, raced, settled, hit = asyncio.run(scenario())
    assert not first.cached and not raced.cached and not settled.cached
    assert hit.cached and hit.items == settled.items
