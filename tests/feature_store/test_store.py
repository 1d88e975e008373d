"""Feast apply + materialise + push into a real Redis, read back through the Feast SDK.

The offline parquet is written by the pipeline's own code (models.data) from a slice of the real
MovieLens-100K files, into a private folder and a private Feast project, so the test neither
depends on nor disturbs `make artifacts` output.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.settings import REPO_ROOT, FeatureStoreSettings
from feature_store import store as fs
from feature_store.repo import FEATURE_VIEWS, feature_refs
from models import data as D

RAW = REPO_ROOT / "data" / "raw" / "ml-100k"
USERS = [1, 2, 3, 4, 5]


def test_redis_connection_string():
    assert fs.redis_connection_string("redis://127.0.0.1:6390/2") == "127.0.0.1:6390,db=2"
    assert fs.redis_connection_string("redis://:s3cret@redis:6379") == "redis:6379,db=0,password=s3cret"
    assert fs.redis_connection_string("rediss://u:p@h:1/0").endswith("username=u,password=p,ssl=true")
    with pytest.raises(ValueError):
        fs.redis_connection_string("http://localhost:6379")


def test_online_store_follows_settings(tmp_path):
    sqlite = fs.repo_config(FeatureStoreSettings(data_dir=tmp_path, REDIS_URL=None))
    assert sqlite.online_store.type == "sqlite" and sqlite.online_store.path == str(tmp_path / "online.db")
    redis = fs.repo_config(FeatureStoreSettings(data_dir=tmp_path, REDIS_URL="redis://127.0.0.1:6399/1"))
    assert redis.online_store.type == "redis"
    assert redis.online_store.connection_string == "127.0.0.1:6399,db=1"


@pytest.fixture(scope="module")
def small_dataset() -> D.Dataset:
    if not (RAW / "ml-100k.inter").is_file():
        pytest.fail(f"no MovieLens-100K in {RAW}: run `make data`")
    ds = D.load(RAW)
    ds.interactions = ds.interactions[ds.interactions["user_id"].isin(USERS)].reset_index(drop=True)
    ds.users = ds.users[ds.users["user_id"].isin(USERS)].reset_index(drop=True)
    return ds


@pytest.fixture(scope="module")
def store_settings(tmp_path_factory, small_dataset, redis_url) -> FeatureStoreSettings:
    root = tmp_path_factory.mktemp("feast")
    settings = FeatureStoreSettings(project="recsys_test_store", data_dir=root / "feast",
                                    offline_dir=root / "features", REDIS_URL=redis_url)
    states = D.user_history_states(small_dataset, 20)
    D.write_feature_sources(small_dataset, settings.offline_dir, states, every_days=7, half_life_days=30.0)
    return settings


def test_apply_refuses_missing_offline_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="offline sources missing"):
        fs.apply(FeatureStoreSettings(project="recsys_missing", data_dir=tmp_path / "f", offline_dir=tmp_path / "none"))


def test_apply_materialize_push_read_back(store_settings, small_dataset):
    store = fs.apply(store_settings)
    assert sorted(v.name for v in store.list_feature_views()) == sorted(FEATURE_VIEWS)
    fs.materialize(store_settings, store=store)

    refs = [r for view in FEATURE_VIEWS for r in feature_refs(view) if FEATURE_VIEWS[view][0] == "user"]
    got = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in USERS]).to_dict()
    inter = small_dataset.interactions
    for pos, uid in enumerate(USERS):
        mine = inter[inter["user_id"] == uid].sort_values(["ts", "item_id"], kind="stable")
        assert got["n_interactions"][pos] == len(mine)  # latest row: every interaction
        assert got["mean_rating"][pos] == pytest.approx(mine["rating"].mean(), rel=1e-5)
        assert got["recent_item_ids"][pos] == mine["item_id"].to_numpy()[::-1][:20].tolist()
        assert sum(got["genre_affinity"][pos]) == pytest.approx(1.0, abs=1e-4)
        assert got["gender"][pos] == int(small_dataset.users.set_index("user_id").at[uid, "gender"])
        assert got["seen_item_ids"][pos] == sorted(set(mine["item_id"].tolist()))  # every item, once

    items = store.get_online_features(
        features=feature_refs("item_profile") + feature_refs("item_aggregates"),
        entity_rows=[{"item_id": 1}, {"item_id": 50}]).to_dict()
    assert items["title"][0] == "Toy Story"
    assert len(items["genres"][0]) == len(small_dataset.genres)

    # real-time context through the push source
    now = pd.Timestamp(datetime.now(UTC))
    store.push("user_context_push", pd.DataFrame({
        "user_id": [1], "recent_item_ids": [[50, 181, 7]], "recent_count_1h": [3], "recent_count_24h": [9],
        "event_timestamp": [now], "created": [now],
    }))
    ctx = store.get_online_features(features=feature_refs("user_context"), entity_rows=[{"user_id": 1}]).to_dict()
    assert ctx["recent_item_ids"] == [[50, 181, 7]]
    assert ctx["recent_count_1h"] == [3] and ctx["recent_count_24h"] == [9]


def test_point_in_time_join_sees_only_earlier_interactions(store_settings, small_dataset):
    store = fs.apply(store_settings)
    inter = small_dataset.interactions
    mine = inter[inter["user_id"] == 1]
    ts = np.sort(mine["ts"].unique())
    at = ts[[0, 5, len(ts) // 2, -1]]
    entity = pd.DataFrame({"user_id": 1, "event_timestamp": D.to_time(at)})
    got = store.get_historical_features(entity_df=entity, features=["user_aggregates:n_interactions"]).to_df()
    # Feast's file offline store leaves out entity rows without any earlier feature row
    df = entity.merge(got, on=["user_id", "event_timestamp"], how="left")
    expected = [int((mine["ts"] < t).sum()) for t in at]
    assert expected[0] == 0 and pd.isna(df["n_interactions"].iloc[0])  # nothing before the first rating
    assert df["n_interactions"].iloc[1:].astype(int).tolist() == expected[1:]
    # item snapshots never include the interaction they are joined to
    one = mine.iloc[len(mine) // 2]
    ent = pd.DataFrame({"item_id": [int(one["item_id"])], "event_timestamp": D.to_time([int(one["ts"])])})
    n = store.get_historical_features(entity_df=ent, features=["item_aggregates:n_ratings"]).to_df()["n_ratings"]
    assert n.fillna(0).iloc[0] <= int(((inter["item_id"] == one["item_id"]) & (inter["ts"] < one["ts"])).sum())


def test_offline_sources_have_contract_types(store_settings):
    for view, (_, fname, features) in FEATURE_VIEWS.items():
        df = pd.read_parquet(Path(store_settings.offline_dir) / fname)
        assert str(df["event_timestamp"].dtype) == "datetime64[ns, UTC]", view
        assert str(df["created"].dtype) == "datetime64[ns, UTC]", view
        assert {n for n, _ in features} <= set(df.columns), view


def test_pipeline_point_in_time_join_keeps_every_row(store_settings, small_dataset):
    """models.pipeline.historical_features works around Feast 0.67's file offline store, which
    collapses rows of different items of one user at one time and drops rows without history."""
    from models.pipeline import historical_features

    store = fs.apply(store_settings)
    inter = small_dataset.interactions
    first = int(inter[inter["user_id"] == 2]["ts"].min())
    later = int(inter[inter["user_id"] == 1]["ts"].max())
    entity = pd.DataFrame({
        "user_id": [1, 1, 1, 2],
        "item_id": [50, 181, 1, 50],
        "event_timestamp": D.to_time([later, later, later, first]),
    })
    df = historical_features(store, entity)
    assert df["item_id"].tolist() == [50, 181, 1, 50]
    assert df["item_profile__year"].tolist() == [1977.0, 1983.0, 1995.0, 1977.0]
    n1 = int(((inter["user_id"] == 1) & (inter["ts"] < later)).sum())
    assert df["user_aggregates__n_interactions"].iloc[:3].tolist() == [n1] * 3
    assert pd.isna(df["user_aggregates__n_interactions"].iloc[3])  # no interaction before user 2's first
    assert df["user_profile__age"].iloc[3] == small_dataset.users.set_index("user_id").at[2, "age"]
