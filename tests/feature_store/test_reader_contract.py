"""Contract: the fast reader returns exactly what Feast's SDK returns, on a real Redis and on
Feast's embedded SQLite store, after materialise and after a push.

This is the guard of the version-coupled layout (feature_store/online_layout.py): a Feast upgrade
that changes the online layout or the SDK's read semantics fails here. Data: the pipeline's
parquet under data/features/ (latest row per entity, see feature_store/testing.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from feature_store.reader import FeatureReaderMetrics, build_reader, publish_item_snapshot
from feature_store.testing import OfflineDataMissing, private_feast
from tests.conftest import until

PROJECT = "readercontract"  # keys end with the project: never collides with other tests' data
UNKNOWN_USERS = [0, -3, 10**9, 2**62]
UNKNOWN_ITEMS = [0, -1, 10**7, 2**40]


@pytest.fixture(scope="module", params=["redis", "redis_cluster", "sqlite"])
def env(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"feast-{request.param}")
    url = {"redis": "redis_url", "redis_cluster": "redis_cluster_url"}.get(request.param)
    try:
        feast = private_feast(workdir, request.getfixturevalue(url) if url else None, project=PROJECT)
    except OfflineDataMissing as exc:
        pytest.fail(str(exc))
    registry = CollectorRegistry()
    reader = build_reader(feast.settings, store=feast.store, metrics=FeatureReaderMetrics(registry))
    yield request.param, feast, reader, registry
    reader.close()


def refs_of(reader, entity):
    return [f.ref for v in reader.layout.views_of(entity) for f in v.features]


def sdk(store, refs, key, ids):
    out = store.get_online_features(features=refs, entity_rows=[{key: int(i)} for i in ids],
                                    full_feature_names=True).to_dict()
    return {r: out[r.replace(":", "__")] for r in refs}


def spec_of(reader, ref):
    view, _ = ref.split(":")
    return next(f for f in reader.layout.views[view].features if f.ref == ref)


def assert_value(ref, expected, got, spec):
    """``expected`` is the SDK's python value; ``got`` the reader's."""
    if spec.kind == "array":
        want = np.asarray(expected, dtype=spec.array_dtype)
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype, ref
        np.testing.assert_array_equal(got, want, err_msg=ref)
    elif spec.kind == "float":
        assert isinstance(got, float | np.floating) and float(got) == float(expected), (ref, got, expected)
    else:
        assert got == expected and type(expected)(got) == expected, (ref, got, expected)


def all_ids(feast, view):
    key = "user_id" if view.startswith("user") else "item_id"
    return pd.read_parquet(feast.settings.offline_dir / f"{view}.parquet")[key].to_numpy()


def check_users(reader, store, ids):
    refs = refs_of(reader, "user")
    expected = sdk(store, refs, "user_id", ids)
    n_present = 0
    for i, uid in enumerate(ids):
        got = reader.user_features(int(uid))
        assert set(got.values) == set(refs)
        for ref in refs:
            spec = spec_of(reader, ref)
            if expected[ref][i] is None:
                assert ref in got.missing, (uid, ref)
                assert_value(ref, _default_py(spec), got.values[ref], spec)
            else:
                assert ref not in got.missing, (uid, ref)
                assert_value(ref, expected[ref][i], got.values[ref], spec)
                n_present += 1
    return n_present


def _default_py(spec):
    return {"float": 0.0, "int": 0, "str": "", "bool": False, "array": []}[spec.kind]


def test_users_match_sdk(env):
    _, feast, reader, _ = env
    known = np.unique(all_ids(feast, "user_profile"))
    ids = np.concatenate([known, UNKNOWN_USERS])
    n_present = check_users(reader, feast.store, ids)
    assert n_present > 0.9 * len(known) * len(refs_of(reader, "user"))  # the data was really there


def test_items_match_sdk(env):
    _, feast, reader, _ = env
    known = np.unique(np.concatenate([all_ids(feast, "item_profile"), all_ids(feast, "item_aggregates")]))
    rng = np.random.default_rng(7)
    ids = rng.permutation(np.concatenate([known, UNKNOWN_ITEMS, known[:5]]))  # shuffled, duplicates
    refs = refs_of(reader, "item")
    expected = sdk(feast.store, refs, "item_id", ids)
    got = reader.item_features(ids)
    np.testing.assert_array_equal(got.item_ids, ids)
    for ref in refs:
        spec = spec_of(reader, ref)
        view = ref.split(":")[0]
        arr = got.values[ref]
        assert arr.shape[0] == len(ids)
        if spec.kind == "float":
            assert arr.dtype == np.float32
        for i in range(len(ids)):
            if expected[ref][i] is None:
                assert got.missing_by_view[view][i] and got.missing[i], (ids[i], ref)
                assert_value(ref, _default_py(spec) if spec.kind != "array" else np.zeros_like(arr[i]), arr[i], spec)
            else:
                assert_value(ref, expected[ref][i], arr[i], spec)
    unknown = np.isin(ids, UNKNOWN_ITEMS)
    assert got.missing[unknown].all() and not got.missing[~unknown].all()
    assert (~got.missing).sum() > 0.5 * len(known)


def test_push_is_visible_on_the_next_call(env):
    _, feast, reader, _ = env
    known = int(all_ids(feast, "user_context")[0])
    fresh = 10**8 + 17  # a user nobody has seen: push creates the row
    now = pd.Timestamp(datetime.now(UTC))
    before = reader.user_features(known)
    df = pd.DataFrame({
        "user_id": [known, fresh],
        "recent_item_ids": [np.array([50, 181, 1], dtype=np.int64), np.array([7], dtype=np.int64)],
        "recent_count_1h": [3, 1],
        "recent_count_24h": [11, 1],
        "event_timestamp": [now, now],
        "created": [now, now],
    })
    feast.store.push("user_context_push", df)
    after = reader.user_features(known)
    assert after.values["user_context:recent_item_ids"].tolist() == [50, 181, 1]
    assert after.values["user_context:recent_count_1h"] == 3
    assert after.values["user_profile:age"] == before.values["user_profile:age"]  # other views untouched
    new = reader.user_features(fresh)
    assert new.values["user_context:recent_item_ids"].tolist() == [7]
    assert new.missing == {r for r in refs_of(reader, "user") if not r.startswith("user_context:")}
    check_users(reader, feast.store, [known, fresh])


def test_item_update_is_seen_after_the_post_materialise_hook(env):
    kind, feast, reader, _ = env
    item = int(all_ids(feast, "item_aggregates")[0])
    old_version = reader.item_table.version
    now = pd.Timestamp(datetime.now(UTC))
    feast.store.write_to_online_store("item_aggregates", pd.DataFrame({
        "item_id": [item], "popularity": np.float32([0.123]), "n_ratings": np.float32([4242.0]),
        "mean_rating": np.float32([2.5]), "event_timestamp": [now], "created": [now]}))
    # without the hook the table is the published snapshot: documented, not silently mixed
    assert reader.item_features(np.array([item])).values["item_aggregates:n_ratings"][0] != 4242.0
    assert reader.item_features(np.array([item])).values["item_aggregates:n_ratings"][0] != 4242.0
    version = publish_item_snapshot(feast.settings, store=feast.store)
    assert version and version != old_version
    if kind == "redis_cluster":
        # the pointer lives on another node than the user: it is read at most once per
        # version_max_age_s (1 s), so the switch is seen within that, not on the next call
        seconds = until(lambda: reader.item_features(np.array([item])) is not None
                        and reader.item_table.version == version, 5)
        assert seconds <= reader.backend.version_max_age_s + 0.5, seconds
    reader.user_features(1)  # one server: reads the snapshot version in the same round trip...
    got = reader.item_features(np.array([item, 10**7]))  # ...which this call uses
    assert reader.item_table.version == version
    again = reader.item_features(np.array([item]))  # no user read before: its own version check
    assert reader.item_table.version == version and again.values["item_aggregates:n_ratings"][0] == 4242.0
    assert got.values["item_aggregates:n_ratings"].tolist() == [4242.0, 0.0]
    assert got.values["item_aggregates:popularity"][0] == np.float32(0.123)
    expected = sdk(feast.store, ["item_aggregates:n_ratings"], "item_id", [item])
    assert expected["item_aggregates:n_ratings"] == [4242.0]


def test_ttl_feast_does_not_expire_online_rows_and_the_reader_can(env):
    """Feast 0.67's SDK returns rows older than the view's TTL; ``enforce_ttl`` drops them."""
    _, feast, reader, _ = env
    uid = 10**8 + 99
    view = reader.layout.views["user_context"]
    assert view.ttl_seconds > 0  # the push view has a short TTL (docs/contracts.md)
    stale = pd.Timestamp(datetime.now(UTC) - timedelta(seconds=view.ttl_seconds + 3600))
    feast.store.push("user_context_push", pd.DataFrame({
        "user_id": [uid], "recent_item_ids": [np.array([3, 4], dtype=np.int64)],
        "recent_count_1h": [0], "recent_count_24h": [2], "event_timestamp": [stale], "created": [stale]}))
    expected = sdk(feast.store, ["user_context:recent_item_ids"], "user_id", [uid])
    assert expected["user_context:recent_item_ids"] == [[3, 4]]  # SDK: no TTL on online reads
    assert reader.user_features(uid).values["user_context:recent_item_ids"].tolist() == [3, 4]

    registry = CollectorRegistry()
    strict = build_reader(feast.settings, store=feast.store, registry=registry, enforce_ttl=True)
    try:
        got = strict.user_features(uid)
        assert {r for r in got.missing if r.startswith("user_context:")} == set(view.refs)
        assert got.values["user_context:recent_item_ids"].size == 0
        assert registry.get_sample_value("recsys_missing_features_total", {"feature_view": "user_context"}) >= 3
        # the batch views have ttl=0: never expire, whatever their age (1990s event times)
        assert all(v.ttl_seconds == 0 for v in strict.layout.views.values() if v.name != "user_context")
        assert "user_profile:age" not in strict.user_features(int(all_ids(feast, "user_profile")[0])).missing
    finally:
        strict.close()


def test_ttl_boundary_a_user_context_row_is_served_up_to_its_ttl_and_not_a_second_longer(env):
    _, feast, reader, _ = env
    uid = 10**8 + 98
    ttl = int(reader.layout.views["user_context"].ttl_seconds)
    written = int(time.time()) - 60  # whole seconds: the boundary below is exact
    ts = pd.Timestamp(written, unit="s", tz="UTC")
    feast.store.push("user_context_push", pd.DataFrame({
        "user_id": [uid], "recent_item_ids": [np.array([5, 6], dtype=np.int64)],
        "recent_count_1h": [1], "recent_count_24h": [2], "event_timestamp": [ts], "created": [ts]}))
    now = [float(written)]
    strict = build_reader(feast.settings, store=feast.store, registry=CollectorRegistry(), enforce_ttl=True,
                          clock=lambda: now[0])
    try:
        for age, served in ((0, True), (ttl - 1, True), (ttl, True), (ttl + 1, False), (10 * ttl, False)):
            now[0] = float(written + age)
            got = strict.user_features(uid)
            assert ("user_context:recent_item_ids" not in got.missing) is served, (age, ttl)
            assert got.values["user_context:recent_item_ids"].tolist() == ([5, 6] if served else []), age
    finally:
        strict.close()


def test_missing_values_are_counted(env):
    _, _, reader, registry = env

    def count(view):
        return registry.get_sample_value("recsys_missing_features_total", {"feature_view": view}) or 0.0

    views = {v: count(v) for v in reader.layout.views}
    reader.user_features(10**9 + 5)
    for v in reader.layout.views_of("user"):
        assert count(v.name) == views[v.name] + len(v.features)
    reader.item_features(np.array([10**7, 10**7 + 1]))
    for v in reader.layout.views_of("item"):
        assert count(v.name) == views[v.name] + 2 * len(v.features)


def test_bad_input_is_a_clear_error(env):
    _, _, reader, _ = env
    with pytest.raises(TypeError):
        reader.user_features("42")
    with pytest.raises(ValueError):
        reader.user_features(2**64)
    with pytest.raises(TypeError):
        reader.item_features(np.array([1.5, 2.0]))
    with pytest.raises(ValueError):
        reader.item_features(np.array([[1, 2]]))
    empty = reader.item_features(np.array([], dtype=np.int64))
    assert empty.missing.shape == (0,) and all(a.shape[0] == 0 for a in empty.values.values())



def test_background_refresh_keeps_serving_then_switches(env):
    _, feast, _, _ = env
    reader = build_reader(feast.settings, store=feast.store, registry=CollectorRegistry(), background_refresh=True)
    try:
        item = int(all_ids(feast, "item_aggregates")[1])
        now = pd.Timestamp(datetime.now(UTC))
        feast.store.write_to_online_store("item_aggregates", pd.DataFrame({
            "item_id": [item], "popularity": np.float32([0.5]), "n_ratings": np.float32([777.0]),
            "mean_rating": np.float32([3.0]), "event_timestamp": [now], "created": [now]}))
        old_value = reader.item_features(np.array([item])).values["item_aggregates:n_ratings"].tolist()
        assert old_value != [777.0], "the published snapshot predates the write"
        version = publish_item_snapshot(feast.settings, store=feast.store)
        deadline = time.monotonic() + 20
        served_old = 0
        while True:
            # a read is served whole from one snapshot: the old value until the switch, then the new
            got = reader.item_features(np.array([item])).values["item_aggregates:n_ratings"].tolist()
            if got == [777.0]:
                break
            assert got == old_value, f"neither the old nor the new snapshot's value: {got}"
            served_old += 1
            assert time.monotonic() < deadline, "background refresh never switched to the new snapshot"
            time.sleep(0.01)
        assert reader.item_table.version == version
        assert served_old >= 1, "the refresh was not in the background: the first read after publish waited for it"
    finally:
        reader.close()


def test_a_refresh_never_pauses_serving(env):
    """Double-buffered swap: while a new snapshot is being loaded (held here mid-load), every read is
    answered at once from the old table; the new one replaces it in one reference store."""
    import threading

    _, feast, _, _ = env
    reader = build_reader(feast.settings, store=feast.store, registry=CollectorRegistry(), background_refresh=True)
    gate, loading = threading.Event(), threading.Event()
    real_load = reader.backend.load_snapshot

    def held_load(version):
        loading.set()
        gate.wait(30)
        return real_load(version)

    reader.backend.load_snapshot = held_load
    try:
        ids = all_ids(feast, "item_aggregates")[:50]
        old = reader.item_table
        before = reader.item_features(ids).values["item_aggregates:n_ratings"].copy()
        version = publish_item_snapshot(feast.settings, store=feast.store)
        served = []

        def read_while_loading():
            # a read that sees the new version starts the loader thread (on a cluster the version
            # is read at most once a second: the first such read may come a little later)
            deadline = time.monotonic() + 10
            while not loading.wait(0.02):
                reader.item_features(ids)
                assert time.monotonic() < deadline, "the loader never started"
            for _ in range(50):
                served.append(reader.item_features(ids))

        reader_thread = threading.Thread(target=read_while_loading)
        reader_thread.start()
        reader_thread.join(10)
        assert not reader_thread.is_alive(), "a read waited for the snapshot load"
        assert len(served) == 50 and all(np.array_equal(f.values["item_aggregates:n_ratings"], before) for f in served)
        assert reader.item_table is old
        gate.set()
        until(lambda: reader.item_table.version == version, 20)
        assert reader.item_table is not old
    finally:
        gate.set()
        reader.close()


def test_a_users_only_reader_holds_no_item_table(env):
    _, feast, full, _ = env
    reader = build_reader(feast.settings, store=feast.store, registry=CollectorRegistry(), items=False)
    try:
        assert reader.item_table is None
        uid = int(all_ids(feast, "user_profile")[0])
        got, want = reader.user_features(uid), full.user_features(uid)
        assert got.missing == want.missing and set(got.values) == set(want.values)
        with pytest.raises(RuntimeError, match="items=False"):
            reader.item_features(np.array([1]))
    finally:
        reader.close()
