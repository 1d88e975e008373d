"""Model inputs from feature values: one code path for the offline pipeline and the services.

The user tower's ONNX feed and the ranker's feature matrix are built here, from features keyed
by Feast references (``"view:feature"``), exactly as described by the bundle manifest
(``manifest["user_tower"]`` and ``manifest["ranker_features"]``). The offline evaluation and
the ranker's training set (built from Feast ``get_historical_features`` output) call the same
functions the retrieval and ranking services call per request.

numpy only: no torch, no onnxruntime, no Feast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.bundle import Bundle

# Inputs of the user tower ONNX model (docs/contracts.md).
USER_IDX = "user_idx"
USER_CAT = "user_cat"
USER_GENRE_AFFINITY = "user_genre_affinity"
RECENT_ITEM_IDX = "recent_item_idx"
USER_EMBEDDING = "user_embedding"

RECENT_ITEM_IDS = "user_context:recent_item_ids"
SEEN_ITEM_IDS = "user_seen:seen_item_ids"  # a serving filter, not a model input
GENRE_AFFINITY = "user_aggregates:genre_affinity"
ITEM_GENRES = "item_profile:genres"

# Cross features the ranker may use; anything else in ``source`` is a feature reference.
CROSS_RETRIEVAL_SCORE = "cross:retrieval_score"
CROSS_GENRE_AFFINITY = "cross:user_genre_affinity"  # <user genre_affinity, item genres>
CROSS_GENRE_AFFINITY_MAX = "cross:user_genre_affinity_max"  # max over the item's genres
CROSS_GENRE_MATCH = "cross:genre_match_count"  # item genres the user has watched at all
CROSS_FEATURES = (CROSS_RETRIEVAL_SCORE, CROSS_GENRE_AFFINITY, CROSS_GENRE_AFFINITY_MAX, CROSS_GENRE_MATCH)


class ModelInputError(ValueError):
    """A feature value has the wrong shape or type for the model."""


def _id_lookup(ids: np.ndarray):
    """A vectorised ``ids -> rows`` function; row 0 (id -1) and unknown ids map to 0."""
    ids = np.asarray(ids, dtype=np.int64)
    known = ids[1:]
    if known.size and known.min() >= 0 and known.max() < max(4 * known.size, 1 << 20):
        table = np.zeros(int(known.max()) + 2, dtype=np.int64)
        table[known] = np.arange(1, ids.size, dtype=np.int64)
        size = table.size - 1  # the last slot stays 0: every out-of-range id is clipped onto it

        def lookup(q: np.ndarray) -> np.ndarray:
            q = np.asarray(q, dtype=np.int64)
            return table[np.where((q >= 0) & (q < size), q, size)]

        return lookup
    order = np.argsort(known, kind="stable")
    sorted_ids = known[order]
    rows = order.astype(np.int64) + 1

    def lookup_sorted(q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.int64)
        if sorted_ids.size == 0:
            return np.zeros(q.shape, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, q), 0, sorted_ids.size - 1)
        return np.where(sorted_ids[pos] == q, rows[pos], 0)

    return lookup_sorted


@dataclass(frozen=True)
class _Column:
    """One block of ranker columns ``[start, stop)`` filled from one source."""

    start: int
    stop: int
    kind: str  # "cross" | "user" | "item"
    source: str
    index: tuple[int, ...] | None  # element(s) of an array feature, None for a scalar


class ModelInputs:
    """Builds the user tower feed and the ranker matrix for one bundle (or a bundle in the making)."""

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        user_tower: Mapping[str, Any],
        ranker_features: Sequence[Mapping[str, Any]],
        n_genres: int,
    ) -> None:
        self.user_ids = np.asarray(user_ids, dtype=np.int64)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self._user_lookup = _id_lookup(self.user_ids)
        self._item_lookup = _id_lookup(self.item_ids)
        self.n_genres = int(n_genres)
        self.n_recent = int(user_tower["n_recent"])
        self.user_cat_sources: list[str] = [c["source"] for c in user_tower["categorical"]]
        self.user_cat_cardinality = np.array([c["cardinality"] for c in user_tower["categorical"]], np.int64)
        self.ranker_features = [dict(f) for f in ranker_features]
        self._plan = self._compile(self.ranker_features)
        self.n_features = len(self.ranker_features)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelInputs:
        m = bundle.manifest
        user_ids = np.load(bundle.path("user_ids"), allow_pickle=False)
        item_ids = np.load(bundle.path("item_ids"), allow_pickle=False)
        return cls(user_ids, item_ids, m["user_tower"], m["ranker_features"], len(m["genres"]))

    # ---- ids -------------------------------------------------------------------------------
    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return self._user_lookup(user_ids)

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        return self._item_lookup(item_ids)

    # ---- user tower ------------------------------------------------------------------------
    def _cat_row(self, user_values: Mapping[str, Any]) -> np.ndarray:
        cats = np.array([_as_int(user_values.get(s)) for s in self.user_cat_sources], dtype=np.int64)
        return np.where((cats >= 0) & (cats < self.user_cat_cardinality), cats, 0)

    def _affinity(self, value: Any) -> np.ndarray:
        if value is None:
            return np.zeros(self.n_genres, np.float32)
        arr = np.asarray(value, dtype=np.float32).reshape(-1)
        if arr.size != self.n_genres:
            if arr.size == 0:
                return np.zeros(self.n_genres, np.float32)
            raise ModelInputError(f"{GENRE_AFFINITY} has {arr.size} values, expected {self.n_genres}")
        return arr

    def _recent_rows(self, recent_item_ids: Sequence[int] | np.ndarray | None) -> np.ndarray:
        out = np.zeros(self.n_recent, np.int64)
        if recent_item_ids is None:
            return out
        ids = np.asarray(recent_item_ids, dtype=np.int64).reshape(-1)[: self.n_recent]
        out[: ids.size] = self.item_rows(ids)
        return out

    def user_tower_feed(
        self, user_id: int | None, user_values: Mapping[str, Any], recent_item_ids: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """Feed for one user (batch of 1). ``recent_item_ids``: most recent first (request context
        first, then ``user_context:recent_item_ids``); unknown ids become padding."""
        row = 0 if user_id is None else int(self.user_rows(np.array([user_id]))[0])
        return {
            USER_IDX: np.array([row], np.int64),
            USER_CAT: self._cat_row(user_values)[None, :],
            USER_GENRE_AFFINITY: self._affinity(user_values.get(GENRE_AFFINITY))[None, :],
            RECENT_ITEM_IDX: self._recent_rows(recent_item_ids)[None, :],
        }

    def user_tower_feed_batch(
        self,
        user_ids: Sequence[int | None] | np.ndarray,
        user_values_list: Sequence[Mapping[str, Any]],
        recent_item_ids_list: Sequence[Sequence[int]],
    ) -> dict[str, np.ndarray]:
        n = len(user_ids)
        if len(user_values_list) != n or len(recent_item_ids_list) != n:
            raise ModelInputError("user_ids, user_values_list and recent_item_ids_list differ in length")
        ids = np.array([-1 if u is None else int(u) for u in user_ids], np.int64)
        rows = np.where(ids >= 0, self.user_rows(ids), 0) if n else np.zeros(0, np.int64)
        cat = np.zeros((n, len(self.user_cat_sources)), np.int64)
        aff = np.zeros((n, self.n_genres), np.float32)
        recent = np.zeros((n, self.n_recent), np.int64)
        for i, (values, rec) in enumerate(zip(user_values_list, recent_item_ids_list, strict=True)):
            cat[i] = self._cat_row(values)
            aff[i] = self._affinity(values.get(GENRE_AFFINITY))
            recent[i] = self._recent_rows(rec)
        return {USER_IDX: rows, USER_CAT: cat, USER_GENRE_AFFINITY: aff, RECENT_ITEM_IDX: recent}

    # ---- ranker ----------------------------------------------------------------------------
    @staticmethod
    def _compile(features: Sequence[Mapping[str, Any]]) -> list[_Column]:
        """Group consecutive columns that read consecutive elements of one source."""
        plan: list[_Column] = []
        for j, f in enumerate(features):
            source = f["source"]
            if source.startswith("cross:"):
                if source not in CROSS_FEATURES:
                    raise ModelInputError(f"unknown cross feature {source!r} in ranker_features")
                kind = "cross"
            elif source.startswith(("user_", "item_")) and ":" in source:
                kind = "user" if source.startswith("user_") else "item"
            else:
                raise ModelInputError(f"ranker feature {f.get('name')!r}: bad source {source!r}")
            idx = f.get("index")
            last = plan[-1] if plan else None
            if (
                idx is not None and last is not None and last.source == source and last.index is not None
                and last.stop == j and last.index[-1] + 1 == idx
            ):
                plan[-1] = _Column(last.start, j + 1, kind, source, (*last.index, int(idx)))
            else:
                plan.append(_Column(j, j + 1, kind, source, None if idx is None else (int(idx),)))
        return plan

    def ranker_matrix(
        self,
        user_values: Mapping[str, Any],
        item_values: Mapping[str, np.ndarray],
        retrieval_scores: np.ndarray,
    ) -> np.ndarray:
        """float32 ``[N, F]`` in ``ranker_features`` order.

        ``user_values``: feature ref -> scalar / ``[d]`` (one request), or ``[N]`` / ``[N, d]``
        (one value per row: the offline training set). Missing refs become 0.
        ``item_values``: feature ref -> ``[N]`` or ``[N, d]``. ``retrieval_scores``: ``[N]``.
        """
        scores = np.asarray(retrieval_scores, dtype=np.float32).reshape(-1)
        n = scores.shape[0]
        out = np.zeros((n, self.n_features), np.float32)
        genres = affinity = prod = None
        for col in self._plan:
            if col.kind == "cross":
                if col.source == CROSS_RETRIEVAL_SCORE:
                    out[:, col.start] = scores
                    continue
                if genres is None:
                    genres = _item_array(item_values, ITEM_GENRES, n, self.n_genres)
                    affinity = _user_array(user_values, GENRE_AFFINITY, self.n_genres)
                if col.source == CROSS_GENRE_AFFINITY:
                    # one request: a matrix-vector product; per-row users (training): row-wise dot
                    out[:, col.start] = genres @ affinity if affinity.ndim == 1 else np.einsum("ng,ng->n", genres, affinity)
                elif col.source == CROSS_GENRE_MATCH:
                    has = (affinity > 0).astype(np.float32)
                    out[:, col.start] = genres @ has if has.ndim == 1 else np.einsum("ng,ng->n", genres > 0, has)
                else:  # CROSS_GENRE_AFFINITY_MAX
                    if prod is None:
                        prod = genres * affinity
                    out[:, col.start] = prod.max(axis=1) if self.n_genres else 0.0
                continue
            if col.kind == "item":
                value = item_values.get(col.source)
                if value is None:
                    continue
                arr = np.asarray(value)
                if arr.shape[0] != n:
                    raise ModelInputError(f"{col.source} has {arr.shape[0]} rows, expected {n}")
            else:
                value = user_values.get(col.source)
                if value is None:
                    continue
                arr = np.asarray(value)
            if col.index is None:
                out[:, col.start] = arr
            else:
                a, b = col.index[0], col.index[-1] + 1
                if arr.ndim == 0 or arr.shape[-1] < b:
                    if arr.size == 0:
                        continue
                    raise ModelInputError(f"{col.source} has shape {arr.shape}, needs element {b - 1}")
                out[:, col.start:col.stop] = arr[..., a:b]
        return out


def _as_int(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _item_array(item_values: Mapping[str, np.ndarray], ref: str, n: int, d: int) -> np.ndarray:
    value = item_values.get(ref)
    if value is None:
        return np.zeros((n, d), np.float32)
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (n, d):
        raise ModelInputError(f"{ref} has shape {arr.shape}, expected {(n, d)}")
    return arr


def _user_array(user_values: Mapping[str, Any], ref: str, d: int) -> np.ndarray:
    value = user_values.get(ref)
    if value is None:
        return np.zeros(d, np.float32)
    arr = np.asarray(value, dtype=np.float32)
    if arr.size == 0:
        return np.zeros(d, np.float32)
    if arr.shape[-1] != d:
        raise ModelInputError(f"{ref} has shape {arr.shape}, expected [..., {d}]")
    return arr
