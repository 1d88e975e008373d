"""Serving modes at unit level: :func:`services.gateway.precomputed.select` (checks and filters)
and the Recommender's dispatch over a fake list store and the in-process faces of fake stages
(a failing store, ranking failing in hybrid mode, the counters, the cache key)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from common.precomputed import PrecomputedList, encode
from services.gateway.precomputed import select

NOW = 1_764_755_000.0


def _raw(ids, version="v", at=NOW - 60.0) -> bytes:
    ids = np.asarray(ids, np.int64)
    n = ids.size
    return encode(PrecomputedList(version, at, ids, np.linspace(0.9, 0.1, n).astype(np.float32),
                                  np.linspace(0.5, 0.4, n).astype(np.float32), np.zeros(n, np.uint8), ("two_tower",)))


def _select(raw, seen=(), recent=(), **kw):
    args = {"version": "v", "now": NOW, "max_age_s": 3600.0, "k": 3, "limit": 300, **kw}
    return select(raw, [str(i).encode() for i in seen], [str(i).encode() for i in recent], **args)


def test_select_filters_in_list_order():
    s = _select(_raw(range(1, 11)), seen=[2, 99], recent=[4], exclude=(6,), context_recent=(8,), explain=True)
    assert s.usable and s.reason is None
    assert [i["item_id"] for i in s.items(3, {1: "one"})] == [1, 3, 5]
    assert s.items(1, {1: "one"}) == [{"item_id": 1, "score": 0.9, "title": "one"}]
    assert s.removed == {"request_exclusions": 1, "recent_items": 2, "seen_items": 1}
    assert list(s.candidates().item_ids) == [1, 3, 5, 7, 9, 10]
    assert list(s.candidates().source_names) == ["two_tower"]
    assert round(s.age_s) == 60


@pytest.mark.parametrize(("raw", "kw", "reason"), [
    (None, {}, "missing"),
    (b"garbage", {}, "missing"),
    (_raw(range(1, 11), version="other"), {}, "wrong_version"),
    (_raw(range(1, 11)), {"pipeline": "services/pipelines/no_item_to_item.toml"}, "other_pipeline"),
    (_raw(range(1, 11), at=NOW - 7200), {}, "expired"),
    (_raw(range(1, 4)), {"exclude": (2,)}, "too_few"),
    (_raw(range(1, 3)), {}, "too_few"),
])
def test_select_says_why_a_list_is_not_used(raw, kw, reason):
    assert _select(raw, **kw).reason == reason


def test_select_limit_bounds_the_candidates_and_ignores_odd_members():
    s = _select(_raw(range(1, 11)), k=2, limit=4)
    assert s.keep.size == 4
    s = select(_raw(range(1, 11)), [b"x", b"3"], [], version="v", now=NOW, max_age_s=3600, k=2, limit=300)
    assert 3 not in [i["item_id"] for i in s.items(10, {})]


# -- the Recommender's dispatch --------------------------------------------------------------------
class FakeStore:
    def __init__(self, raw=None, seen=(), fail=False):
        self.raw, self.seen, self.fail, self.reads = raw, [str(i).encode() for i in seen], fail, 0

    async def read(self, user_id):
        self.reads += 1
        if self.fail:
            raise ConnectionError("redis down")
        return self.raw, self.seen, []


class CountingRetrieval:
    version = "v"

    def __init__(self):
        self.calls = 0

    def retrieve(self, user_id, k, recent_item_ids=None, exclude_item_ids=None, trace=None):
        from services.retrieval.pipeline import RetrievalResult

        self.calls += 1
        ids = np.array([50, 60, 70, 80], np.int64)
        return RetrievalResult(ids, np.linspace(0.4, 0.1, 4).astype(np.float32), np.zeros(4, np.uint8), ("fake",), "v")


class ReversingRanking:
    version = "v"

    def __init__(self, fail=False):
        self.fail, self.calls, self.seen_scores = fail, 0, None

    def rank(self, user_id, item_ids, retrieval_scores, explain_top=0):
        from services.ranking.pipeline import RankResult

        self.calls += 1
        if self.fail:
            raise RuntimeError("model on fire")
        self.seen_scores = retrieval_scores
        return RankResult(item_ids[::-1].copy(), np.linspace(0.1, 0.9, item_ids.size).astype(np.float32), "v")


def _recommender(mode, store, retrieval, ranking, **settings):
    from services.gateway.cache import NullCache
    from services.gateway.catalog import Catalog
    from services.gateway.metrics import GatewayMetrics
    from services.gateway.pipeline import Recommender
    from services.gateway.settings import GatewaySettings
    from services.inprocess import LocalRanking, LocalRetrieval
    from services.ranking.settings import RankingSettings
    from services.retrieval.settings import RetrievalSettings

    s = GatewaySettings(serving_mode=mode, redis_url="redis://unused:1/0", **settings)
    return Recommender(s, retrieval=LocalRetrieval(retrieval, RetrievalSettings()),
                       ranking=LocalRanking(ranking, RankingSettings()), cache=NullCache(),
                       catalog=Catalog(version="v", popular=((1, 0.9), (2, 0.8), (3, 0.7))), metrics=GatewayMetrics(),
                       precomputed=store)


def _run(rec, explain=None, **query):
    from services.gateway.pipeline import Query

    return asyncio.run(rec.recommend(Query(**{"user_id": "1", "k": 3, **query}), explain=explain))


def _answers(rec, mode, outcome) -> float:
    return rec.metrics.registry.get_sample_value("gateway_serving_mode_answers_total",
                                                 {"mode": mode, "outcome": outcome}) or 0.0


def test_precomputed_answers_without_retrieval_or_ranking():
    retrieval, ranking = CountingRetrieval(), ReversingRanking()
    import time

    rec = _recommender("precomputed", FakeStore(_raw(range(1, 11), at=time.time() - 5), seen=[1]), retrieval, ranking)
    explain: dict = {}
    result = _run(rec, explain=explain, exclude_item_ids=(3,))
    assert (result.mode, result.fallback) == ("precomputed", None)
    assert [i["item_id"] for i in result.items] == [2, 4, 5]
    assert retrieval.calls == ranking.calls == 0
    assert _answers(rec, "precomputed", "served") == 1
    assert rec.metrics.registry.get_sample_value("gateway_precomputed_age_seconds_count") == 1
    assert explain["serving_mode"]["answered"] == "precomputed"
    assert explain["serving_mode"]["precomputed"]["removed"] == {"request_exclusions": 1, "seen_items": 1}


def test_a_failing_store_falls_back_to_online_and_is_counted():
    retrieval, ranking = CountingRetrieval(), ReversingRanking()
    rec = _recommender("precomputed", FakeStore(fail=True), retrieval, ranking)
    result = _run(rec)
    assert (result.mode, result.fallback) == ("online", None)
    assert [i["item_id"] for i in result.items] == [80, 70, 60]
    assert _answers(rec, "online", "redis_error") == 1
    assert retrieval.calls == ranking.calls == 1


def test_hybrid_re_ranks_the_list_and_never_retrieves():
    import time

    retrieval, ranking = CountingRetrieval(), ReversingRanking()
    rec = _recommender("hybrid", FakeStore(_raw(range(1, 11), at=time.time())), retrieval, ranking, num_candidates=5)
    result = _run(rec)
    assert (result.mode, result.fallback) == ("hybrid", None)
    assert [i["item_id"] for i in result.items] == [5, 4, 3], "num_candidates of the list, re-ranked"
    assert (retrieval.calls, ranking.calls) == (0, 1)
    np.testing.assert_allclose(ranking.seen_scores, np.linspace(0.5, 0.4, 10)[:5].astype(np.float32))
    assert _answers(rec, "hybrid", "served") == 1


def test_hybrid_with_ranking_down_serves_the_precomputed_order():
    import time

    retrieval, ranking = CountingRetrieval(), ReversingRanking(fail=True)
    rec = _recommender("hybrid", FakeStore(_raw(range(1, 11), at=time.time()), seen=[2]), retrieval, ranking)
    result = _run(rec)
    assert (result.mode, result.fallback) == ("hybrid", "ranking_unavailable")
    assert [i["item_id"] for i in result.items] == [1, 3, 4], "the list's order plays retrieval_order"
    assert retrieval.calls == 0


def test_hybrid_falls_back_to_online_for_a_list_of_another_version():
    import time

    retrieval, ranking = CountingRetrieval(), ReversingRanking()
    rec = _recommender("hybrid", FakeStore(_raw(range(1, 11), version="old", at=time.time())), retrieval, ranking)
    explain: dict = {}
    result = _run(rec, explain=explain)
    assert result.mode == "online" and retrieval.calls == 1
    assert _answers(rec, "online", "wrong_version") == 1
    assert explain["serving_mode"] == {"configured": "hybrid", "answered": "online",
                                       "precomputed": explain["serving_mode"]["precomputed"]}
    assert explain["serving_mode"]["precomputed"]["reason"] == "wrong_version"


def test_cache_key_includes_the_mode():
    from services.gateway.cache import cache_key

    keys = {cache_key("v1", "42", 10, None, [], "", mode) for mode in ("online", "precomputed", "hybrid")}
    assert len(keys) == 3
    assert cache_key("v1", "42", 10, None, []) == cache_key("v1", "42", 10, None, [], "", "online")


def test_settings_refuse_precomputed_modes_without_redis():
    from pydantic import ValidationError

    from services.gateway.settings import GatewaySettings

    for mode in ("precomputed", "hybrid"):
        with pytest.raises(ValidationError, match=f"GATEWAY_SERVING_MODE={mode} needs REDIS_URL"):
            GatewaySettings(serving_mode=mode, redis_url=None)
    with pytest.raises(ValidationError, match="GATEWAY_SERVING_MODE must be one of online, precomputed, hybrid"):
        GatewaySettings(serving_mode="batch")
    assert GatewaySettings().serving_mode == "online"
