"""Filters: kept + removed, the filter's name as the reason; order of the kept ones unchanged."""

from __future__ import annotations

import numpy as np

from services.components.filters.recent_items import RecentItems
from services.components.filters.request_exclusions import RequestExclusions
from services.components.filters.seen_items import SeenItems
from services.components.types import Candidates, Query


def test_each_filter_removes_its_own_ids_and_says_so():
    q = Query(user_id="1", uid=1, k=5, exclude=np.array([3], np.int64), recent=np.array([4, 4], np.int64),
              seen=np.array([1, 9], np.int64))
    c = Candidates(np.array([1, 2, 3, 4, 5], np.int64), np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), "two_tower")
    for f, removed, kept in ((RequestExclusions("request_exclusions"), [3], [1, 2, 4, 5]),
                             (RecentItems("recent_items"), [4], [1, 2, 3, 5]),
                             (SeenItems("seen_items"), [1], [2, 3, 4, 5])):
        out = f.apply(q, c)
        assert out.reason == f.name
        assert out.removed.tolist() == removed
        assert out.kept.item_ids.tolist() == kept and out.kept.source == "two_tower"
        assert out.kept.scores.tolist() == [float(s) for i, s in zip(c.item_ids, c.scores, strict=True) if i in kept]
    assert RecentItems("recent_items").max_removed(q) == 2  # duplicates counted: an upper bound


def test_nothing_to_remove_returns_the_candidates_themselves():
    q = Query(user_id="u", uid=None, k=5)
    c = Candidates(np.array([1, 2], np.int64), np.array([0.2, 0.1], np.float32), "popular")
    out = SeenItems("seen_items").apply(q, c)
    assert out.kept is c and out.removed.size == 0
