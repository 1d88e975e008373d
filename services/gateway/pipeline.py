"""The /recommend pipeline: cache -> retrieval -> ranking -> filters -> cache write.

Each stage has a name (used in metrics and spans) and a budget. The whole request has a deadline
(``GATEWAY_REQUEST_TIMEOUT_MS``); each gRPC call gets ``min(stage budget, time left)`` as its
gRPC deadline, so a slow dependency can never hold a request past its deadline.

Fallback ladder: when the full answer fails, the rungs of ``[fallback] ladder`` in
services/pipeline.toml are tried in order (a rung that cannot answer this request is skipped);
the response's ``fallback`` names the rung that answered:

=========================  =====================================================================
``None``                   retrieval + ranking answered
``ranking_unavailable``    ``retrieval_order``: ranking failed / timed out / breaker open,
                           retrieval's candidates in its order
``cached``                 ``cached``: the user's last good answer (kept ``GATEWAY_STALE_TTL_S``),
                           minus this request's exclusions, when k remain
``retrieval_unavailable``  ``popular_ranked``: retrieval failed, the start-up popular list
                           re-ranked by ranking
``all_unavailable``        ``popular``: the start-up popular list as is (empty if the bundle was
                           unreadable)
=========================  =====================================================================

Serving modes (``GATEWAY_SERVING_MODE``, read at start-up): ``online`` is the above; ``precomputed``
answers from the user's precomputed list after the real-time filters (no cache, no retrieval, no
ranking: one Redis round trip), ``hybrid`` re-ranks that list's candidates (the response cache,
then ranking; no retrieval; if ranking fails the ladder runs with the list's order as the
``retrieval_order`` rung). Both fall back to ``online`` when the list cannot be used
(:mod:`services.gateway.precomputed` says why); the response's ``mode`` names the path that
answered, ``gateway_serving_mode_answers_total{mode,outcome}`` counts it.

A Redis failure is not a rung: the request is served without cache, counted in
``gateway_cache_errors_total`` and the ``redis`` breaker state. No dependency failure becomes a 5xx.

Arms (:mod:`services.gateway.assignment`): each request is assigned a bundle version (``current``
as this gateway last saw it, the canary's for a user in its share, an experiment variant's) and
an experiment pipeline, and retrieval is asked for exactly that; ranking is then asked for the
version retrieval answered with, so an answer never mixes two bundles. The cache key holds the
version and the experiment bucket; the response names the version and the ``variant``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass

import grpc
import numpy as np
import orjson

from common.deployments import Rollout
from common.proto.recsys.v1 import (
    common_pb2,
    ranking_pb2,
    ranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.components.config import DEFAULT_LADDER, RUNGS
from services.experiments import ExperimentConfig
from services.gateway.assignment import Assignment, assign
from services.gateway.breaker import OPEN, Bulkhead, CircuitBreaker, Permit
from services.gateway.cache import ResponseCache, cache_key, encode_entry, fresh_entry, stale_key
from services.gateway.catalog import Catalog
from services.gateway.metrics import GatewayMetrics
from services.gateway.precomputed import REDIS_ERROR, PrecomputedStore, Selection, select
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Codes that say something about the dependency's health (they count towards its breaker).
DEPENDENCY_FAILURES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
})
MIN_CALL_BUDGET_S = 0.001  # below this a call cannot succeed: take the fallback at once
# Typical duration of each dependency's successful calls, an exponentially weighted mean (weight of
# the newest call): what a request must still have left when it gets a bulkhead slot.
TYPICAL_CALL_WEIGHT = 0.05

CACHED = RUNGS["cached"]  # the response's fallback when the user's last good answer is served
POPULAR_FALLBACK_SOURCE = "popular_fallback"  # source name of the popular-list candidates
ONLINE, PRECOMPUTED, HYBRID = "online", "precomputed", "hybrid"  # GATEWAY_SERVING_MODE, the response's mode


@dataclass(frozen=True)
class Query:
    user_id: str
    k: int
    recent_item_ids: tuple[int, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    exclude_item_ids: tuple[int, ...] = ()

    def shape(self) -> dict | None:
        if not self.recent_item_ids and not self.attributes:
            return None
        return {"recent": list(self.recent_item_ids), "attrs": dict(self.attributes)}


@dataclass
class Result:
    items: list[dict]
    model_version: str
    fallback: str | None
    cached: bool
    assignment: Assignment | None = None
    mode: str = ONLINE  # the path that answered: online, precomputed, hybrid


class Recommender:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        cache: ResponseCache,
        catalog: Catalog,
        metrics: GatewayMetrics,
        retrieval=None,
        ranking=None,
        retrieval_channel: grpc.aio.Channel | None = None,
        ranking_channel: grpc.aio.Channel | None = None,
        ladder: tuple[str, ...] = DEFAULT_LADDER,
        experiments: list[ExperimentConfig] | None = None,
        precomputed: PrecomputedStore | None = None,
    ) -> None:
        """``retrieval`` / ``ranking``: the two stages, anything with the generated stub's method
        (``await retrieval.Retrieve(request, timeout=...)``, ``await ranking.Rank(...)``) and its
        errors (``grpc.aio.AioRpcError``): a stub on a channel (``GATEWAY_MODE=grpc``) or an
        in-process face (``services.inprocess``). ``*_channel``: a channel to put a stub on.
        ``precomputed``: where the precomputed lists are read (GATEWAY_SERVING_MODE precomputed, hybrid)."""
        if (retrieval is None) == (retrieval_channel is None) or (ranking is None) == (ranking_channel is None):
            raise TypeError("Recommender: give each stage exactly once (retrieval= or retrieval_channel=, "
                            "ranking= or ranking_channel=)")
        if settings.serving_mode != ONLINE and precomputed is None:
            raise TypeError(f"Recommender: serving mode {settings.serving_mode} needs precomputed= (a PrecomputedStore)")
        self.settings = settings
        self.serving_mode = settings.serving_mode
        self.precomputed = precomputed
        self.ladder = ladder
        self.retrieval = retrieval if retrieval is not None else retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel)
        self.ranking = ranking if ranking is not None else ranking_pb2_grpc.RankingServiceStub(ranking_channel)
        self.cache = cache
        self.metrics = metrics
        self.experiments = experiments or []
        self.rollout = Rollout()  # the canary: set by the deployment watcher (services/gateway/deployment.py)
        breaker = dict(failure_rate=settings.breaker_failure_rate, window=settings.breaker_window,
                       min_calls=settings.breaker_min_calls, reset_s=settings.breaker_reset_s,
                       on_change=metrics.breaker_changed)
        self.breakers = {name: CircuitBreaker(name, **breaker) for name in ("retrieval", "ranking", "redis")}
        # the bulkheads come with their in-flight gauge (tied the way the metrics mode allows)
        self.bulkheads: dict[str, Bulkhead] = {
            "retrieval": metrics.bulkhead("retrieval", settings.retrieval_max_in_flight),
            "ranking": metrics.bulkhead("ranking", settings.ranking_max_in_flight)}
        self._wait = {name: metrics.dependency_wait.labels(dependency=name) for name in self.bulkheads}
        self._typical = dict.fromkeys(self.bulkheads, 0.0)  # seconds a successful call takes (EWMA)
        self._stage = {s: metrics.stage_latency.labels(stage=s) for s in ("cache", "precomputed", "retrieval", "ranking", "filters", "total")}
        self._fallbacks = {r: metrics.fallbacks.labels(reason=r) for r in RUNGS.values()}
        self._cache_result = {r: metrics.cache.labels(result=r) for r in ("hit", "miss", "error", "bypass")}
        self._variants: dict[str, tuple] = {}  # variant label -> its metric children
        self._mode_answers: dict[tuple[str, str], object] = {}  # (mode, outcome) -> its counter
        self._writes: set[asyncio.Task] = set()
        self.set_catalog(catalog)

    def set_catalog(self, catalog: Catalog) -> None:
        """Titles, the popular list and the version requests are pinned to (start-up, and the
        deployment watcher when ``current`` moves)."""
        self.catalog = catalog
        self.model_version = catalog.version or ""  # "": the services' default version
        # the popular list as arrays; scores rounded to float32 like any candidate score on the wire
        self._popular_ids = np.array([i for i, _ in catalog.popular], np.int64)
        self._popular_scores = np.array([s for _, s in catalog.popular], np.float32)
        self.metrics.model.info({"version": catalog.version or "unknown", "source": "bundle" if catalog.version else "none"})
        self.metrics.catalog_items.set(len(catalog.titles))
        self.metrics.popular_items.set(len(catalog.popular))

    def set_rollout(self, rollout: Rollout) -> None:
        self.rollout = rollout

    def assign(self, user_id: str) -> Assignment:
        return assign(user_id, self.model_version, self.rollout, self.experiments)

    # -- public ------------------------------------------------------------------------------
    async def recommend(self, q: Query, explain: dict | None = None) -> Result:
        """The answer for ``q``. ``explain`` (a dict, /debug/explain): the pipeline runs in full
        whatever the cache holds, the services are asked for their account of it, everything is
        written into ``explain``, and nothing is cached. Nothing is collected otherwise."""
        start = time.perf_counter()
        deadline = start + self.settings.request_timeout_ms / 1000.0
        arm = self.assign(q.user_id)
        mode, pre = self.serving_mode, None
        if mode == PRECOMPUTED:  # the list first: when it answers, nothing else is asked
            pre = await self._read_precomputed(q, arm, q.k, explain)
            if pre.usable:
                return self._answer_precomputed(q, arm, pre, start, explain)
        key = cache_key(arm.version, q.user_id, q.k, q.shape(), list(q.exclude_item_ids), arm.cache_part, mode)
        errors: dict[str, str] | None = None
        # the user's generation as this request starts: what a cache write of its answer carries
        if explain is None:
            generation, hit = await self._cache_lookup(q.user_id, key)
            if hit is not None:
                self._observe_variant(arm, "hit", time.perf_counter() - start)
                self._observe_mode(hit.get("mode", ONLINE), "cache_hit")
                self._stage["total"].observe(time.perf_counter() - start)
                return Result(hit["items"], hit["model_version"], None, True, arm, hit.get("mode", ONLINE))
        else:
            errors = {}
            generation, hit = await self._cache_lookup(q.user_id, key, count=False)
            explain["cache"] = {"enabled": self.cache.enabled, "key": key, "generation": generation,
                                "fresh_entry": hit is not None}
            explain["assignment"] = {"version": arm.version, "pipeline": arm.pipeline or None,
                                     "num_candidates": arm.num_candidates, "variant": arm.variant}

        exclude = frozenset(q.exclude_item_ids)
        context = common_pb2.Context(recent_item_ids=q.recent_item_ids, attributes=dict(q.attributes))
        if mode == HYBRID:
            pre = await self._read_precomputed(q, arm, max(self._num_candidates(arm), q.k), explain)
        if pre is not None and pre.usable:  # hybrid: the list's candidates instead of Retrieve
            answered, candidates, version, order = HYBRID, pre.candidates(), pre.lst.version, pre.ranked()
            self.metrics.precomputed_age.observe(pre.age_s)
            if explain is not None:
                explain["retrieval"] = None  # not called: the candidates are the precomputed list's
        else:
            answered = ONLINE
            candidates, version = await self._retrieve(q, context, deadline, errors, explain, arm)
            order = candidates  # what the retrieval_order rung serves
        ranked = None
        if candidates is not None:
            self._observe_sources(candidates)
            if len(candidates.item_ids):  # an empty answer from a healthy retrieval is a full answer
                ranked, rank_version = await self._rank(q, context, candidates, deadline, errors, explain,
                                                        retrieved_with=version, pipeline=arm.pipeline)
                version = rank_version or version
        full = candidates is not None and (ranked is not None or not len(candidates.item_ids))

        fallback = None
        if full:
            t = time.perf_counter()
            best_first = ranked if ranked is not None else order
            items = self._filter(best_first.item_ids, best_first.scores, exclude, q.k)
            self._stage["filters"].observe(time.perf_counter() - t)
        else:
            items, fallback, rung_version = await self._ladder(q, context, order, exclude, deadline, errors, arm)
            version = rung_version or version
            self._fallbacks[fallback].inc()
        version = version or arm.version or "unknown"
        # generation None: it could not be read (Redis failing), so the answer is not cached
        if fallback is None and self.cache.enabled and explain is None and generation is not None:
            value = encode_entry(generation, items, version, answered)
            # keyed by the version that answered (the services may not have loaded the pinned one yet)
            task = asyncio.create_task(self._cache_write(
                cache_key(version, q.user_id, q.k, q.shape(), list(q.exclude_item_ids), arm.cache_part, mode),
                q.user_id, value))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        self._observe_variant(arm, fallback or "none", time.perf_counter() - start)
        self._observe_mode(answered, "served" if answered == mode else pre.reason)
        self._stage["total"].observe(time.perf_counter() - start)
        if explain is not None:
            explain["serving_mode"] = self._explain_mode(answered, pre)
            explain["fallback"] = {"rung": fallback, "reason": errors or None}
            explain.setdefault("seconds", {})["total"] = round(time.perf_counter() - start, 6)
            explain["model_version"] = version
        return Result(items, version, fallback, fallback == CACHED, arm, answered)

    # -- serving modes -----------------------------------------------------------------------
    async def _read_precomputed(self, q: Query, arm: Assignment, limit: int, explain: dict | None) -> Selection:
        """The user's precomputed list, checked and filtered (at most ``limit`` items, at least
        k), or why it cannot be used; a failing Redis is ``redis_error`` (never an exception)."""
        breaker = self.breakers["redis"]
        permit = breaker.allow()
        if permit is None:
            return Selection(REDIS_ERROR)
        t = time.perf_counter()
        try:
            raw, seen, recent = await self.precomputed.read(q.user_id)
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "answer online"
            breaker.record_failure(permit)
            log.debug("precomputed read failed: %r", exc)
            return Selection(REDIS_ERROR)
        except BaseException:  # cancelled: no verdict on Redis
            breaker.release(permit)
            raise
        finally:
            self._stage["precomputed"].observe(time.perf_counter() - t)
        breaker.record_success(permit)
        return select(raw, seen, recent, exclude=q.exclude_item_ids, context_recent=q.recent_item_ids,
                      version=arm.version, pipeline=arm.pipeline, now=time.time(),
                      max_age_s=self.settings.precomputed_max_age_s, k=q.k, limit=limit, explain=explain is not None)

    def _answer_precomputed(self, q: Query, arm: Assignment, pre: Selection, start: float,
                            explain: dict | None) -> Result:
        """The first k items the filters left of the list: no cache, retrieval or ranking."""
        items = pre.items(q.k, self.catalog.titles)
        self.metrics.precomputed_age.observe(pre.age_s)
        self._observe_variant(arm, "none", time.perf_counter() - start)
        self._observe_mode(PRECOMPUTED, "served")
        self._stage["total"].observe(time.perf_counter() - start)
        if explain is not None:
            explain["serving_mode"] = self._explain_mode(PRECOMPUTED, pre)
            explain["fallback"] = {"rung": None, "reason": None}
            explain.setdefault("seconds", {})["total"] = round(time.perf_counter() - start, 6)
            explain["model_version"] = pre.lst.version
        return Result(items, pre.lst.version, None, False, arm, PRECOMPUTED)

    def _explain_mode(self, answered: str, pre: Selection | None) -> dict:
        return {"configured": self.serving_mode, "answered": answered,
                "precomputed": pre.describe() if pre is not None else None}

    def _observe_mode(self, mode: str, outcome: str) -> None:
        """``gateway_serving_mode_answers_total{mode,outcome}``."""
        counter = self._mode_answers.get((mode, outcome))
        if counter is None:
            counter = self._mode_answers[mode, outcome] = self.metrics.serving_mode_answers.labels(mode=mode, outcome=outcome)
        counter.inc()

    def _num_candidates(self, arm: Assignment | None) -> int:
        return arm.num_candidates if arm is not None and arm.num_candidates else self.settings.num_candidates

    def _observe_variant(self, arm: Assignment, outcome: str, seconds: float) -> None:
        """``gateway_variant_answers_total{variant,outcome}`` and the variant's latency."""
        children = self._variants.get(arm.variant)
        if children is None:
            children = self._variants[arm.variant] = (
                {}, self.metrics.variant_latency.labels(variant=arm.variant))
        answers, latency = children
        counter = answers.get(outcome)
        if counter is None:
            counter = answers[outcome] = self.metrics.variant_answers.labels(variant=arm.variant, outcome=outcome)
        counter.inc()
        latency.observe(seconds)

    async def _ladder(self, q: Query, context, candidates, exclude: frozenset[int], deadline: float,
                      errors: dict[str, str] | None = None, arm: Assignment | None = None):
        """The first rung of the configured ladder that can answer: (items, fallback, version)."""
        retrieval_failed = candidates is None
        for rung in self.ladder:
            if rung == "retrieval_order" and not retrieval_failed:
                return self._filter(candidates.item_ids, candidates.scores, exclude, q.k), RUNGS[rung], None
            if rung == "cached":
                last = await self._last_good(q.user_id)
                if last is not None:
                    items = [i for i in last["items"] if i["item_id"] not in exclude][: q.k]
                    if len(items) == q.k:
                        return items, RUNGS[rung], last["model_version"]
            if rung == "popular_ranked" and retrieval_failed:
                wanted = self._num_candidates(arm)
                popular = self._popular_candidates(exclude, max(wanted, q.k))
                if len(popular.item_ids):
                    # a free ranking slot or none: a fallback must not queue in front of full answers
                    ranked, version = await self._rank(q, context, popular, deadline, errors, queue=False,
                                                       retrieved_with=arm.version if arm is not None else None,
                                                       pipeline=arm.pipeline if arm is not None else "")
                    if ranked is not None:
                        return self._filter(ranked.item_ids, ranked.scores, exclude, q.k), RUNGS[rung], version
            if rung == "popular":
                popular = self._popular_candidates(exclude, q.k)
                return self._filter(popular.item_ids, popular.scores, exclude, q.k), RUNGS[rung], None
        raise AssertionError("the ladder ends with the popular rung (checked when the config is loaded)")

    async def drain(self) -> None:
        """Wait for pending cache writes (shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # -- candidates --------------------------------------------------------------------------
    def _popular_candidates(self, exclude: frozenset[int], wanted: int) -> common_pb2.CandidateList:
        """The first ``wanted`` items of the start-up popular list that are not excluded."""
        ids = self._popular_ids
        keep = np.flatnonzero(~np.isin(ids, np.fromiter(exclude, np.int64, len(exclude))))[:wanted]
        return common_pb2.CandidateList(
            item_ids=ids[keep].tolist(), scores=self._popular_scores[keep].tolist(),
            source_index=[0] * keep.size, source_names=[POPULAR_FALLBACK_SOURCE],
        )

    def _observe_sources(self, candidates: common_pb2.CandidateList) -> None:
        """``gateway_candidates{source}``: how many candidates each source contributed."""
        names = candidates.source_names
        per_source: Tally[str] = Tally()
        if candidates.source_index:
            for index, n in Tally(candidates.source_index).items():
                per_source[(names[index] if index < len(names) else "") or "unknown"] += n
        elif candidates.item_ids:
            per_source["unknown"] = len(candidates.item_ids)
        for source, n in per_source.items():
            self.metrics.candidates.labels(source=source).observe(n)

    # -- stages ------------------------------------------------------------------------------
    async def _cache_lookup(self, user_id: str, key: str, count: bool = True) -> tuple[int | None, dict | None]:
        """(the user's current generation, the entry under ``key`` if computed at that
        generation), in one cache round trip; (None, None) when the cache is off or failing.
        ``count=False``: kept out of the hit-rate counters and the cache stage latency (explain)."""
        if not self.cache.enabled:
            if count:
                self._cache_result["bypass"].inc()
            return None, None
        breaker = self.breakers["redis"]
        permit = breaker.allow()
        if permit is None:
            if count:
                self._cache_result["error"].inc()
            return None, None
        t = time.perf_counter()
        try:
            generation, raw = await self.cache.lookup(user_id, key)
            entry = fresh_entry(raw, generation)
        except Exception as exc:  # noqa: BLE001 - any cache failure means "serve without cache"
            breaker.record_failure(permit)
            self.metrics.cache_errors.labels(operation="get").inc()
            if count:
                self._cache_result["error"].inc()
            log.debug("cache lookup failed: %r", exc)
            return None, None
        except BaseException:  # cancelled: no verdict on Redis
            breaker.release(permit)
            raise
        finally:
            if count:
                self._stage["cache"].observe(time.perf_counter() - t)
        breaker.record_success(permit)
        if count:
            self._cache_result["hit" if entry is not None else "miss"].inc()
        return generation, entry

    async def _cache_get(self, key: str) -> bytes | None:
        """A plain read that is not the response cache's lookup (the ``cached`` rung's last good
        answer): kept out of the hit-rate counters and the cache stage latency."""
        if not self.cache.enabled:
            return None
        breaker = self.breakers["redis"]
        permit = breaker.allow()
        if permit is None:
            return None
        try:
            value = await self.cache.get(key)
        except Exception as exc:  # noqa: BLE001 - any cache failure means "serve without cache"
            breaker.record_failure(permit)
            self.metrics.cache_errors.labels(operation="get").inc()
            log.debug("cache get failed: %r", exc)
            return None
        except BaseException:  # cancelled: no verdict on Redis
            breaker.release(permit)
            raise
        breaker.record_success(permit)
        return value

    async def _cache_set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        breaker = self.breakers["redis"]
        permit = breaker.allow()
        if permit is None:
            return
        try:
            await self.cache.set(key, value, ttl_s)
        except Exception as exc:  # noqa: BLE001
            breaker.record_failure(permit)
            self.metrics.cache_errors.labels(operation="set").inc()
            log.debug("cache set failed: %r", exc)
        except BaseException:
            breaker.release(permit)
            raise
        else:
            breaker.record_success(permit)

    async def _cache_write(self, key: str, user_id: str, value: bytes) -> None:
        """A full answer: into the response cache, and as the user's last good answer."""
        await self._cache_set(key, value)
        if self.settings.stale_ttl_s > 0:
            await self._cache_set(stale_key(user_id), value, self.settings.stale_ttl_s)

    async def _last_good(self, user_id: str) -> dict | None:
        """The user's last good answer (``cached`` rung), None when there is none or no cache."""
        if not self.cache.enabled or self.settings.stale_ttl_s <= 0:
            return None
        raw = await self._cache_get(stale_key(user_id))
        return orjson.loads(raw) if raw is not None else None

    async def _call(self, name: str, method, request, budget_s: float, deadline: float,
                    errors: dict[str, str] | None = None, queue: bool = True):
        """One gRPC call: a bulkhead slot (waiting at most until the request deadline), the
        dependency's breaker, and ``min(stage budget, time left)`` as the gRPC deadline.
        ``errors`` (explain): why the call gave no answer, by dependency; ``queue=False``: a free slot or shed."""
        response, code = await self._attempt(name, method, request, budget_s, deadline, queue)
        if code is not None and errors is not None:
            errors[name] = code
        return response

    async def _attempt(self, name: str, method, request, budget_s: float, deadline: float, queue: bool = True):
        """(response, None) or (None, the reason: a gRPC code name, breaker_open, shed, no_budget)."""
        breaker, bulkhead = self.breakers[name], self.bulkheads[name]
        if deadline - time.perf_counter() < MIN_CALL_BUDGET_S:
            self.metrics.dependency_errors.labels(dependency=name, code="no_budget").inc()
            return None, "no_budget"
        if breaker.state == OPEN:  # refuse before queueing; allow() below takes the probe
            self.metrics.dependency_errors.labels(dependency=name, code="breaker_open").inc()
            return None, "breaker_open"
        t = time.perf_counter()
        # Wait for a slot only while the time left still covers what this call and the stage after it
        # typically take: a slot taken later yields a timeout or a no_budget ranking call, not an
        # answer. At saturation the FIFO queue otherwise ages every request to its deadline: 1M
        # items, 32 connections, 96 % fallbacks and 12 full answers/s of 302 (benchmarks/scale.py).
        wait = deadline - t - max(MIN_CALL_BUDGET_S, self._reserve(name)) if queue else 0.0
        acquired = await bulkhead.acquire(wait)
        t_call = time.perf_counter()
        self._wait[name].observe(t_call - t)
        if not acquired:  # overloaded: shed to the fallback rung; says nothing about the dependency
            self.metrics.dependency_errors.labels(dependency=name, code="shed").inc()
            return None, "shed"
        try:
            permit = breaker.allow()
            if permit is None:
                self.metrics.dependency_errors.labels(dependency=name, code="breaker_open").inc()
                return None, "breaker_open"
            return await self._invoke(name, breaker, permit, method, request, min(budget_s, deadline - t_call),
                                      budget_s)
        finally:
            bulkhead.release()

    def _reserve(self, name: str) -> float:
        """Seconds a request needs left to make the most of a slot of ``name``: the typical call,
        and after retrieval the typical ranking call too."""
        return self._typical[name] + (self._typical["ranking"] if name == "retrieval" else 0.0)

    async def _invoke(self, name: str, breaker: CircuitBreaker, permit: Permit, method, request, timeout: float,
                      budget_s: float):
        """The gRPC call itself and the breaker's verdict on how it ended: (response, None) or
        (None, the gRPC code's name)."""
        t = time.perf_counter()
        try:
            response = await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self.metrics.dependency_errors.labels(dependency=name, code=code.name).inc()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout < budget_s:
                # the call only had what queueing left of the request deadline: that it ran out
                # says the gateway is overloaded, not that the dependency is slow
                breaker.release(permit)
            elif code in DEPENDENCY_FAILURES:
                breaker.record_failure(permit)
            else:  # e.g. INVALID_ARGUMENT: our request, not their health
                breaker.release(permit)
                log.warning("%s refused the request: %s %s", name, code.name, exc.details())
            return None, code.name
        except BaseException:  # cancelled (client went away) or a bug: no verdict on the dependency
            breaker.release(permit)  # never leave a half-open breaker waiting for a probe that is gone
            raise
        finally:
            elapsed = time.perf_counter() - t
            self._stage[name].observe(elapsed)
        breaker.record_success(permit)
        self._typical[name] += TYPICAL_CALL_WEIGHT * (elapsed - self._typical[name])
        return response, None

    async def _retrieve(self, q: Query, context, deadline: float, errors: dict | None = None,
                        explain: dict | None = None, arm: Assignment | None = None):
        arm = arm if arm is not None else Assignment(self.model_version)
        request = retrieval_pb2.RetrieveRequest(
            user_id=q.user_id, k=max(arm.num_candidates or self.settings.num_candidates, q.k), context=context,
            exclude_item_ids=q.exclude_item_ids, explain=explain is not None,
            model_version=arm.version, pipeline=arm.pipeline,
        )
        t = time.perf_counter()
        response = await self._call("retrieval", self.retrieval.Retrieve, request,
                                    self.settings.retrieval_timeout_ms / 1000.0, deadline, errors)
        if explain is not None:
            explain.setdefault("seconds", {})["retrieval_call"] = round(time.perf_counter() - t, 6)
            explain["retrieval"] = orjson.loads(response.explain_json) if response is not None and response.explain_json else None
        if response is None:
            return None, None
        return response.candidates, response.model_version

    async def _rank(self, q: Query, context, candidates, deadline: float, errors: dict | None = None,
                    explain: dict | None = None, retrieved_with: str | None = None, pipeline: str = "",
                    queue: bool = True):
        """``retrieved_with``: the bundle version retrieval answered with (ranking scores with
        exactly it, or answers FAILED_PRECONDITION: no answer mixes two versions). ``queue=False``:
        only a free bulkhead slot is taken (fallback rungs: at saturation, 1M items, their ranking
        calls queued in front of the full answers' and took half of ranking's slots)."""
        request = ranking_pb2.RankRequest(user_id=q.user_id, candidates=candidates, context=context,
                                          explain=explain is not None, model_version=retrieved_with or "",
                                          pipeline=pipeline)
        t = time.perf_counter()
        response = await self._call("ranking", self.ranking.Rank, request,
                                    self.settings.ranking_timeout_ms / 1000.0, deadline, errors, queue=queue)
        if explain is not None:
            explain.setdefault("seconds", {})["ranking_call"] = round(time.perf_counter() - t, 6)
            explain["ranking"] = orjson.loads(response.explain_json) if response is not None and response.explain_json else None
        if response is None:
            return None, None
        return response, response.model_version

    def _filter(self, item_ids, scores, exclude: frozenset[int], k: int) -> list[dict]:
        """Exclusions and de-duplication over best-first parallel ``item_ids``/``scores`` (packed
        repeated fields), stopping at the k-th kept item; titles from the catalog."""
        titles = self.catalog.titles
        seen: set[int] = set()
        items: list[dict] = []
        # strict=False: a malformed reply (arrays of different lengths) is cut to the shorter one
        for item_id, score in zip(item_ids, scores, strict=False):
            if item_id in exclude or item_id in seen:
                continue
            seen.add(item_id)
            items.append({"item_id": item_id, "score": round(score, 6), "title": titles.get(item_id)})
            if len(items) == k:
                break
        return items
