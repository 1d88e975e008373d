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


def test_breaker_opens_on_failure_rate_and_probes_back():
    clock, states = Clock(), []
    b = _breaker(clock, on_state=lambda name, s: states.append((name, s)))
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == CLOSED, "fewer than min_calls outcomes: never opens"
    assert b.allow()
    b.record_failure()
    assert b.state == OPEN and not b.allow()
    clock.t = 1.9
    assert not b.allow()
    clock.t = 2.0
    assert b.state == HALF_OPEN
    assert b.allow(), "one probe goes through"
    assert not b.allow(), "only one probe at a time"
    b.record_failure()
    assert b.state == OPEN, "a failed probe re-opens"
    clock.t = 4.5
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.allow()
    b.record_failure()
    assert b.state == CLOSED, "closing starts an empty window"
    assert states[0] == ("ranking", CLOSED) and ("ranking", OPEN) in states and ("ranking", HALF_OPEN) in states


def test_breaker_tolerates_sporadic_failures_below_the_rate():
    b = _breaker(Clock(), rate=0.5, window=10, min_calls=5)
    for i in range(200):  # every third call fails: 33 % < 50 %
        b.record_failure() if i % 3 == 0 else b.record_success()
        assert b.state == CLOSED, i


def test_breaker_window_forgets_old_failures():
    b = _breaker(Clock(), rate=0.5, window=4, min_calls=4)
    for outcome in (True, True, False, False, False, False):  # two early failures, then four successes
        b.record_failure() if outcome else b.record_success()
    assert b.state == CLOSED
    b.record_failure()  # window S S S F: 1 of 4, the early failures are gone
    assert b.state == CLOSED
    b.record_failure()  # S S F F: 2 of 4 = 50 %
    assert b.state == OPEN


def test_breaker_rejects_inconsistent_settings():
    with pytest.raises(ValueError):
        _breaker(Clock(), rate=0.0)
    with pytest.raises(ValueError):
        _breaker(Clock(), window=3, min_calls=4)


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
                       on_state=m.set_breaker_state, clock=Clock())
    b.record_failure()
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
    b.record_failure()
    clock.t = 1.0
    assert b.allow()  # the probe
    b.release()  # ... was cancelled
    assert b.allow(), "the next request may probe again"


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
    """Bulkhead of 1 and a call that holds it: a second call waits only until its own deadline,
    is shed (no call made), and the dependency's breaker records nothing."""
    import time

    rec = _recommender(ranking_max_in_flight=1)
    calls = []

    async def slow_rank(request, timeout):
        calls.append(timeout)
        await asyncio.sleep(0.05)
        return "ranked"

    async def main():
        now = time.perf_counter()
        first = asyncio.create_task(rec._call("ranking", slow_rank, None, 1.0, now + 1.0))
        await asyncio.sleep(0)
        t = time.perf_counter()
        second = await rec._call("ranking", slow_rank, None, 1.0, t + 0.01)  # 10 ms left
        waited = time.perf_counter() - t
        return await first, second, waited

    first, second, waited = asyncio.run(main())
    assert first == "ranked" and second is None
    assert len(calls) == 1, "the shed call never reached the dependency"
    assert waited < 0.03, "it waited no longer than its deadline"
    get = rec.metrics.registry.get_sample_value
    assert get("gateway_dependency_errors_total", {"dependency": "ranking", "code": "shed"}) == 1
    assert get("gateway_dependency_wait_seconds_count", {"dependency": "ranking"}) == 2
    assert rec.breakers["ranking"].state == CLOSED and rec.breakers["ranking"]._failures == 0
    assert rec.bulkheads["ranking"].in_flight == 0, "every slot was given back"


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
        await rec._call("ranking", times_out, None, 0.040, now + 0.010)  # only 10 ms of a 40 ms budget left
        squeezed = rec.breakers["ranking"].state
        await rec._call("ranking", times_out, None, 0.040, now + 1.0)  # the full 40 ms budget
        return squeezed, rec.breakers["ranking"].state

    squeezed, full = asyncio.run(main())
    assert squeezed == CLOSED
    assert full == OPEN
    get = rec.metrics.registry.get_sample_value
    assert get("gateway_dependency_errors_total", {"dependency": "ranking", "code": "DEADLINE_EXCEEDED"}) == 2
