"""``popular``: the most popular items, best first (cold start, back-fill).

The bundle's recency-weighted popularity list (``popular_items``) is the prior; with the events
loop running (Redis online store), the live time-decayed popularity the consumer keeps
(:meth:`services.live.LiveState.popular`) is added to it, so the list follows what users do now
instead of staying frozen at training time:

    score(i) = prior_events * bundle_score(i) / sum(bundle_scores) + live_weight(i)

``prior_events``: how many (decayed) events the training-time list is worth. With the default
1,000 a burst of a few clicks nudges the list and a sustained trend takes it over. The live list
is re-read at most every ``refresh_s`` seconds (one ``ZREVRANGE`` of ``live_pool`` items, ~0.3 ms),
on the request that finds it older; a failed read keeps the last list and is counted
(``recsys_live_state_errors_total{read="popular"}``).
"""

from __future__ import annotations

import json
import time

import numpy as np

from common.bundle import Bundle, BundleError
from services.components.candidate_source import CandidateSource
from services.components.types import Candidates, Query


class PopularSource(CandidateSource):
    artifacts = ("popular_items",)

    def __init__(self, name: str, *, live: bool = True, prior_events: float = 1000.0, refresh_s: float = 1.0,
                 live_pool: int = 1000, **options) -> None:
        super().__init__(name, **options)
        if prior_events < 0 or refresh_s < 0 or live_pool < 1:
            raise ValueError("prior_events and refresh_s must be >= 0, live_pool >= 1")
        self.use_live, self.prior_events, self.refresh_s, self.live_pool = live, prior_events, refresh_s, live_pool
        self.live = None
        self._refreshed = -float("inf")

    def load_artifacts(self, bundle: Bundle) -> None:
        path = bundle.path("popular_items")
        rows = json.loads(path.read_text())
        if not rows:
            raise BundleError(f"{path} holds no popular items")
        self.bundle_ids = np.array([r["item_id"] for r in rows], np.int64)
        self.bundle_scores = np.array([r["score"] for r in rows], np.float32)
        self.current = (self.bundle_ids, self.bundle_scores)  # one attribute: swapped atomically

    def attach(self, live) -> None:
        self.live = live if self.use_live else None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < self.refresh_s:
            return
        self._refreshed = now
        try:
            live_ids, live_w = self.live.popular(self.live_pool)
        except Exception as exc:  # noqa: BLE001 - Redis slow or down: keep the last list
            self.live.failed("popular", exc)
            return
        if live_ids.size == 0:
            self.current = (self.bundle_ids, self.bundle_scores)
            return
        prior = self.bundle_scores.astype(np.float64)
        total = prior.sum()
        prior = prior * (self.prior_events / total) if total > 0 else np.zeros_like(prior)
        ids = np.concatenate([self.bundle_ids, live_ids])
        uniq, inv = np.unique(ids, return_inverse=True)
        score = np.bincount(inv, weights=np.concatenate([prior, live_w]), minlength=uniq.size)
        order = np.lexsort((uniq, -score))  # score desc, then id asc
        self.current = (uniq[order], score[order].astype(np.float32))

    def fetch(self, query: Query, n: int) -> Candidates:
        if self.live is not None:
            self._refresh()
        ids, scores = self.current
        return Candidates(ids[:n], scores[:n], self.name)


COMPONENT = PopularSource
