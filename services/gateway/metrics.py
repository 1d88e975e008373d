"""The gateway's Prometheus metrics, in an explicit registry owned by the app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info

from services.gateway.breaker import STATES

# 0.1 ms .. 1 s: the interesting range of a request with a 100 ms deadline.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
)
CANDIDATE_BUCKETS = (0, 1, 10, 50, 100, 200, 300, 500, 1000, 2000)


class GatewayMetrics:
    def __init__(self) -> None:
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
            ["dependency"], registry=r,
        )
        self.candidates = Histogram(
            "gateway_candidates", "Candidates per request by candidate source.", ["source"],
            buckets=CANDIDATE_BUCKETS, registry=r,
        )
        self.breaker_state = Enum(
            "gateway_circuit_breaker_state", "State of each dependency's circuit breaker.",
            ["breaker"], states=list(STATES), registry=r,
        )
        self.breaker_transitions = Counter(
            "gateway_circuit_breaker_transitions_total",
            "State changes of each dependency's circuit breaker, by the state entered (a flapping breaker shows here).",
            ["breaker", "state"], registry=r,
        )
        self.model = Info("gateway_model", "Model version being served and where the gateway got it.", registry=r)
        self.catalog_items = Gauge(
            "gateway_catalog_items", "Items with a title in the catalog loaded at start-up (0 = bundle unreadable).", registry=r,
        )
        self.popular_items = Gauge(
            "gateway_popular_items", "Items in the start-up popular list (the last-resort fallback).", registry=r,
        )

    def breaker_changed(self, name: str, old: str | None, new: str) -> None:
        """``CircuitBreaker(on_change=...)``: ``old`` is None for the initial state (no transition)."""
        self.breaker_state.labels(breaker=name).state(new)
        if old is not None:
            self.breaker_transitions.labels(breaker=name, state=new).inc()
