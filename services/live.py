"""What the events loop learned, read by the candidate sources: live popularity and co-visitation.

The events consumer (``python -m services.events``) keeps, in the Redis of the Feast online
store, a time-decayed popularity (``{recsys:ev}:popular``) and co-visitation counts
(``{recsys:ev}:covisit:<item>``, ``{recsys:ev}:item_n``); key names and the decay scale are
:mod:`common.realtime`'s. :class:`LiveState` reads them for the ``popular`` and
``item_to_item`` sources, with the feature reader's Redis client (so the same socket timeout:
a slow Redis costs one bounded wait, then the sources answer from the bundle alone).

Only the Redis online store has it: with Feast's embedded SQLite store (no Redis) there is no
events loop, :func:`live_state_for` returns None and the sources serve the bundle's tables.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from common.item_neighbors import seed_weights
from common.realtime import ITEM_COUNTS, POPULAR, POPULAR_META, PopularScale, covisit_key

log = logging.getLogger(__name__)

_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.float64))


class LiveState:
    def __init__(self, client: Any, registry=None, clock=time.time) -> None:
        from prometheus_client import REGISTRY, Counter

        self.client = client
        self.clock = clock
        self.errors = Counter("recsys_live_state_errors_total",
                              "Reads of the events loop's live state that failed (served from the bundle alone).",
                              ["read"], registry=REGISTRY if registry is None else registry)
        self._n_errors = 0

    def failed(self, read: str, exc: BaseException) -> None:
        """Count a failed read (the caller serves without live state); log every 100th."""
        self.errors.labels(read=read).inc()
        self._n_errors += 1
        if self._n_errors % 100 == 1:
            log.warning("live state read %s failed (%d so far), serving the bundle's tables: %r",
                        read, self._n_errors, exc)

    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items by live events: (ids, weight decayed to now), best first."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(POPULAR, 0, n - 1, withscores=True)
            pipe.hmget(POPULAR_META, ["epoch", "half_life_s"])
            rows, (epoch, half_life) = pipe.execute()
        if not rows or epoch is None or half_life is None:
            return _EMPTY
        factor = PopularScale(float(epoch), float(half_life)).factor_now(self.clock())
        ids = np.array([int(m) for m, _ in rows], np.int64)
        return ids, np.array([s for _, s in rows], np.float64) * factor

    def covisitation(self, seeds: np.ndarray, per_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Live co-visitation neighbours of ``seeds`` (most recent first): (ids, score), with the
        offline table's score, count / sqrt(n_i n_j), summed over the seeds with
        :func:`common.item_neighbors.seed_weights`; seeds themselves dropped. One round trip, a
        second only when some seed has live neighbours."""
        seeds = [int(s) for s in seeds]
        if not seeds or per_seed <= 0:
            return _EMPTY
        with self.client.pipeline(transaction=False) as pipe:
            for s in seeds:
                pipe.zrevrange(covisit_key(s), 0, per_seed - 1, withscores=True)
            pipe.hmget(ITEM_COUNTS, seeds)
            *lists, seed_n = pipe.execute()
        if not any(lists):
            return _EMPTY
        neighbours = sorted({int(m) for rows in lists for m, _ in rows})
        nb_n = dict(zip(neighbours, self.client.hmget(ITEM_COUNTS, neighbours), strict=True))
        w = seed_weights(len(seeds))
        score: dict[int, float] = {}
        for pos, (rows, n_i) in enumerate(zip(lists, seed_n, strict=True)):
            n_i = float(n_i or 0)
            for member, count in rows:
                j = int(member)
                n_j = float(nb_n.get(j) or 0)
                if n_i > 0 and n_j > 0:
                    score[j] = score.get(j, 0.0) + w[pos] * count / np.sqrt(n_i * n_j)
        for s in seeds:
            score.pop(s, None)
        if not score:
            return _EMPTY
        ids = np.fromiter(score.keys(), np.int64, len(score))
        return ids, np.fromiter(score.values(), np.float64, len(score))


def live_state_for(reader: Any, registry=None) -> LiveState | None:
    """The live state next to the feature reader's online store: Redis only (None otherwise)."""
    backend = getattr(reader, "backend", None)
    if getattr(backend, "type", None) != "redis":
        return None
    return LiveState(backend.client, registry)
