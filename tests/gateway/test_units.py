"""Narrow unit tests: breaker state machine, cache keys, in-process cache, settings."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.gateway.breaker import CLOSED, HALF_OPEN, OPEN, Bulkhead, CircuitBreaker
from services.gateway.cache import InProcessCache, NullCache, build_cache, cache_key
from services.gateway.metrics import GatewayMetrics


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _breaker(clock, *, rate=0.5, window=4, min_calls=3, reset_s=2.0, **kw) -> CircuitBreaker:
    return CircuitBreaker("ranking", failure_rate=rate, window=window, min_calls=min_calls, reset_s=reset_s,
                          clock=clock, **kw)


def _call(b: CircuitBreaker, failed: bool) -> None:
    """One call allowed and ended at once (no concurrency)."""
    permit = b.allow()
    assert permit is not None, "the call was refused"
    b.record_failure(permit) if failed else b.record_success(permit)


def test_breaker_opens_on_failure_rate_and_probes_back():
    clock, changes = Clock(), []
    b = _breaker(clock, on_change=lambda name, old, new: changes.append((name, old, new)))
    for _ in range(2):
        _call(b, failed=True)
    assert b.state == CLOSED, "fewer than min_calls outcomes: never opens"
    _call(b, failed=True)
    assert b.state == OPEN and b.allow() is None
    clock.t = 1.9
    assert b.allow() is None
    clock.t = 2.0
    assert b.state == HALF_OPEN
    probe = b.allow()
    assert probe is not None and probe.probe, "one probe goes through"
    assert b.allow() is None, "only one probe at a time"
    b.record_failure(probe)
    assert b.state == OPEN, "a failed probe re-opens"
    clock.t = 4.5
    b.record_success(b.allow())
    assert b.state == CLOSED and b.allow() is not None
    _call(b, failed=True)
    assert b.state == CLOSED, "closing starts an empty window"
    assert changes == [("ranking", None, CLOSED), ("ranking", CLOSED, OPEN), ("ranking", OPEN, HALF_OPEN),
                       ("ranking", HALF_OPEN, OPEN), ("ranking", OPEN, HALF_OPEN), ("ranking", HALF_OPEN, CLOSED)]


def test_breaker_tolerates_sporadic_failures_below_the_rate():
    b = _breaker(Clock(), rate=0.5, window=10, min_calls=5)
    for i in range(200):  # every third call fails: 33 % < 50 %
        _call(b, failed=i % 3 == 0)
        assert b.state == CLOSED, i


def test_breaker_window_forgets_old_failures():
    b = _breaker(Clock(), rate=0.5, window=4, min_calls=4)
    for failed in (True, True, False, False, False, False):  # two early failures, then four successes
        _call(b, failed)
    assert b.state == CLOSED
    _call(b, failed=True)  # window S S S F: 1 of 4, the early failures are gone
    assert b.state == CLOSED
    _call(b, failed=True)  # S S F F: 2 of 4 = 50 %
    assert b.state == OPEN


def test_breaker_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="failure_rate"):
        _breaker(Clock(), rate=0.0)
    with pytest.raises(ValueError, match="min_calls <= window"):
        _breaker(Clock(), window=3, min_calls=4)


def test_a_late_success_does_not_close_a_breaker_its_siblings_opened():
    """Four calls in flight (window 4, min 2 calls, rate 0.5): two fail and open the breaker; the
    other two, allowed while closed, end afterwards - their outcomes belong to the closed state."""
    clock, changes = Clock(), []
    b = _breaker(clock, window=4, min_calls=2, on_change=lambda name, old, new: changes.append(new))
    first, second, third, fourth = (b.allow() for _ in range(4))
    b.record_failure(first)
    b.record_failure(second)
    assert b.state == OPEN
    b.record_success(third)
    assert b.state == OPEN, "a late success closed the breaker"
    assert b.allow() is None
    clock.t = 1.0
    b.record_failure(fourth)  # nor does a late failure restart the cool-down of the open breaker
    clock.t = 2.0
    assert b.state == HALF_OPEN
    assert changes == [CLOSED, OPEN]


def test_half_open_admits_exactly_one_probe_whatever_completes_late():
    clock = Clock()
    b = _breaker(clock, window=4, min_calls=2)
    slow_a, slow_b = b.allow(), b.allow()  # allowed while closed, still in flight
    _call(b, failed=True)
    _call(b, failed=True)
    assert b.state == OPEN
    clock.t = 2.0
    probe = b.allow()
    assert probe is not None and probe.probe
    # late completions of calls allowed before the breaker opened: none frees a second probe
    b.release(slow_a)
    assert b.allow() is None, "a late release let a second probe through"
    b.record_failure(slow_b)
    assert b.state == HALF_OPEN and b.allow() is None, "a late failure re-opened the half-open breaker"
    b.record_success(probe)
    assert b.state == CLOSED
    # stale permits say nothing about the closed state (two counted failures would re-open it)
    b.record_failure(probe)
    b.record_failure(slow_b)
    assert b.state == CLOSED


def test_breaker_transitions_are_counted_in_metrics():
    m = GatewayMetrics()
    clock = Clock()
    b = _breaker(clock, window=4, min_calls=2, on_change=m.breaker_changed)
    get = m.registry.get_sample_value
    inflight = [b.allow() for _ in range(3)]
    b.record_failure(inflight[0])
    b.record_failure(inflight[1])
    b.record_success(inflight[2])  # late: ignored, no transition
    clock.t = 2.0
    b.record_success(b.allow())  # probe -> closed
    counts = {s: get("gateway_circuit_breaker_transitions_total", {"breaker": "ranking", "state": s})
              for s in (CLOSED, OPEN, HALF_OPEN)}
    assert counts == {CLOSED: 1.0, OPEN: 1.0, HALF_OPEN: 1.0}
    assert get("gateway_circuit_breaker_state", {"breaker": "ranking", "gateway_circuit_breaker_state": CLOSED}) == 1


def test_bulkhead_bounds_in_flight_calls_and_sheds_on_timeout():
    async def main():
        b = Bulkhead("ranking", 2)
        assert await b.acquire(0) and await b.acquire(0)
        assert b.in_flight == 2
        assert not await b.acquire(0), "no slot and no time to wait"
        assert not await b.acquire(0.01), "no slot freed within the wait"
        waiter = asyncio.create_task(b.acquire(1.0))
        await asyncio.sleep(0)
        b.release()
        assert await waiter, "a released slot goes to the waiter"
        assert b.in_flight == 2
        b.release()
        b.release()
        assert b.in_flight == 0

    asyncio.run(main())


def test_breaker_state_is_exported():
    m = GatewayMetrics()
    b = CircuitBreaker("retrieval", failure_rate=1.0, window=1, min_calls=1, reset_s=1.0,
                       on_change=m.breaker_changed, clock=Clock())
    b.record_failure(b.allow())
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    assert 'gateway_circuit_breaker_state{breaker="retrieval",gateway_circuit_breaker_state="open"} 1.0' in text


def test_cache_key_covers_version_user_k_and_shape():
    base = cache_key("v1", "42", 10, None, [])
    assert base != cache_key("v2", "42", 10, None, [])
    assert base != cache_key("v1", "43", 10, None, [])
    assert base != cache_key("v1", "42", 11, None, [])
    assert base != cache_key("v1", "42", 10, None, [5])
    assert base != cache_key("v1", "42", 10, {"recent": [1]}, [])
    assert cache_key("v1", "42", 10, None, [5, 3, 5]) == cache_key("v1", "42", 10, None, [3, 5])


def test_in_process_cache_expires_and_evicts():
    clock = Clock()
    c = InProcessCache(ttl_s=10, max_entries=2, clock=clock)

    async def scenario():
        await c.set("a", b"1")
        await c.set("b", b"2")
        assert await c.get("a") == b"1"
        await c.set("c", b"3")  # evicts the least recently used: b
        assert await c.get("b") is None
        clock.t = 10.0
        assert await c.get("a") is None

    asyncio.run(scenario())


@pytest.mark.parametrize(("url", "ttl", "kind"), [(None, 0, NullCache), ("redis://127.0.0.1:1/0", 0, NullCache),
                                                  (None, 5, InProcessCache)])
def test_build_cache(url, ttl, kind):
    assert isinstance(build_cache(url, ttl, 10, 0.01), kind)


def test_a_cancelled_probe_does_not_wedge_a_half_open_breaker():
    clock = Clock()
    b = _breaker(clock, window=1, min_calls=1, reset_s=1.0)
    _call(b, failed=True)
    clock.t = 1.0
    probe = b.allow()
    assert probe is not None
    b.release(probe)  # ... was cancelled
    assert b.allow() is not None, "the next request may probe again"


def _recommender(popular=((10, 0.9), (11, 0.8), (12, 0.7), (13, 0.6)), **settings):
    import grpc

    from services.gateway.catalog import Catalog
    from services.gateway.pipeline import Recommender
    from services.gateway.settings import GatewaySettings

    channel = grpc.insecure_channel("127.0.0.1:1")  # never called: the stubs only need a channel
    return Recommender(GatewaySettings(**settings), retrieval_channel=channel, ranking_channel=channel, cache=NullCache(),
                       catalog=Catalog(version="v", titles={11: "Eleven"}, popular=popular), metrics=GatewayMetrics())


def test_popular_fallback_candidates_skip_excluded_items_and_keep_float32_scores():
    rec = _recommender()
    cands = rec._popular_candidates(frozenset({11}), 2)
    assert list(cands.item_ids) == [10, 12]
    assert list(cands.scores) == [float(np.float32(0.9)), float(np.float32(0.7))]
    assert [cands.source_names[i] for i in cands.source_index] == ["popular_fallback"] * 2
    assert len(_recommender(popular=())._popular_candidates(frozenset(), 5).item_ids) == 0


def test_filter_excludes_dedups_and_stops_at_k():
    rec = _recommender()
    items = rec._filter([12, 11, 12, 13, 10], [0.5, 0.4, 0.3, 0.25, 0.1], frozenset({13}), 3)
    assert items == [{"item_id": 12, "score": 0.5, "title": None}, {"item_id": 11, "score": 0.4, "title": "Eleven"},
                     {"item_id": 10, "score": 0.1, "title": None}]


def test_candidate_sources_are_observed_per_name():
    from common.proto.recsys.v1 import common_pb2

    rec = _recommender()
    rec._observe_sources(common_pb2.CandidateList(item_ids=[1, 2, 3], scores=[0.3, 0.2, 0.1],
                                                  source_index=[0, 1, 0], source_names=["two_tower", ""]))
    rec._observe_sources(common_pb2.CandidateList(item_ids=[4], scores=[0.1]))
    get = rec.metrics.registry.get_sample_value
    assert get("gateway_candidates_sum", {"source": "two_tower"}) == 2
    assert get("gateway_candidates_sum", {"source": "unknown"}) == 2
    assert get("gateway_candidates_count", {"source": "unknown"}) == 2


def test_overload_is_shed_in_the_gateway_without_touching_the_breaker():
    """Bulkhead of 1 and a call that holds it until released: a second call waits only until its
    own deadline, is shed (no call made), and the dependency's breaker records nothing."""
    import time

    rec = _recommender(ranking_max_in_flight=1)
    calls = []

    async def main():
        hold = asyncio.Event()

        async def held_rank(request, timeout):
            calls.append(timeout)
            await hold.wait()  # the slot frees only when the test says so, never by a timer
            return "ranked"

        first = asyncio.create_task(rec._call("ranking", held_rank, None, 5.0, time.perf_counter() + 5.0))
        await asyncio.sleep(0)
        assert rec.bulkheads["ranking"].in_flight == 1
        # 200 ms left: ample for any scheduling delay, far less than the first call's hold
        second = await rec._call("ranking", held_rank, None, 5.0, time.perf_counter() + 0.2)
        assert not first.done(), "the second call returned because it was shed, not because the slot freed"
        hold.set()
        return await first, second

    first, second = asyncio.run(main())
    assert first == "ranked" and second is None
    assert len(calls) == 1, "the shed call never reached the dependency"
    get = rec.metrics.registry.get_sample_value
    assert get("gateway_dependency_errors_total", {"dependency": "ranking", "code": "shed"}) == 1
    assert get("gateway_dependency_wait_seconds_count", {"dependency": "ranking"}) == 2
    assert rec.breakers["ranking"].state == CLOSED and rec.breakers["ranking"]._failures == 0
    assert rec.bulkheads["ranking"].in_flight == 0, "every slot was given back"


def test_a_slot_is_not_waited_for_once_the_time_left_cannot_cover_a_typical_call():
    """With ranking's calls typically taking 0.5 s, a request with 0.2 s left is shed at once instead
    of queueing to its deadline (a slot taken then would only give a timeout); the typical duration
    follows successful calls."""
    import time

    rec = _recommender(ranking_max_in_flight=1)

    async def main():
        hold = asyncio.Event()

        async def rank(request, timeout):
            if request == "hold":
                await hold.wait()
            return "ranked"

        assert await rec._call("ranking", rank, "quick", 5.0, time.perf_counter() + 5.0) == "ranked"
        assert 0 < rec._typical["ranking"] < 0.5, "a successful call moves the typical duration"
        first = asyncio.create_task(rec._call("ranking", rank, "hold", 5.0, time.perf_counter() + 5.0))
        await asyncio.sleep(0)
        rec._typical["ranking"] = 0.5
        t = time.perf_counter()
        second = await rec._call("ranking", rank, "late", 5.0, time.perf_counter() + 0.2)
        waited = time.perf_counter() - t
        hold.set()
        return await first, second, waited

    first, second, waited = asyncio.run(main())
    assert first == "ranked" and second is None
    assert waited < 0.1, f"waited {waited:.3f}s for a slot it could not use"
    get = rec.metrics.registry.get_sample_value
    assert get("gateway_dependency_errors_total", {"dependency": "ranking", "code": "shed"}) == 1


def test_settings_refuse_min_calls_above_the_window():
    from pydantic import ValidationError

    from services.gateway.settings import GatewaySettings

    with pytest.raises(ValidationError, match="GATEWAY_BREAKER_MIN_CALLS"):
        GatewaySettings(breaker_window=3, breaker_min_calls=4)


def test_a_timeout_caused_by_queueing_is_not_held_against_the_dependency():
    """DEADLINE_EXCEEDED counts towards the breaker only when the call had its full stage budget;
    a call squeezed by what queueing left of the request deadline says nothing about the dependency."""
    import time

    import grpc

    rec = _recommender(breaker_window=2, breaker_min_calls=1)

    async def times_out(request, timeout):
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata())

    async def main():
        now = time.perf_counter()
        # the stub fails at once, so nothing here depends on how fast the machine is
        await rec._call("ranking", times_out, None, 5.0, now + 2.0)  # at most 2 s of a 5 s budget left
        squeezed = rec.breakers["ranking"].state
        await rec._call("ranking", times_out, None, 0.040, now + 10.0)  # the full 40 ms budget
        return squeezed, rec.breakers["ranking"].state

    squeezed, full = asyncio.run(main())
    assert squeezed == CLOSED
    assert full == OPEN
    get = rec.metrics.registry.get_sample_value
    assert get("gateway_dependency_errors_total", {"dependency": "ranking", "code": "DEADLINE_EXCEEDED"}) == 2


def test_the_ladder_is_followed_in_its_configured_order():
    """Ranking fails for a user with a last good answer: the default ladder answers in retrieval
    order (``ranking_unavailable``); one that puts ``cached`` first serves the last answer."""
    from common.proto.recsys.v1 import common_pb2
    from services.gateway.pipeline import Query

    candidates = common_pb2.CandidateList(item_ids=[30, 31, 32], scores=[0.3, 0.2, 0.1],
                                          source_index=[0, 0, 0], source_names=["two_tower"])

    def build(ladder):
        import grpc

        from services.gateway.catalog import Catalog
        from services.gateway.pipeline import Recommender
        from services.gateway.settings import GatewaySettings

        channel = grpc.insecure_channel("127.0.0.1:1")
        rec = Recommender(GatewaySettings(), retrieval_channel=channel, ranking_channel=channel,
                          cache=InProcessCache(ttl_s=60, max_entries=100), catalog=Catalog(version="v"),
                          metrics=GatewayMetrics(), ladder=ladder)
        state = {"rank_ok": True}

        async def retrieve(q, context, deadline, *_):
            return candidates, "v"

        async def rank(q, context, cands, deadline, *_, **__):
            if not state["rank_ok"]:
                return None, None
            return common_pb2.CandidateList(item_ids=[32, 31, 30], scores=[0.9, 0.8, 0.7]), "v"

        rec._retrieve, rec._rank = retrieve, rank
        return rec, state

    async def scenario(ladder):
        rec, state = build(ladder)
        first = await rec.recommend(Query("u1", 3))
        await rec.drain()  # the cache writes (fresh + last good answer)
        state["rank_ok"] = False
        degraded = await rec.recommend(Query("u1", 2))  # another k: no fresh entry
        return first, degraded

    first, default = asyncio.run(scenario(("retrieval_order", "cached", "popular_ranked", "popular")))
    assert first.fallback is None and [i["item_id"] for i in first.items] == [32, 31, 30]
    assert default.fallback == "ranking_unavailable" and [i["item_id"] for i in default.items] == [30, 31]
    _, cached_first = asyncio.run(scenario(("cached", "retrieval_order", "popular_ranked", "popular")))
    assert cached_first.fallback == "cached" and cached_first.cached
    assert [i["item_id"] for i in cached_first.items] == [32, 31]


def test_why_a_call_gave_no_answer_is_reported_for_explain():
    import time

    import grpc

    rec = _recommender(breaker_window=2, breaker_min_calls=1)

    async def times_out(request, timeout):
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata())

    async def main():
        errors: dict[str, str] = {}
        await rec._call("ranking", times_out, None, 0.040, time.perf_counter() + 10.0, errors)
        first = dict(errors)
        await rec._call("ranking", times_out, None, 0.040, time.perf_counter() + 10.0, errors)  # breaker open now
        return first, errors

    first, second = asyncio.run(main())
    assert first == {"ranking": "DEADLINE_EXCEEDED"}
    assert second == {"ranking": "breaker_open"}
