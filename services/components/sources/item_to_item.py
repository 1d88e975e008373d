"""``item_to_item``: co-visitation neighbours of the user's recent items.

The table (bundle file ``item_neighbors``, built offline by ``models/covisit.py`` from the
train + valid interactions) holds each item's top neighbours: items the same users rated within
10 minutes of it, count / sqrt(n_i n_j). The seeds are the request's context followed by the
pushed ``user_context`` recent items, most recent first; a user with none gets nothing from it.
The lookup is :meth:`common.item_neighbors.ItemNeighbors.lookup`, the very function the offline
evaluation used (docs/contracts.md): on ml-100k it lifts merged-candidate recall@200 from 0.690
(two-tower alone) to 0.744 with a quota of 30 of 200.

Live co-visitation: with the events loop running, the consumer counts the same pairs as events
arrive (``{recsys:ev}:covisit:<item>``); the first ``live_seeds`` seeds' live neighbours (at most
``live_per_seed`` (20) each), scored the same way (count / sqrt(n_i n_j), seed-weighted), are added
to the table's scores, so a pair users start watching together today is proposed today. One
pipelined Redis round trip per request with seeds (a second only when there are live
neighbours); ``live_seeds = 0`` turns it off. A failed read serves the table alone and is counted
(``recsys_live_state_errors_total{read="covisitation"}``).
"""

from __future__ import annotations

import numpy as np

from common.bundle import Bundle
from common.item_neighbors import ItemNeighbors
from services.components.candidate_source import CandidateSource
from services.components.types import Candidates, Query


class ItemToItemSource(CandidateSource):
    artifacts = ("item_neighbors",)

    def __init__(self, name: str, *, live_seeds: int = 5, live_per_seed: int = 20, **options) -> None:
        super().__init__(name, **options)
        if live_seeds < 0 or live_per_seed < 1:
            raise ValueError("live_seeds must be >= 0 and live_per_seed >= 1")
        self.live_seeds, self.live_per_seed = live_seeds, live_per_seed
        self.live = None

    def load_artifacts(self, bundle: Bundle) -> None:
        self.table = ItemNeighbors.load(bundle.path("item_neighbors"))

    def attach(self, live) -> None:
        self.live = live if self.live_seeds else None

    def fetch(self, query: Query, n: int) -> Candidates:
        if n <= 0 or query.recent.size == 0:
            return Candidates.empty(self.name)
        ids, scores = self.table.lookup(query.recent, n)
        if self.live is None:
            return Candidates(ids, scores, self.name)
        seeds = _unique_in_order(query.recent)[: self.live_seeds]
        try:
            # n + the recent items: those are dropped below and must not eat the top n
            live_ids, live_scores = self.live.covisitation(seeds, self.live_per_seed, n + int(query.recent.size))
        except Exception as exc:  # noqa: BLE001 - Redis slow or down: the table alone
            self.live.failed("covisitation", exc)
            return Candidates(ids, scores, self.name)
        live_ids_kept = ~np.isin(live_ids, query.recent)
        live_ids, live_scores = live_ids[live_ids_kept], live_scores[live_ids_kept]
        if live_ids.size == 0:
            return Candidates(ids, scores, self.name)
        uniq, inv = np.unique(np.concatenate([ids, live_ids]), return_inverse=True)
        total = np.bincount(inv, weights=np.concatenate([scores.astype(np.float64), live_scores]), minlength=uniq.size)
        order = np.lexsort((uniq, -total))[:n]  # score desc, then id asc (as the table's lookup)
        return Candidates(uniq[order], total[order].astype(np.float32), self.name)


def _unique_in_order(ids: np.ndarray) -> np.ndarray:
    _, first = np.unique(ids, return_index=True)
    out = ids[np.sort(first)]
    return out[out >= 0]


COMPONENT = ItemToItemSource
