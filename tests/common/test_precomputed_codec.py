"""The precomputed list's codec (common/precomputed.py): round trip, compact, and a corrupt value
is "no list" (None), never an exception."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from common.precomputed import MAGIC, PrecomputedList, decode, encode


def _list(n: int = 300, ids=None, version: str = "20261203T095609Z-1ede879c") -> PrecomputedList:
    rng = np.random.default_rng(3)
    ids = np.asarray(ids if ids is not None else rng.choice(np.arange(1, 1683), n, replace=False), np.int64)
    n = ids.size
    return PrecomputedList(version, 1_764_755_000.125, ids, np.sort(rng.random(n, dtype=np.float32))[::-1],
                           rng.standard_normal(n).astype(np.float32), rng.integers(0, 3, n).astype(np.uint8),
                           ("two_tower", "item_to_item", "popular"))


def _same(a: PrecomputedList, b: PrecomputedList) -> None:
    assert (a.version, a.computed_at, a.source_names) == (b.version, b.computed_at, b.source_names)
    np.testing.assert_array_equal(np.asarray(a.item_ids, np.int64), np.asarray(b.item_ids, np.int64))
    for name in ("scores", "retrieval_scores", "source_codes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_round_trip_and_size():
    lst = _list()
    raw = encode(lst)
    _same(decode(raw), lst)
    # 19 header + version + 3 names + 13 bytes an item (int32 id, two float32, one uint8)
    assert len(raw) == 19 + len(lst.version) + sum(1 + len(s) for s in lst.source_names) + 300 * 13
    assert len(raw) < 4000


def test_wide_ids_and_empty_lists_round_trip():
    wide = _list(ids=[1, 2**40, -(2**33)])
    raw = encode(wide)
    _same(decode(raw), wide)
    assert decode(raw).item_ids.dtype.itemsize == 8
    empty = PrecomputedList("v", 0.0, np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.float32),
                            np.empty(0, np.uint8), ("two_tower",))
    assert len(decode(encode(empty))) == 0


@pytest.mark.parametrize("corrupt", [
    b"", None, b"RPL1", b"not a list at all", b"\x00" * 64,
    "truncated", "extended", "magic", "width", "code", "version_utf8", "json",
])
def test_a_corrupt_value_is_no_list(corrupt):
    raw = encode(_list(20))
    values = {
        "truncated": raw[:-1], "extended": raw + b"\x00", "magic": b"XPL1" + raw[4:],
        "width": raw[:16] + bytes([5]) + raw[17:],
        "code": raw[:-1] + bytes([7]),  # a source code beyond the 3 names
        "version_utf8": raw[:19] + b"\xff" + raw[20:],
        "json": b'{"version": "v", "items": [1, 2, 3]}',
    }
    value = values.get(corrupt, corrupt) if isinstance(corrupt, str) else corrupt
    assert decode(value) is None


def test_the_header_says_what_it_holds():
    raw = encode(_list(5, version="v1"))
    magic, computed_at, n, width, n_sources, version_len = struct.unpack_from("<4sdIBBB", raw)
    assert (magic, computed_at, n, width, n_sources, version_len) == (MAGIC, 1_764_755_000.125, 5, 4, 3, 2)


def test_encode_refuses_inconsistent_lists():
    lst = _list(4)
    with pytest.raises(ValueError):
        encode(PrecomputedList("v", 0.0, lst.item_ids, lst.scores[:3], lst.retrieval_scores, lst.source_codes,
                               lst.source_names))
    with pytest.raises(ValueError):
        encode(PrecomputedList("v", 0.0, lst.item_ids, lst.scores, lst.retrieval_scores, lst.source_codes, ("one",)))
