"""The consumer's Prometheus metrics, in their own registry (built at start-up, never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class EventsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.applied = Counter("recsys_events_applied_total", "Events applied (first time), per type.", ["type"], registry=r)
        self.duplicates = Counter("recsys_events_duplicates_total",
                                  "Events delivered again after they had been (partly) applied: redeliveries.", registry=r)
        self.failed = Counter("recsys_events_failed_total",
                              "Attempts that failed and left the entries pending (retried), per reason.", ["reason"], registry=r)
        self.dead_letter = Counter("recsys_events_dead_letter_total", "Entries moved to the dead letter stream, per reason.",
                                   ["reason"], registry=r)
        self.anonymous = Counter("recsys_events_anonymous_total",
                                 "Events of users without an integer id: aggregates only, no per-user state or feature row.",
                                 registry=r)
        self.lag_entries = Gauge("recsys_events_lag_entries", "Stream entries not yet delivered to the consumer group (XINFO GROUPS lag).",
                                 registry=r)
        self.lag_seconds = Gauge("recsys_events_lag_seconds", "Age of the oldest stream entry not yet applied; 0 when caught up.",
                                 registry=r)
        self.apply_seconds = Histogram("recsys_events_apply_seconds", "Time to apply one batch (state, aggregates, rows, ack).",
                                       registry=r, buckets=APPLY_BUCKETS)
        self.batch_size = Histogram("recsys_events_batch_size", "Entries per applied batch.", registry=r, buckets=BATCH_BUCKETS)
        self.freshness = Histogram("recsys_events_freshness_seconds", "Time from the gateway's append to the event being applied.",
                                   registry=r, buckets=FRESHNESS_BUCKETS)

    def dead(self, reason: str) -> None:
        # one label value per kind of reason, not per entry ("unknown item 123" -> "unknown item")
        self.dead_letter.labels(reason=reason_label(reason)).inc()


def reason_label(reason: str) -> str:
    if reason.startswith("failed ") and reason.endswith(" deliveries"):
        return "max deliveries"
    if reason.startswith("unknown item"):
        return "unknown item"
    if reason.startswith("unknown type"):
        return "unknown type"
    if reason.startswith("unparseable field"):
        return "unparseable field"
    return reason[:40]
