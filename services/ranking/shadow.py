"""Shadow scoring: a second ranker version scores the same candidates, off the request path.

``python -m models shadow VERSION`` names the version in ``rollout.json``; ranking loads it as an
arm (:mod:`services.reload`) and, after each live ``Rank`` is answered, :meth:`ShadowScorer.offer`
puts the call in a bounded queue (``RANKING_SHADOW_QUEUE_SIZE``) for one worker thread: a full
queue drops the call, counted, and never waits. The worker ranks the same candidates with the
shadow arm (its own feature reads; not observed in the stage metrics of the live path) and records
how far it agrees with the live ranker:

* ``recsys_shadow_rank_correlation{live,shadow}``: Spearman's rho of the two orders of all the
  candidates (1 = the same order, 0 = unrelated, -1 = reversed); a histogram with negative
  buckets has no ``_sum``, so read it with ``histogram_quantile``;
* ``recsys_shadow_top10_overlap{live,shadow}``: share of the live top 10 in the shadow's top 10;
* ``recsys_shadow_total{live,shadow,outcome}``: scored, dropped (queue full), sampled_out
  (``RANKING_SHADOW_SAMPLE_RATE``), failed.

The answer is never touched: the live response is sent before the shadow starts.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CORRELATION_BUCKETS = (-0.5, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
OVERLAP_BUCKETS = tuple(round(0.1 * i, 1) for i in range(11))
TOP = 10


def agreement(live_ids: np.ndarray, shadow_ids: np.ndarray, top: int = TOP) -> tuple[float, float]:
    """(Spearman's rho, top-``top`` overlap) of two best-first orders of the same candidates."""
    n = live_ids.size
    if n != shadow_ids.size or n == 0:
        raise ValueError(f"the two orders have {n} and {shadow_ids.size} candidates")
    # argsort by item id: position i of each order then refers to the same item in both
    live_pos, shadow_pos = np.argsort(live_ids, kind="stable"), np.argsort(shadow_ids, kind="stable")
    if not np.array_equal(live_ids[live_pos], shadow_ids[shadow_pos]):
        raise ValueError("the two orders hold different candidates")
    if n == 1:
        rho = 1.0
    else:
        d = (live_pos - shadow_pos).astype(np.float64)
        rho = 1.0 - 6.0 * float(d @ d) / (n * (n * n - 1.0))
    k = min(top, n)
    overlap = np.intersect1d(live_ids[:k], shadow_ids[:k], assume_unique=True).size / k
    return rho, overlap


class ShadowScorer:
    def __init__(self, *, service: str, registry, queue_size: int, sample_rate: float, draw=random.random) -> None:
        from prometheus_client import Counter, Histogram

        self.service = service
        self.sample_rate = sample_rate
        self._draw = draw
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._stop = object()
        self.total = Counter("recsys_shadow_total", "Shadow scoring calls by outcome (scored, dropped, sampled_out, failed).",
                             ["service", "live", "shadow", "outcome"], registry=registry)
        self.correlation = Histogram("recsys_shadow_rank_correlation",
                                     "Spearman rank correlation of the shadow ranker's order with the live one.",
                                     ["service", "live", "shadow"], buckets=CORRELATION_BUCKETS, registry=registry)
        self.overlap = Histogram("recsys_shadow_top10_overlap", "Share of the live top 10 in the shadow ranker's top 10.",
                                 ["service", "live", "shadow"], buckets=OVERLAP_BUCKETS, registry=registry)
        self.seconds = Histogram("recsys_shadow_seconds", "Time of one shadow scoring (features + score).",
                                 ["service", "shadow"], registry=registry)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-ranker", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # daemon thread: it goes with the process
                self._queue.put(self._stop, timeout=timeout_s)
            self._thread.join(timeout_s)

    def offer(self, pipeline: Any, user_id: str, item_ids: np.ndarray, retrieval_scores: np.ndarray, live) -> None:
        """Queue one answered call (never blocks); ``live``: its RankResult."""
        if pipeline is None:
            return
        labels = (self.service, live.model_version, pipeline.version)
        if self.sample_rate < 1.0 and self._draw() >= self.sample_rate:
            self.total.labels(*labels, "sampled_out").inc()
            return
        try:
            self._queue.put_nowait((pipeline, user_id, item_ids, retrieval_scores, live))
        except queue.Full:
            self.total.labels(*labels, "dropped").inc()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is self._stop:
                return
            pipeline, user_id, item_ids, retrieval_scores, live = job
            labels = (self.service, live.model_version, pipeline.version)
            t = time.perf_counter()
            try:
                shadow = pipeline.rank(user_id, item_ids, retrieval_scores, record=False)
                rho, overlap = agreement(live.item_ids, shadow.item_ids)
            except Exception:  # noqa: BLE001 - the shadow must never take the service down
                self.total.labels(*labels, "failed").inc()
                log.exception("shadow ranker %s failed", pipeline.version)
                continue
            self.seconds.labels(self.service, pipeline.version).observe(time.perf_counter() - t)
            self.correlation.labels(*labels).observe(rho)
            self.overlap.labels(*labels).observe(overlap)
            self.total.labels(*labels, "scored").inc()
