"""ItemNeighbors on hand-built tables: lookup semantics, the .npz file, the candidate merge."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from common.item_neighbors import ItemNeighbors, merge_candidates, seed_weights
from common.settings import REPO_ROOT


def table(rows: dict[int, list[tuple[int, float]]]) -> ItemNeighbors:
    ids = sorted(rows)
    indptr = np.cumsum([0] + [len(rows[i]) for i in ids]).astype(np.int64)
    nb = np.array([n for i in ids for n, _ in rows[i]], np.int64)
    sc = np.array([s for i in ids for _, s in rows[i]], np.float32)
    return ItemNeighbors(np.array(ids, np.int64), indptr, nb, sc)


@pytest.fixture
def nbrs() -> ItemNeighbors:
    return table({
        1: [(10, 0.9), (11, 0.45), (2, 0.4)],
        2: [(11, 0.8), (12, 0.6), (1, 0.3)],
        3: [(13, 0.7)],
        4: [],
    })


def test_scores_are_weighted_by_seed_position_and_summed(nbrs):
    ids, sc = nbrs.lookup(np.array([1, 2]), k=10)
    w0, w1 = seed_weights(2)
    assert (w0, w1) == (1.0, 0.5)
    expected = {10: 0.9 * w0, 11: 0.45 * w0 + 0.8 * w1, 12: 0.6 * w1}
    assert ids.tolist() == [10, 11, 12]  # best first
    np.testing.assert_allclose(sc, [expected[i] for i in ids.tolist()], rtol=1e-6)
    assert ids.dtype == np.int64 and sc.dtype == np.float32
    # the order of the recent list matters: 2 most recent now
    ids2, sc2 = nbrs.lookup(np.array([2, 1]), k=10)
    assert ids2.tolist() == [11, 12, 10]
    np.testing.assert_allclose(sc2, [0.8 + 0.225, 0.6, 0.45], rtol=1e-6)


def test_seeds_are_never_returned(nbrs):
    ids, _ = nbrs.lookup(np.array([1, 2]), k=10)
    assert 1 not in ids and 2 not in ids
    # a seed without neighbours of its own is removed from the others' lists too
    ids, _ = nbrs.lookup(np.array([1, 10]), k=10)
    assert 10 not in ids and ids.tolist() == [11, 2]


def test_exclude_and_k(nbrs):
    ids, _ = nbrs.lookup(np.array([1, 2]), k=10, exclude=np.array([11, 99]))
    assert ids.tolist() == [10, 12]
    ids, sc = nbrs.lookup(np.array([1, 2]), k=2)
    assert ids.tolist() == [10, 11] and sc.shape == (2,)
    assert nbrs.lookup(np.array([1]), k=0)[0].size == 0


def test_unknown_and_padding_seeds_are_ignored(nbrs):
    ref = nbrs.lookup(np.array([1]), k=10)
    ids, sc = nbrs.lookup(np.array([777, -1, 1]), k=10)
    # 777 and -1 contribute nothing; 1 is at position 2, so every score is scaled by 1/3
    assert ids.tolist() == ref[0].tolist()
    np.testing.assert_allclose(sc, ref[1] / 3, rtol=1e-6)
    assert nbrs.lookup(np.array([777, 4]), k=10)[0].size == 0  # unknown + no neighbours


def test_repeated_seed_counts_once_at_its_most_recent_position(nbrs):
    ids, sc = nbrs.lookup(np.array([3, 1, 1]), k=10)
    ids1, sc1 = nbrs.lookup(np.array([3, 1]), k=10)
    assert ids.tolist() == ids1.tolist()
    np.testing.assert_allclose(sc, sc1)


def test_empty_recent_gives_empty(nbrs):
    ids, sc = nbrs.lookup(np.zeros(0, np.int64), k=10)
    assert ids.shape == (0,) and sc.shape == (0,) and ids.dtype == np.int64 and sc.dtype == np.float32


def test_ties_broken_by_smaller_id():
    t = table({1: [(30, 0.5), (20, 0.5)], 2: []})
    assert t.lookup(np.array([1]), k=5)[0].tolist() == [20, 30]


def test_serving_module_imports_no_torch_or_pandas():
    code = ("import sys, common.item_neighbors; "
            "print(sorted(m for m in ('torch', 'pandas', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_save_load_round_trip(nbrs, tmp_path):
    path = tmp_path / "item_neighbors.npz"
    nbrs.save(path)
    assert path.is_file() and not (tmp_path / "item_neighbors.npz.npz").exists()
    back = ItemNeighbors.load(path)
    for name in ("item_ids", "indptr", "neighbor_ids", "scores"):
        np.testing.assert_array_equal(getattr(back, name), getattr(nbrs, name))
        assert getattr(back, name).dtype == getattr(nbrs, name).dtype
    assert back.items_with_neighbors == 3 and back.mean_neighbors == pytest.approx(7 / 3)
    assert back.lookup(np.array([1, 2]), 3)[0].tolist() == nbrs.lookup(np.array([1, 2]), 3)[0].tolist()


def _write(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _good(nbrs) -> dict:
    return {k: getattr(nbrs, k) for k in ("item_ids", "indptr", "neighbor_ids", "scores")}


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("scores"), "lacks scores"),
    (lambda a: a.update(indptr=a["indptr"].astype(np.int32)), "indptr has dtype int32"),
    (lambda a: a.update(scores=a["scores"].astype(np.float64)), "scores has dtype float64"),
    (lambda a: a.update(indptr=a["indptr"][:-1]), "indptr has 4 entries, expected len"),
    (lambda a: a.update(indptr=np.array([0, 3, 1, 7, 7], np.int64)), "indptr is not monotone"),
    (lambda a: a.update(indptr=np.array([0, 3, 6, 7, 9], np.int64)), "indptr must start at 0 and end"),
    (lambda a: a.update(scores=a["scores"][:-1]), "differ in length"),
    (lambda a: a.update(item_ids=np.array([1, 3, 2, 4], np.int64)), "not sorted and unique"),
    (lambda a: a.update(scores=np.where(np.arange(7) == 2, np.nan, a["scores"]).astype(np.float32)), "NaN"),
    (lambda a: a.update(item_ids=a["item_ids"].reshape(2, 2)), "expected 1-d"),
])
def test_malformed_file_is_refused_with_the_problem_named(nbrs, tmp_path, change, message):
    arrays = _good(nbrs)
    change(arrays)
    path = tmp_path / "bad.npz"
    _write(path, **arrays)
    with pytest.raises(ValueError, match=message):
        ItemNeighbors.load(path)


def test_corrupt_or_foreign_files_are_refused(nbrs, tmp_path):
    good = tmp_path / "good.npz"
    nbrs.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable .npz"):
        ItemNeighbors.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not numpy")
    with pytest.raises(ValueError, match="not a readable .npz"):
        ItemNeighbors.load(garbage)
    with pytest.raises(ValueError, match="not a readable .npz"):
        ItemNeighbors.load(tmp_path / "missing.npz")
    # a flipped byte inside a member: zip CRC check
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("scores.npy")
    data[info.header_offset + 30 + len(info.filename) + 130] ^= 0xFF
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable .npz"):
        ItemNeighbors.load(flipped)
    single = tmp_path / "single.npy"
    np.save(single, nbrs.item_ids)
    with pytest.raises(ValueError, match="single .npy array"):
        ItemNeighbors.load(single)
    pickled = tmp_path / "pickled.npz"
    arrays = _good(nbrs) | {"scores": np.array([object()] * 7, dtype=object)}
    with open(pickled, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="not a readable .npz"):
        ItemNeighbors.load(pickled)


def test_merge_takes_two_tower_head_then_item_to_item_then_fills():
    tt = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    ids, src = merge_candidates(tt, np.array([2, 9, 10]), k=6, quota=3)
    # head = tt[:3]; i2i minus taken (2) = 9, 10 (< quota) ; fill from tt: 4
    assert ids.tolist() == [1, 2, 3, 9, 10, 4]
    assert src.tolist() == [0, 0, 0, 1, 1, 0]
    ids, _ = merge_candidates(tt, np.array([9, 10, 11, 12]), k=6, quota=3)
    assert ids.tolist() == [1, 2, 3, 9, 10, 11]
    # an item-to-item id also further down two-tower's list is not duplicated by the fill
    ids, _ = merge_candidates(tt, np.array([4]), k=6, quota=3)
    assert ids.tolist() == [1, 2, 3, 4, 5, 6] and len(set(ids.tolist())) == 6
    ids, _ = merge_candidates(tt, np.zeros(0, np.int64), k=6, quota=3)
    assert ids.tolist() == tt[:6].tolist()
    ids, _ = merge_candidates(np.array([1, 2, -1, -1]), np.array([5, 6]), k=4, quota=1)
    assert ids.tolist() == [1, 2, 5]  # padding skipped; fewer than k when both run out
    ids, _ = merge_candidates(tt, np.array([9]), k=6, quota=0)
    assert ids.tolist() == tt[:6].tolist()
