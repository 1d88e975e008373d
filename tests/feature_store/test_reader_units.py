"""Narrow unit tests of the reader's pieces that need no Redis and no Feast registry."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from feature_store.backends.redis import _glob_escape
from feature_store.backends.sqlite import parse_sqlite_ts
from feature_store.item_table import build_item_table, pack_table, unpack_table
from feature_store.online_layout import FeatureSpec, Layout, ViewSpec


def _spec(view, name, kind, adt=None):
    return FeatureSpec(view=view, name=name, ref=f"{view}:{name}", kind=kind, array_dtype=adt, redis_field=b"")


def _layout() -> Layout:
    prof = ViewSpec("item_profile", "item", "item_id", 0.0, (
        _spec("item_profile", "year", "float"),
        _spec("item_profile", "genres", "array", np.float32),
        _spec("item_profile", "title", "str"),
        _spec("item_profile", "tags", "array", np.int64),  # ragged
    ), b"_ts:item_profile")
    agg = ViewSpec("item_aggregates", "item", "item_id", 3600.0, (
        _spec("item_aggregates", "n", "int"),
    ), b"_ts:item_aggregates")
    return Layout(project="p", views={"item_profile": prof, "item_aggregates": agg}, join_keys={"item": "item_id"})


def _rows():
    g = np.float32
    return [
        (30, "item_profile", 100.0, {"year": 1995.0, "genres": np.array([1, 0, 1], g), "title": "Tøy Story",
                                     "tags": np.array([1, 2, 3])}),
        (10, "item_profile", 200.0, {"year": None, "genres": np.array([0, 1, 0], g), "title": "B",
                                     "tags": np.array([], np.int64)}),
        (10, "item_aggregates", 300.0, {"n": 7}),
        (20, "item_aggregates", 400.0, {"n": 9}),
    ]


def test_table_lookup_defaults_and_presence():
    t = build_item_table(_layout(), _rows(), version="v1")
    assert t.ids.tolist() == [10, 20, 30]
    rows = t.rows(np.array([30, 99, 10, 20, -1, 10]))
    assert rows.tolist() == [2, 3, 0, 1, 3, 0]  # 3 = the default row
    assert t.values["item_profile:year"][rows].tolist() == [1995.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert t.present["item_profile:year"][rows].tolist() == [True, False, False, False, False, False]
    assert t.values["item_profile:genres"].shape == (4, 3)
    assert t.values["item_profile:title"][rows].tolist() == ["Tøy Story", "", "B", "", "", "B"]
    assert t.values["item_aggregates:n"].dtype == np.int64
    assert t.present["item_aggregates:n"][rows].tolist() == [False, False, True, True, False, True]
    assert t.values["item_profile:tags"].dtype == object  # ragged arrays stay exact
    assert np.isnan(t.event_ts["item_aggregates"][2]) and t.event_ts["item_aggregates"][0] == 300.0


def test_pack_round_trip_is_exact():
    layout = _layout()
    t = build_item_table(layout, _rows(), version="v1")
    blob = pack_table(t)
    assert b"pickle" not in blob and blob.startswith(b"FSRITEM1")
    u = unpack_table(blob, layout)
    assert u.version == "v1"
    np.testing.assert_array_equal(u.ids, t.ids)
    for ref in t.values:
        np.testing.assert_array_equal(u.present[ref], t.present[ref])
        if t.values[ref].dtype == object:
            for a, b in zip(u.values[ref], t.values[ref], strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert u.values[ref].dtype == t.values[ref].dtype
            np.testing.assert_array_equal(u.values[ref], t.values[ref])
    for view in t.event_ts:
        np.testing.assert_array_equal(u.event_ts[view], t.event_ts[view])


def test_empty_table_and_foreign_blob():
    layout = _layout()
    t = build_item_table(layout, [], version="e")
    assert t.rows(np.array([1, 2])).tolist() == [0, 0]
    u = unpack_table(pack_table(t), layout)
    assert u.n == 0 and u.values["item_profile:title"].tolist() == [""]
    with pytest.raises(ValueError, match="magic"):
        unpack_table(b"\x80\x04pickle...", layout)


def test_entity_key_bytes():
    layout = _layout()
    key = layout.redis_key("item", 83)
    assert key == (struct.pack("<III", 1, 2, 7) + b"item_id" + struct.pack("<II", 4, 8)
                   + struct.pack("<q", 83) + b"p")


def test_helpers():
    assert _glob_escape(b"a*b?[c]\\") == b"a\\*b\\?\\[c\\]\\\\"
    assert parse_sqlite_ts(891388800) == 891388800.0
    assert parse_sqlite_ts("1998-04-01 00:00:00") == 891388800.0
    assert parse_sqlite_ts(None) is None


def test_sparse_ids_use_binary_search():
    rows = [(i, "item_aggregates", 1.0, {"n": k}) for k, i in enumerate([5, 10**9, 2**40, 7])]
    t = build_item_table(_layout(), rows)
    assert t._index is None  # too sparse for a direct index
    got = t.rows(np.array([2**40, 6, 5, -9, 10**9, 2**41, 7]))
    assert t.values["item_aggregates:n"][got].tolist() == [2, 0, 0, 0, 1, 0, 3]
    assert t.present["item_aggregates:n"][got].tolist() == [True, False, True, False, True, False, True]


class _SnapshotOnly:
    """A stub backend serving one packed snapshot (narrow unit test of the item path)."""

    def __init__(self, blob):
        self.blob = blob

    def snapshot_version(self):
        return "v1"

    def load_snapshot(self, version):
        return self.blob

    def close(self):
        pass


def test_item_ttl_enforcement_defaults_and_counter():
    from prometheus_client import CollectorRegistry

    from feature_store.reader import FeatureReaderMetrics, OnlineFeatureReader

    layout = _layout()  # item_aggregates has a 1 h TTL; its rows are stamped 300 s and 400 s
    blob = pack_table(build_item_table(layout, _rows(), version="v1"))
    registry = CollectorRegistry()
    now = [1000.0]
    reader = OnlineFeatureReader(layout, _SnapshotOnly(blob), metrics=FeatureReaderMetrics(registry),
                                 enforce_ttl=True, clock=lambda: now[0],
                                 defaults={"item_profile:year": -1.0})
    ids = np.array([10, 20, 30, 99])
    got = reader.item_features(ids)
    assert got.values["item_aggregates:n"].tolist() == [7, 9, 0, 0]
    assert got.values["item_profile:year"].tolist() == [-1.0, -1.0, 1995.0, -1.0]  # override
    assert got.missing_by_view["item_aggregates"].tolist() == [False, False, True, True]
    assert got.missing.tolist() == [True, True, True, True]  # 10: no year, 20: no profile, 30: no aggregates
    assert got.missing_by_view["item_profile"].tolist() == [True, True, False, True]

    def count(view):
        return registry.get_sample_value("recsys_missing_features_total", {"feature_view": view})

    assert count("item_aggregates") == 2
    now[0] = 300.0 + 3600.0 + 1.0  # item 10's aggregates (stamped 300 s) are now older than the TTL
    got = reader.item_features(ids)
    assert got.values["item_aggregates:n"].tolist() == [0, 9, 0, 0]
    assert got.missing_by_view["item_aggregates"].tolist() == [True, False, True, True]
    assert count("item_aggregates") == 2 + 3
    assert got.values["item_profile:tags"][2].tolist() == [1, 2, 3]  # batch view: no TTL
