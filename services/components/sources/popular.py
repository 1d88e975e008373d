"""``popular``: the bundle's recency-weighted popularity list, best first (cold start, back-fill)."""

from __future__ import annotations

import json

import numpy as np

from common.bundle import Bundle, BundleError
from services.components.candidate_source import CandidateSource
from services.components.types import Candidates, Query


class PopularSource(CandidateSource):
    artifacts = ("popular_items",)

    def load_artifacts(self, bundle: Bundle) -> None:
        path = bundle.path("popular_items")
        rows = json.loads(path.read_text())
        if not rows:
            raise BundleError(f"{path} holds no popular items")
        self.item_ids = np.array([r["item_id"] for r in rows], np.int64)
        self.scores = np.array([r["score"] for r in rows], np.float32)

    def fetch(self, query: Query, n: int) -> Candidates:
        return Candidates(self.item_ids[:n], self.scores[:n], self.name)


COMPONENT = PopularSource
