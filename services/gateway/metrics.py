"""The gateway's Prometheus metrics, in an explicit registry owned by the app.

Several uvicorn workers (``GATEWAY_WORKERS`` > 1) each have their own metrics; the entry point
then sets ``PROMETHEUS_MULTIPROC_DIR`` and ``GatewayMetrics(multiprocess=True)`` is built in each
worker, so every value is also written to that directory and ``/metrics`` aggregates all workers
(prometheus_client's multiprocess mode). That mode cannot collect ``Enum``, ``Info`` or
``Gauge.set_function``, so none is used here: the breaker state and the model info are plain
gauges that export exactly the samples an Enum / Info would (same names, labels and text), and
the in-flight gauge is counted by the bulkhead itself when several processes share it.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from common.process_metrics import add_process_metrics
from services.gateway.breaker import STATES, Bulkhead
from services.gateway.settings import OWN_METRICS_DIR


def multiprocess_from_env() -> bool:
    """Whether this worker shares its metrics through the entry point's directory."""
    own = os.environ.get(OWN_METRICS_DIR)
    return bool(own) and os.environ.get("PROMETHEUS_MULTIPROC_DIR") == own

# 0.1 ms .. 1 s: the interesting range of a request with a 100 ms deadline.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
)
# 1 min .. 7 days: a precomputed list is minutes to days old (GATEWAY_PRECOMPUTED_MAX_AGE_S: 1 day)
AGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400, 172800, 604800)
CANDIDATE_BUCKETS = (0, 1, 10, 50, 100, 200, 300, 500, 1000, 2000)


class GatewayMetrics:
    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess  # values also go to PROMETHEUS_MULTIPROC_DIR (several workers)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_latency = Histogram(
            "gateway_stage_latency_seconds",
            "Latency of each /recommend stage (cache, retrieval, ranking, filters) and of the whole request (total).",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "gateway_requests_total", "/recommend responses by HTTP status code.", ["code"], registry=r,
        )
        self.cache = Counter(
            "gateway_cache_requests_total", "Response cache lookups by result (hit, miss, error, bypass).",
            ["result"], registry=r,
        )
        self.cache_errors = Counter(
            "gateway_cache_errors_total", "Response cache operations that failed (Redis down or slow); the request is served without cache.",
            ["operation"], registry=r,
        )
        self.variant_answers = Counter(
            "gateway_variant_answers_total",
            "/recommend answers by variant (current, canary, experiment:variant...) and outcome (none = full answer, hit = cache, or the fallback).",
            ["variant", "outcome"], registry=r,
        )
        self.variant_latency = Histogram(
            "gateway_variant_latency_seconds", "Latency of the whole /recommend request, by variant.",
            ["variant"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.serving_mode_answers = Counter(
            "gateway_serving_mode_answers_total",
            "/recommend answers by the path that answered (mode: online, precomputed, hybrid) and outcome: served (the "
            "configured GATEWAY_SERVING_MODE answered), cache_hit (a response-cache hit of an answer of that path), or why "
            "the precomputed list was not used and the answer was computed online (missing, wrong_version, "
            "other_pipeline, expired, too_few, redis_error).",
            ["mode", "outcome"], registry=r,
        )
        self.precomputed_age = Histogram(
            "gateway_precomputed_age_seconds",
            "Age (now - computed_at) of the precomputed list that answered (precomputed and hybrid modes).",
            buckets=AGE_BUCKETS, registry=r,
        )
        self.reloads = Counter(
            "gateway_reloads_total", "Catalog reloads when `current` moved, by outcome (swapped, refused).",
            ["outcome"], registry=r,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks_total", "Responses served by a fallback, by reason.", ["reason"], registry=r,
        )
        self.dependency_errors = Counter(
            "gateway_dependency_errors_total", "Failed calls to a dependency by error code (or breaker_open).",
            ["dependency", "code"], registry=r,
        )
        self.dependency_wait = Histogram(
            "gateway_dependency_wait_seconds",
            "Time a call waited in the gateway for a free slot of the dependency's bulkhead.",
            ["dependency"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.dependency_in_flight = Gauge(
            "gateway_dependency_in_flight", "Calls in flight to each dependency (bounded by its bulkhead).",
            ["dependency"], registry=r, multiprocess_mode="livesum",  # several workers: their sum
        )
        self.candidates = Histogram(
            "gateway_candidates", "Candidates per request by candidate source.", ["source"],
            buckets=CANDIDATE_BUCKETS, registry=r,
        )
        # An Enum's samples (1 for the current state, 0 for the others) as a gauge; several workers:
        # each has its own breakers, so each worker's states are exported with its ``pid``.
        self.breaker_state = Gauge(
            "gateway_circuit_breaker_state", "State of each dependency's circuit breaker.",
            ["breaker", "gateway_circuit_breaker_state"], registry=r, multiprocess_mode="liveall",
        )
        self.breaker_transitions = Counter(
            "gateway_circuit_breaker_transitions_total",
            "State changes of each dependency's circuit breaker, by the state entered (a flapping breaker shows here).",
            ["breaker", "state"], registry=r,
        )
        self.model = ModelInfo(Gauge(
            "gateway_model_info", "Model version being served and where the gateway got it.",
            ["source", "version"], registry=r, multiprocess_mode="livemax",
        ), multiprocess)
        # livemax: every worker loads the same catalog; no pid label, so one sample as with one worker
        self.catalog_items = Gauge(
            "gateway_catalog_items", "Items with a title in the catalog loaded at start-up (0 = bundle unreadable).",
            registry=r, multiprocess_mode="livemax",
        )
        self.popular_items = Gauge(
            "gateway_popular_items", "Items in the start-up popular list (the last-resort fallback).",
            registry=r, multiprocess_mode="livemax",
        )
        # the real-time loop: POST /events and the exposure log
        self.events = Counter(
            "gateway_events_total", "Events received on POST /events by outcome (accepted, duplicate, rejected: in a batch refused with 422).",
            ["outcome"], registry=r,
        )
        self.event_batches = Counter(
            "gateway_event_batches_total", "POST /events responses by HTTP status code.", ["code"], registry=r,
        )
        self.events_append = Histogram(
            "gateway_events_append_seconds", "Duration of the ingest script (dedup + stream append) of one /events batch.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.exposures = Counter(
            "gateway_exposures_total", "/recommend answers offered to the exposure log by outcome (written, dropped: queue full, "
            "sampled_out, failed: Redis down or slow).", ["outcome"], registry=r,
        )
        if not multiprocess:  # several workers: their exposition only aggregates the workers' files
            add_process_metrics(r)  # process_cpu_seconds_total, python_gc_pause_seconds
        self._breaker_states: dict[str, dict[str, MetricWrapperBase]] = {}
        self._included: _Merged | None = None

    def breaker_changed(self, name: str, old: str | None, new: str) -> None:
        """``CircuitBreaker(on_change=...)``: ``old`` is None for the initial state (no transition)."""
        states = self._breaker_states.get(name)
        if states is None:
            states = self._breaker_states[name] = {
                s: self.breaker_state.labels(breaker=name, gateway_circuit_breaker_state=s) for s in STATES}
        for state, child in states.items():
            child.set(1.0 if state == new else 0.0)
        if old is not None:
            self.breaker_transitions.labels(breaker=name, state=new).inc()

    def include(self, registry: CollectorRegistry) -> None:
        """Export another registry's metrics here too (the in-process stages' ``recsys_*``).
        Several workers: not needed, their values are in the multiprocess files already."""
        if self._included is None:
            self._included = _Merged()
            self.registry.register(self._included)
        self._included.registries.append(registry)

    def exposition(self) -> bytes:
        """The /metrics body: this registry, or every worker's metrics in multiprocess mode."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def bulkhead(self, name: str, limit: int) -> Bulkhead:
        """The dependency's bulkhead with ``gateway_dependency_in_flight{dependency=name}`` tied to it."""
        gauge = self.dependency_in_flight.labels(dependency=name)
        if self.multiprocess:
            return CountedBulkhead(name, limit, gauge)
        bulkhead = Bulkhead(name, limit)
        gauge.set_function(lambda: bulkhead.in_flight)  # read at scrape time: nothing on the hot path
        return bulkhead

    def worker_exited(self) -> None:
        """Drop this worker's "live" gauges (breaker state, in flight, model) from the aggregate."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


class CountedBulkhead(Bulkhead):
    """A bulkhead that counts its slots in a gauge (``set_function`` is process-local: several
    workers' scrapes could not see it)."""

    def __init__(self, name: str, limit: int, gauge) -> None:
        super().__init__(name, limit)
        self._gauge = gauge

    async def acquire(self, timeout_s: float) -> bool:
        acquired = await super().acquire(timeout_s)
        if acquired:
            self._gauge.inc()
        return acquired

    def release(self) -> None:
        super().release()
        self._gauge.dec()


class ModelInfo:
    """``gateway_model_info{source, version} 1``: what an ``Info`` exports, as a gauge (an Info is
    process-local). One worker: a new version replaces the old label set, as ``Info.info`` does;
    several: the old one is set to 0 (a label set cannot be removed from the workers' files)."""

    def __init__(self, gauge: Gauge, multiprocess: bool) -> None:
        self.gauge = gauge
        self.multiprocess = multiprocess
        self._current: tuple[str, str] | None = None

    def info(self, value: dict[str, str]) -> None:
        labels = (value.get("source", ""), value.get("version", ""))
        if self._current is not None and self._current != labels:
            if self.multiprocess:
                self.gauge.labels(*self._current).set(0.0)
            else:
                self.gauge.remove(*self._current)
        self.gauge.labels(*labels).set(1.0)
        self._current = labels


class _Merged:
    """A collector over several registries, one family per name: retrieval and ranking each have
    a ``recsys_stage_seconds`` (told apart by their ``service`` label), and one exposition must
    not name a family twice."""

    def __init__(self) -> None:
        self.registries: list[CollectorRegistry] = []

    def describe(self):
        return []  # no names to check against the gateway's (all recsys_*); collected lazily

    def collect(self):
        families = {}
        for registry in self.registries:
            for family in registry.collect():
                seen = families.get(family.name)
                if seen is None:
                    families[family.name] = family
                else:
                    seen.samples.extend(family.samples)
        return list(families.values())
