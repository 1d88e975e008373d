"""Online features for the gRPC services: the feature reader plus metrics and a fallback.

Wraps :func:`feature_store.reader.build_reader` (docs/contracts.md) for retrieval and ranking:

* parses the request's ``user_id`` (a string that is not an integer id is an unknown user:
  cold start, no online-store round trip);
* missing feature values are counted by the reader itself
  (``recsys_missing_features_total{feature_view}``, in the service's registry);
* degrades instead of failing when the online store is unreachable: the request is served with
  the views' defaults (cold-start quality), ``recsys_feature_errors_total`` counts it and a
  warning is logged (at most once per ``log_every`` errors).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter

from common.grpc_server import ServiceMetrics

log = logging.getLogger(__name__)

_INT_ID = re.compile(r"[0-9]{1,18}")
_UNSET = object()


def describe_rows(event_ts: dict[str, float | None], now: float) -> dict[str, dict | None]:
    """Explain output for feature rows: per view its event time (ISO 8601, UTC) and age in
    seconds at ``now``, or None when the entity has no row in that view."""
    from datetime import UTC, datetime

    return {view: None if ts is None else {
        "event_time": datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds"), "age_s": round(now - ts, 1)}
        for view, ts in sorted(event_ts.items())}


def parse_user_id(user_id: str) -> int | None:
    """``"42"`` -> 42; anything else (names, negative numbers, huge numbers) -> None (unknown)."""
    s = user_id.strip()
    return int(s) if _INT_ID.fullmatch(s) else None


@dataclass(frozen=True)
class UserView:
    values: dict[str, Any] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()
    all_missing: bool = True
    event_ts: dict[str, float | None] = field(default_factory=dict)  # view -> epoch s of its row (explain)


@dataclass(frozen=True)
class ItemView:
    values: dict[str, np.ndarray]
    missing: np.ndarray  # bool [N]


class FeatureFetcher:
    def __init__(self, reader, metrics: ServiceMetrics, log_every: int = 100) -> None:
        self.reader = reader
        self.metrics = metrics
        self.errors = Counter(
            "recsys_feature_errors_total", "Online feature reads that failed (served with defaults).",
            ["service", "entity"], registry=metrics.registry,
        )
        self._errors_user = self.errors.labels(metrics.service, "user")
        self._errors_item = self.errors.labels(metrics.service, "item")
        self._log_every = max(1, log_every)
        self._n_errors = 0
        self._live: Any = _UNSET

    def live_state(self):
        """The events loop's live state next to this fetcher's online store (:mod:`services.live`;
        None without Redis). Built once: a hot swap's new pipeline gets the same object, and its
        counter is registered once."""
        if self._live is _UNSET:
            from services.live import live_state_for

            self._live = live_state_for(self.reader, self.metrics.registry)
        return self._live

    def _failed(self, what: str, exc: BaseException) -> None:
        self._n_errors += 1
        if self._n_errors % self._log_every == 1:
            log.warning("online feature read failed (%s), serving defaults (%d so far): %r",
                        what, self._n_errors, exc)

    def user(self, user_id: int | None) -> UserView:
        if user_id is None:
            return UserView()
        try:
            feats = self.reader.user_features(user_id)
        except Exception as exc:  # online store down: degrade to defaults, never fail the call
            self._errors_user.inc()
            self._failed("user", exc)
            return UserView()
        missing = frozenset(feats.missing)
        values = dict(feats.values)
        return UserView(values, missing, all_missing=missing.issuperset(values.keys()),
                        event_ts=dict(getattr(feats, "event_ts", {}) or {}))

    def items(self, item_ids: np.ndarray) -> ItemView:
        try:
            feats = self.reader.item_features(item_ids)
        except Exception as exc:
            self._errors_item.inc()
            self._failed("items", exc)
            return ItemView({}, np.ones(item_ids.size, bool))
        return ItemView(feats.values, np.asarray(feats.missing, bool))

    def item_event_ts(self, item_ids: np.ndarray) -> dict[str, list[float | None]]:
        """Per item view, the event time of each item's row in the loaded item table (explain only;
        empty when the reader keeps no table)."""
        table = getattr(self.reader, "item_table", None)
        if table is None or not hasattr(table, "event_ts"):
            return {}
        rows = table.rows(np.asarray(item_ids, np.int64))  # unknown ids: the default row, NaN times
        return {view: [float(v) if np.isfinite(v) else None for v in ts[rows]] for view, ts in table.event_ts.items()}
