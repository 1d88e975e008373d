"""Metric functions and top-k with exclusions, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import evaluate as E


def test_recall_counts_hits_over_positives():
    ranked = [5, 3, 9, 1, 7]
    assert E.recall_at_k(ranked, {3, 7}, 2) == 0.5
    assert E.recall_at_k(ranked, {3, 7}, 5) == 1.0
    assert E.recall_at_k(ranked, {42}, 5) == 0.0
    assert E.recall_at_k(ranked, set(), 5) == 0.0


def test_ndcg_hand_computed():
    # hits at ranks 2 and 4 (1-based); ideal: ranks 1 and 2
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert E.ndcg_at_k([5, 3, 9, 7], {3, 7}, 10) == pytest.approx(dcg / idcg)
    assert E.ndcg_at_k([3, 7, 1], {3, 7}, 10) == pytest.approx(1.0)
    # only the first k count, the ideal is capped at k
    assert E.ndcg_at_k([1, 2, 3], {3}, 2) == 0.0
    assert E.ndcg_at_k([3, 1], {3, 4, 5}, 1) == pytest.approx(1.0)


def test_summarize_averages_over_users_with_positives():
    out = E.summarize([[1, 2], [3, 4], [5]], [{1}, {4, 9}, set()], ks=(1, 2))
    assert out["users"] == 2
    assert out["recall@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["ndcg@10"] == pytest.approx((1.0 + (1 / math.log2(3)) / (1 + 1 / math.log2(3))) / 2)


def test_topk_exact_skips_excluded_rows_and_orders_by_score():
    users = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    items = np.array([[0.9, 0.1], [0.8, 0.0], [0.1, 0.95], [0.5, 0.5]], np.float32)
    ids = np.array([10, 11, 12, 13])
    rows, scores = E.topk_exact(users, items, [np.array([0]), np.array([], np.int64)], 3, item_ids=ids)
    assert rows.tolist() == [[11, 13, 12], [12, 13, 10]]
    assert scores[0].tolist() == pytest.approx([0.8, 0.5, 0.1])
    rows, _ = E.topk_exact(users, items, [np.array([0, 1, 2]), np.array([0])], 3, item_ids=ids)
    assert rows[0].tolist() == [13, -1, -1]  # only one item left


def test_search_excluding_and_overlap():
    faiss = pytest.importorskip("faiss")
    items = np.eye(4, dtype=np.float32) * np.array([4, 3, 2, 1], np.float32)[:, None]
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
    index.add_with_ids(items, np.array([100, 101, 102, 103], np.int64))
    q = np.ones((1, 4), np.float32)
    ids, sc = E.search_excluding(index, q, [{100, 102}], 2)
    assert ids.tolist() == [[101, 103]]
    assert sc.tolist() == [[3.0, 1.0]]
    assert E.overlap_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), 3) == pytest.approx(2 / 3)
