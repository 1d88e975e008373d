"""Co-visitation table: window, symmetry, normalisation, top_n; no test-split pair on real data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from common.settings import REPO_ROOT
from models import covisit as C
from models import data as D

RAW = REPO_ROOT / "data" / "raw" / "ml-100k"


def frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])


def score(nb, a: int, b: int) -> float | None:
    ids, sc = nb.neighbors(a)
    hit = np.flatnonzero(ids == b)
    return float(sc[hit[0]]) if hit.size else None


def test_window_is_respected_and_users_do_not_mix():
    inter = frame([
        (1, 10, 0), (1, 11, 100), (1, 12, 1000),  # 10-11 within 100 s, 12 is 900 s after 11
        (2, 13, 50), (3, 14, 60),  # different users, close in time: never a pair
    ])
    nb = C.build(inter, window_s=100, top_n=10)
    assert score(nb, 10, 11) is not None
    assert score(nb, 11, 12) is None and score(nb, 10, 12) is None
    assert score(nb, 13, 14) is None and nb.neighbors(13)[0].size == 0
    wide = C.build(inter, window_s=1000, top_n=10)
    assert score(wide, 10, 12) is not None and score(wide, 11, 12) is not None
    assert score(wide, 13, 14) is None


def test_counts_are_symmetric_and_cosine_normalised():
    # item 1 is popular (4 users), 2 and 3 are rated by 2 users each
    inter = frame([
        (1, 1, 0), (1, 2, 1), (1, 3, 2),
        (2, 1, 0), (2, 2, 1), (2, 3, 2),
        (3, 1, 0), (4, 1, 0),
    ])
    nb = C.build(inter, window_s=10, top_n=10)
    for a, b in [(1, 2), (1, 3), (2, 3)]:
        assert score(nb, a, b) == pytest.approx(score(nb, b, a))
    assert score(nb, 2, 3) == pytest.approx(2 / math.sqrt(2 * 2))  # 1.0
    assert score(nb, 1, 2) == pytest.approx(2 / math.sqrt(4 * 2))  # popular 1 is discounted
    # best first: for item 2, item 3 (specific) ranks above the popular item 1 despite equal counts
    assert nb.neighbors(2)[0].tolist() == [3, 1]
    assert nb.scores.dtype == np.float32 and nb.neighbor_ids.dtype == np.int64


def test_re_rating_the_same_item_is_one_visit_and_never_its_own_neighbour():
    inter = frame([(1, 1, 0), (1, 1, 5), (1, 2, 6), (2, 1, 0), (2, 2, 1)])
    nb = C.build(inter, window_s=10, top_n=10)
    assert 1 not in nb.neighbors(1)[0]
    assert score(nb, 1, 2) == pytest.approx(1.0)  # 2 users each, 2 co-visits


def test_top_n_and_min_count():
    # item 0 co-visits with 1..5; item k is rated by k users -> 0's neighbours best first are 1, 2, ...
    rows = []
    uid = 0
    for k in range(1, 6):
        for r in range(k):
            uid += 1
            rows += [(uid, 0, 0), (uid, k, 1)] if r == 0 else [(uid, k, 1)]
    nb = C.build(frame(rows), window_s=10, top_n=3)
    ids, sc = nb.neighbors(0)
    assert ids.tolist() == [1, 2, 3] and np.all(np.diff(sc) <= 0)
    assert all(nb.neighbors(i)[0].size <= 3 for i in nb.item_ids)
    # a pair seen by a single user is dropped with min_count=2
    assert C.build(frame(rows), window_s=10, top_n=3, min_count=2).neighbors(0)[0].size == 0


def test_chunked_expansion_matches_one_chunk():
    rng = np.random.default_rng(0)
    inter = frame([(int(u), int(i), int(t)) for u, i, t in
                   zip(rng.integers(0, 20, 600), rng.integers(0, 80, 600), rng.integers(0, 5000, 600), strict=True)])
    a = C.build(inter, window_s=300, top_n=15, max_pairs=37)
    b = C.build(inter, window_s=300, top_n=15, max_pairs=10_000_000)
    for name in ("item_ids", "indptr", "neighbor_ids", "scores"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_brute_force_agreement_on_random_data():
    rng = np.random.default_rng(1)
    inter = frame([(int(u), int(i), int(t)) for u, i, t in
                   zip(rng.integers(0, 10, 200), rng.integers(0, 30, 200), rng.integers(0, 2000, 200), strict=True)])
    window = 250
    nb = C.build(inter, window_s=window, top_n=1000)
    first = inter.sort_values(["user_id", "ts", "item_id"]).drop_duplicates(["user_id", "item_id"])
    n = first.groupby("item_id")["user_id"].nunique()
    pairs: dict[tuple[int, int], set[int]] = {}
    for u, g in first.groupby("user_id"):
        it, ts = g["item_id"].to_numpy(), g["ts"].to_numpy()
        for x in range(len(it)):
            for y in range(len(it)):
                if it[x] != it[y] and abs(ts[x] - ts[y]) <= window:
                    pairs.setdefault((int(it[x]), int(it[y])), set()).add(int(u))
    assert sum(nb.neighbors(a)[0].size for a in nb.item_ids) == len(pairs)
    for (a, b), users in pairs.items():
        assert score(nb, a, b) == pytest.approx(len(users) / math.sqrt(n[a] * n[b]), rel=1e-6)


@pytest.fixture(scope="module")
def ds() -> D.Dataset:
    if not (RAW / "ml-100k.inter").is_file():
        pytest.fail(f"no MovieLens-100K in {RAW}: run `make data`")
    return D.load(RAW)


def test_real_data_table_is_built_from_non_test_interactions_only(ds):
    inter = ds.interactions
    non_test = inter[inter["split"] != "test"]
    window = 3600
    nb = C.build(non_test, window_s=window, top_n=2000)  # top_n above the catalog: every pair kept
    full = C.build(inter, window_s=window, top_n=2000)
    by_item = {i: g for i, g in non_test.groupby("item_id")[["user_id", "ts"]]}

    def covisited_outside_test(a: int, b: int) -> bool:
        if a not in by_item or b not in by_item:
            return False
        m = by_item[a].merge(by_item[b], on="user_id")
        return bool(((m["ts_x"] - m["ts_y"]).abs() <= window).any())

    # pairs of items in one user's test timestamp that no user co-visited in train + valid
    found = 0
    for _, g in inter[inter["split"] == "test"].groupby("user_id"):
        items = sorted(g["item_id"].tolist())
        for x in range(len(items)):
            for y in range(x + 1, len(items)):
                a, b = items[x], items[y]
                if covisited_outside_test(a, b):
                    continue
                assert score(nb, a, b) is None and score(nb, b, a) is None, (a, b)
                assert score(full, a, b) is not None  # the test split would have added it
                found += 1
        if found >= 20:
            break
    assert found >= 20, "expected test-only co-occurrences to check"
    assert set(nb.item_ids.tolist()) <= set(non_test["item_id"].tolist())
