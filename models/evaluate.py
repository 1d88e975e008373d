"""Ranking metrics and top-k search with per-user exclusions (one protocol for every method)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

KS = (10, 50, 100)


def recall_at_k(ranked: Sequence[int] | np.ndarray, positives: set[int], k: int) -> float:
    """Share of the user's held-out items found in the first ``k`` (0 when there are none)."""
    if not positives:
        return 0.0
    top = np.asarray(ranked)[:k]
    return float(sum(int(i) in positives for i in top)) / len(positives)


def ndcg_at_k(ranked: Sequence[int] | np.ndarray, positives: set[int], k: int) -> float:
    """Binary-relevance NDCG: sum 1/log2(rank+1) over hits, over the ideal for min(|pos|, k)."""
    if not positives:
        return 0.0
    top = np.asarray(ranked)[:k]
    dcg = sum(1.0 / np.log2(r + 2) for r, i in enumerate(top) if int(i) in positives)
    idcg = sum(1.0 / np.log2(r + 2) for r in range(min(len(positives), k)))
    return float(dcg / idcg)


def summarize(rankings: Iterable[Sequence[int] | np.ndarray], positives: Iterable[set[int]],
              ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean recall@k for every k and NDCG@10 over users."""
    rows = [(r, p) for r, p in zip(rankings, positives, strict=True) if p]
    out = {f"recall@{k}": float(np.mean([recall_at_k(r, p, k) for r, p in rows])) for k in ks}
    out["ndcg@10"] = float(np.mean([ndcg_at_k(r, p, 10) for r, p in rows]))
    out["users"] = len(rows)
    return out


def topk_exact(user_emb: np.ndarray, item_emb: np.ndarray, exclude: Sequence[np.ndarray], k: int,
               item_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k per user, skipping ``exclude[u]`` (rows of ``item_emb``).

    Returns (rows or ids [U, k], scores [U, k]), best first; -1 / -inf where fewer than k remain.
    """
    scores = user_emb @ item_emb.T
    for u, ex in enumerate(exclude):
        scores[u, ex] = -np.inf
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    sc = np.take_along_axis(part_scores, order, axis=1)
    rows = np.where(np.isfinite(sc), rows, -1)
    if item_ids is not None:
        rows = np.where(rows >= 0, item_ids[np.maximum(rows, 0)], -1)
    return rows, sc


def search_excluding(index, user_emb: np.ndarray, exclude_ids: Sequence[set[int]], k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search (ids = item ids) returning the top-k ids per user not in ``exclude_ids[u]``."""
    n_ex = max((len(e) for e in exclude_ids), default=0)
    kk = min(index.ntotal, k + n_ex)
    scores, ids = index.search(np.ascontiguousarray(user_emb, dtype=np.float32), kk)
    out_ids = np.full((len(user_emb), k), -1, np.int64)
    out_sc = np.full((len(user_emb), k), -np.inf, np.float32)
    for u, ex in enumerate(exclude_ids):
        keep = [(i, s) for i, s in zip(ids[u], scores[u], strict=True) if i >= 0 and int(i) not in ex][:k]
        if keep:
            out_ids[u, : len(keep)] = [i for i, _ in keep]
            out_sc[u, : len(keep)] = [s for _, s in keep]
    return out_ids, out_sc


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean |a[u,:k] ∩ b[u,:k]| / k: ANN recall against exact search."""
    vals = []
    for x, y in zip(a, b, strict=True):
        ref = {int(i) for i in y[:k] if i >= 0}
        if ref:
            vals.append(len(ref & {int(i) for i in x[:k] if i >= 0}) / len(ref))
    return float(np.mean(vals)) if vals else 0.0
