"""Item-to-item neighbours (co-visitation): the table, its ``.npz`` file, the per-request lookup
and the candidate merge with two-tower retrieval.

Built offline by ``models/covisit.py`` (bundle file ``item_neighbors``, docs/contracts.md); the
offline evaluation and the serving candidate source call the same :meth:`ItemNeighbors.lookup`
and :func:`merge_candidates`, so the evaluated candidate list is the served one.

numpy only: the serving images ship ``common/`` but not ``models/`` (no torch, no pandas).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ARRAYS = {"item_ids": np.int64, "indptr": np.int64, "neighbor_ids": np.int64, "scores": np.float32}


def seed_weights(n: int) -> np.ndarray:
    """Weight of the seed at position ``pos`` of the recent list (0 = most recent): 1 / (1 + pos).

    Measured on ml-100k (600 s window, quota 30 of 200, merged recall@200; item_to_item alone
    recall@100 in brackets): equal weights 0.722 (0.543), 1/sqrt(1+pos) 0.737 (0.573),
    1/(1+pos) 0.744 (0.578), 1/(1+pos)^2 0.742 (0.575): the latest items say most about the next
    ones, but the rest of the latest rating session still counts."""
    return (1.0 / (1.0 + np.arange(n, dtype=np.float64))).astype(np.float64)


class ItemNeighbors:
    """A sparse top-N neighbour table in CSR form.

    ``item_ids`` int64 [n] (sorted, unique: the source items), ``indptr`` int64 [n + 1]
    (monotone, ``indptr[0] == 0``, ``indptr[-1] == len(neighbor_ids)``), ``neighbor_ids`` int64
    and ``scores`` float32 (the neighbours of ``item_ids[r]`` are ``[indptr[r], indptr[r + 1])``,
    best first).
    """

    def __init__(self, item_ids: np.ndarray, indptr: np.ndarray, neighbor_ids: np.ndarray,
                 scores: np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids)
        self.indptr = np.asarray(indptr)
        self.neighbor_ids = np.asarray(neighbor_ids)
        self.scores = np.asarray(scores)
        self._validate()

    # ---- file ------------------------------------------------------------------------------
    def _validate(self) -> None:
        for name, dtype in ARRAYS.items():
            a = getattr(self, name)
            if a.dtype != dtype:
                raise ValueError(f"item neighbours: {name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
            if a.ndim != 1:
                raise ValueError(f"item neighbours: {name} has shape {a.shape}, expected 1-d")
        n = self.item_ids.size
        if self.indptr.size != n + 1:
            raise ValueError(f"item neighbours: indptr has {self.indptr.size} entries, expected "
                             f"len(item_ids) + 1 = {n + 1}")
        if self.neighbor_ids.size != self.scores.size:
            raise ValueError(f"item neighbours: neighbor_ids ({self.neighbor_ids.size}) and scores "
                             f"({self.scores.size}) differ in length")
        if self.indptr[0] != 0 or self.indptr[-1] != self.neighbor_ids.size:
            raise ValueError(f"item neighbours: indptr must start at 0 and end at len(neighbor_ids) = "
                             f"{self.neighbor_ids.size}, got {self.indptr[0]} .. {self.indptr[-1]}")
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("item neighbours: indptr is not monotone (non-decreasing)")
        if n and np.any(np.diff(self.item_ids) <= 0):
            raise ValueError("item neighbours: item_ids are not sorted and unique")
        if not np.all(np.isfinite(self.scores)):
            raise ValueError("item neighbours: scores contain NaN or inf")

    @classmethod
    def load(cls, path: str | Path) -> ItemNeighbors:
        """Read one ``.npz`` (no pickles); ``ValueError`` naming the problem when it is malformed."""
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as exc:  # missing, not a zip / .npy, pickled data (refused), ...
            raise ValueError(f"item neighbours file {path} is not a readable .npz: {exc}") from exc
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"item neighbours file {path} is a single .npy array, not an .npz of {', '.join(ARRAYS)}")
        with z:
            missing = [k for k in ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"item neighbours file {path} lacks {', '.join(missing)}")
            try:
                arrays = {k: z[k] for k in ARRAYS}
            except Exception as exc:  # a truncated member (zlib / BadZipFile), an object array
                raise ValueError(f"item neighbours file {path} is not a readable .npz: {exc}") from exc
        try:
            return cls(**arrays)
        except ValueError as exc:
            raise ValueError(f"{exc} (file {path})") from exc

    def save(self, path: str | Path) -> None:
        """Write the four arrays with ``np.savez`` (uncompressed, no pickles: ~0.9 MB on ml-100k)."""
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, **{k: getattr(self, k) for k in ARRAYS})

    # ---- stats -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.item_ids.size)

    @property
    def items_with_neighbors(self) -> int:
        return int(np.count_nonzero(np.diff(self.indptr)))

    @property
    def mean_neighbors(self) -> float:
        n = self.items_with_neighbors
        return float(self.neighbor_ids.size / n) if n else 0.0

    def neighbors(self, item_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour ids, scores) of one item, best first; empty when unknown."""
        r = int(np.searchsorted(self.item_ids, item_id))
        if r >= self.item_ids.size or self.item_ids[r] != item_id:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        s, e = self.indptr[r], self.indptr[r + 1]
        return self.neighbor_ids[s:e], self.scores[s:e]

    # ---- per request -----------------------------------------------------------------------
    def lookup(self, recent_item_ids: np.ndarray, k: int, exclude: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of a user's recent items: (ids int64, scores float32), best first.

        ``recent_item_ids``: most recent first (a repeated id counts at its most recent position;
        negative ids are padding). Each seed's neighbour scores are multiplied by
        :func:`seed_weights` (1 / (1 + position)) and summed per neighbour; the seeds themselves
        and ``exclude`` are dropped; ties are broken by the smaller id (deterministic). Unknown
        seeds contribute nothing.
        """
        recent = np.asarray(recent_item_ids, dtype=np.int64).reshape(-1)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if k <= 0 or recent.size == 0 or self.item_ids.size == 0:
            return empty
        pos = np.arange(recent.size)
        _, first = np.unique(recent, return_index=True)  # most recent occurrence of each id
        keep = np.sort(first)
        keep = keep[recent[keep] >= 0]
        seeds, seed_pos = recent[keep], pos[keep]
        rows = np.clip(np.searchsorted(self.item_ids, seeds), 0, self.item_ids.size - 1)
        known = self.item_ids[rows] == seeds
        rows, w = rows[known], seed_weights(recent.size)[seed_pos[known]]
        starts, lens = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        total = int(lens.sum())
        if total == 0:
            return empty
        # flat positions of every seed's neighbour slice, without a Python loop:
        # start of the slice + offset within it
        offsets = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        flat = np.repeat(starts, lens) + offsets
        nb = self.neighbor_ids[flat]
        contrib = self.scores[flat].astype(np.float64) * np.repeat(w, lens)
        cand, inv = np.unique(nb, return_inverse=True)
        agg = np.bincount(inv.reshape(-1), weights=contrib, minlength=cand.size)
        drop = np.isin(cand, recent)
        if exclude is not None and np.size(exclude):
            drop |= np.isin(cand, np.asarray(exclude, dtype=np.int64).reshape(-1))
        cand, agg = cand[~drop], agg[~drop]
        if cand.size == 0:
            return empty
        order = np.lexsort((cand, -agg))[:k]  # score desc, then id asc
        return cand[order].astype(np.int64), agg[order].astype(np.float32)


def merge_candidates(two_tower_ids: np.ndarray, item_to_item_ids: np.ndarray, k: int, quota: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The candidate list served and evaluated: (ids int64 [<= k], source int8: 0 two-tower, 1
    item-to-item), in this order.

    1. two-tower's first ``k - quota`` (its list best first, already without the user's
       excluded items; negative ids are padding and skipped);
    2. then item-to-item's list (best first, from :meth:`ItemNeighbors.lookup` with the same
       exclusions) minus the items already taken, at most ``quota``;
    3. then the rest of two-tower's list up to ``k`` when item-to-item had fewer than ``quota``.

    Pass item-to-item's list from ``lookup(seeds, k, exclude)`` (``k`` items, not ``quota``): its
    first ``quota`` may already be in two-tower's head, and step 2 then takes the next ones.
    """
    tt = np.asarray(two_tower_ids, dtype=np.int64).reshape(-1)
    tt = tt[tt >= 0]
    quota = max(0, min(int(quota), int(k)))
    head = tt[: k - quota]
    i2i = np.asarray(item_to_item_ids, dtype=np.int64).reshape(-1)
    _, first = np.unique(i2i, return_index=True)
    i2i = i2i[np.sort(first)]
    i2i = i2i[(i2i >= 0) & ~np.isin(i2i, head)][:quota]
    rest = tt[k - quota:]
    rest = rest[~np.isin(rest, i2i)][: k - head.size - i2i.size]
    ids = np.concatenate([head, i2i, rest])
    src = np.concatenate([np.zeros(head.size, np.int8), np.ones(i2i.size, np.int8), np.zeros(rest.size, np.int8)])
    return ids, src
