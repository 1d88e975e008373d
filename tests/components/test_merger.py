"""The merger: quotas, the rest, fill-up, backfill, de-duplication and order."""

from __future__ import annotations

import numpy as np
import pytest

from services.components.merger import Merger, Slot
from services.components.types import Candidates


def cands(source: str, ids, scores=None) -> Candidates:
    ids = np.asarray(ids, np.int64)
    scores = np.linspace(1.0, 0.5, ids.size).astype(np.float32) if scores is None else np.asarray(scores, np.float32)
    return Candidates(ids, scores, source)


def merged_rows(m: Merger, per_slot, k):
    out = m.merge(per_slot, k)
    return list(zip(out.item_ids.tolist(), [m.names[c] for c in out.source_codes.tolist()], strict=True)), out


def test_rest_then_quota_then_backfill_in_slot_order():
    m = Merger([Slot("tt"), Slot("i2i", quota=2), Slot("pop", backfill=True)])
    rows, out = merged_rows(m, [cands("tt", [1, 2, 3, 4, 5]), cands("i2i", [9, 8, 7]), cands("pop", [20, 21])], 5)
    assert rows == [(1, "tt"), (2, "tt"), (3, "tt"), (9, "i2i"), (8, "i2i")]
    assert out.taken == {"tt": 3, "i2i": 2, "pop": 0}
    assert out.scores.dtype == np.float32 and out.scores.tolist() == pytest.approx([1.0, 0.875, 0.75, 1.0, 0.75])


def test_places_a_thin_quota_source_leaves_go_to_the_other_primaries():
    m = Merger([Slot("tt"), Slot("i2i", quota=3)])
    rows, _ = merged_rows(m, [cands("tt", [1, 2, 3, 4, 5, 6]), cands("i2i", [9])], 5)
    assert rows == [(1, "tt"), (2, "tt"), (9, "i2i"), (3, "tt"), (4, "tt")]


def test_an_item_from_several_sources_is_kept_once_from_the_first_slot():
    m = Merger([Slot("tt"), Slot("i2i", quota=2), Slot("pop", backfill=True)])
    rows, out = merged_rows(m, [cands("tt", [1, 2]), cands("i2i", [2, 3, 1, 4]), cands("pop", [3, 5, 6])], 6)
    assert rows == [(1, "tt"), (2, "tt"), (3, "i2i"), (4, "i2i"), (5, "pop"), (6, "pop")]
    assert len(set(out.item_ids.tolist())) == out.item_ids.size


def test_backfill_only_when_the_primaries_are_short():
    m = Merger([Slot("tt"), Slot("pop", backfill=True)])
    full, _ = merged_rows(m, [cands("tt", [1, 2, 3]), cands("pop", [7, 8])], 3)
    assert [s for _, s in full] == ["tt"] * 3
    cold, out = merged_rows(m, [cands("tt", []), cands("pop", [7, 8, 9])], 2)
    assert cold == [(7, "pop"), (8, "pop")] and out.taken == {"tt": 0, "pop": 2}


def test_quotas_above_k_are_capped_and_k_is_never_exceeded():
    m = Merger([Slot("a", quota=50), Slot("b", quota=50)])
    rows, _ = merged_rows(m, [cands("a", range(100, 160)), cands("b", range(200, 260))], 10)
    assert [s for _, s in rows] == ["a"] * 10
    assert m.wanted(10) == [10, 10]


def test_nothing_anywhere_is_an_empty_answer():
    m = Merger([Slot("tt"), Slot("pop", backfill=True)])
    out = m.merge([cands("tt", []), cands("pop", [])], 10)
    assert out.item_ids.size == 0 and out.source_codes.dtype == np.uint8


def test_the_served_merge_is_the_evaluated_one():
    """``models/`` evaluates the merged list with ``common.item_neighbors.merge_candidates``; the
    served merger (two_tower rest + item_to_item quota) must produce the same list."""
    from common.item_neighbors import merge_candidates

    rng = np.random.default_rng(7)
    m = Merger([Slot("two_tower"), Slot("item_to_item", quota=30), Slot("popular", backfill=True)])
    for _ in range(200):
        k = int(rng.integers(1, 120))
        tt = rng.choice(400, size=int(rng.integers(0, 150)), replace=False)
        i2i = rng.choice(400, size=int(rng.integers(0, 60)), replace=False)
        served = m.merge([cands("two_tower", tt), cands("item_to_item", i2i), cands("popular", [])], k)
        ids, src = merge_candidates(tt, i2i, k, 30)
        assert served.item_ids.tolist() == ids.tolist()
        assert served.source_codes.tolist() == src.tolist()


def test_a_share_scales_with_k():
    m = Merger([Slot("tt"), Slot("i2i", share=0.15)])
    for k, expected in ((300, 45), (30, 4), (3, 1)):
        out = m.merge([cands("tt", range(1000, 1400)), cands("i2i", range(1, 400))], k)
        assert out.taken == {"tt": k - expected, "i2i": expected}, k
