"""``item_to_item``: co-visitation neighbours of the user's recent items.

The table (bundle file ``item_neighbors``, built offline by ``models/covisit.py`` from the
train + valid interactions) holds each item's top neighbours: items the same users rated within
10 minutes of it, count / sqrt(n_i n_j). The seeds are the request's context followed by the
pushed ``user_context`` recent items, most recent first; a user with none gets nothing from it.
The lookup is :meth:`common.item_neighbors.ItemNeighbors.lookup`, the very function the offline
evaluation used (docs/contracts.md): on ml-100k it lifts merged-candidate recall@200 from 0.690
(two-tower alone) to 0.744 with a quota of 30 of 200.
"""

from __future__ import annotations

from common.bundle import Bundle
from common.item_neighbors import ItemNeighbors
from services.components.candidate_source import CandidateSource
from services.components.types import Candidates, Query


class ItemToItemSource(CandidateSource):
    artifacts = ("item_neighbors",)

    def load_artifacts(self, bundle: Bundle) -> None:
        self.table = ItemNeighbors.load(bundle.path("item_neighbors"))

    def fetch(self, query: Query, n: int) -> Candidates:
        if n <= 0 or query.recent.size == 0:
            return Candidates.empty(self.name)
        ids, scores = self.table.lookup(query.recent, n)
        return Candidates(ids, scores, self.name)


COMPONENT = ItemToItemSource
