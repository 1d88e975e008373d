"""Contract: rows written by feature_store/writer.py are, byte for byte, what Feast writes for the
same values (``store.push`` for the push view, ``write_to_online_store`` for ``user_seen``), and
Feast's SDK and feature_store.reader read them back exactly.

The guard of the writer's version-coupled layout: a Feast upgrade that changes how user rows are
stored fails here. Real Redis, a private Feast registry (``feast apply`` only: no materialise).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from common.redis_client import sync_client
from common.settings import FeatureStoreSettings
from feature_store import store as fs
from feature_store.reader import FeatureReaderMetrics, build_reader
from feature_store.writer import UserRow, UserRowWriter, timestamp_parts

PROJECT = "writercontract"
USERS = [10**8 + 1, 10**8 + 2, 10**8 + 3]


@pytest.fixture(scope="module", params=["redis", "redis_cluster"])
def env(request, tmp_path_factory):
    redis_url = request.getfixturevalue("redis_cluster_url" if request.param == "redis_cluster" else "redis_url")
    settings = FeatureStoreSettings(redis_url=redis_url, data_dir=tmp_path_factory.mktemp("feast-writer"),
                                    project=PROJECT)
    store = fs.apply(settings)
    writer = UserRowWriter.from_store(store, PROJECT)
    client = sync_client(redis_url)
    yield settings, store, writer, client
    client.close()


def _ctx_frame(ts: pd.Timestamp) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": USERS,
        "recent_item_ids": [np.array([50, 181, 1], np.int64), np.array([7], np.int64), np.array([2**40, 0, 5], np.int64)],
        "recent_count_1h": [3, 1, 0],
        "recent_count_24h": [11, 1, 2**33],
        "event_timestamp": [ts] * 3,
        "created": [ts] * 3,
    })


def _rows(df: pd.DataFrame, view: str, features: list[str]) -> list[UserRow]:
    return [UserRow(int(r["user_id"]), view, {f: r[f] for f in features}, r["event_timestamp"].timestamp())
            for _, r in df.iterrows()]


def _hashes(client, writer, users) -> list[dict]:
    return [client.hgetall(writer.layout.redis_key("user", u)) for u in users]


def _clear(client, writer, users) -> None:
    for u in users:  # one key a command: the users' rows live in different slots of a cluster
        client.delete(writer.layout.redis_key("user", u))


def test_timestamp_parts_microseconds():
    assert timestamp_parts(1.5) == (1, 500_000_000)
    assert timestamp_parts(1700000000.123456) == (1700000000, 123_456_000)
    assert timestamp_parts(-0.25) == (-1, 750_000_000)  # protobuf: nanos are never negative


def test_push_view_bytes_equal_feast_push(env):
    _, store, writer, client = env
    ts = pd.Timestamp(datetime(2026, 5, 17, 12, 30, 45, 123456, tzinfo=UTC))
    df = _ctx_frame(ts)
    _clear(client, writer, USERS)
    store.push("user_context_push", df)
    feast_bytes = _hashes(client, writer, USERS)
    assert all(len(h) == 4 for h in feast_bytes)  # 3 features + _ts:user_context
    _clear(client, writer, USERS)
    writer.write(client, _rows(df, "user_context", ["recent_item_ids", "recent_count_1h", "recent_count_24h"]))
    assert _hashes(client, writer, USERS) == feast_bytes


def test_batch_view_bytes_equal_feast_write(env):
    _, store, writer, client = env
    ts = pd.Timestamp(datetime(2026, 5, 17, 1, 2, 3, 999999, tzinfo=UTC))
    df = pd.DataFrame({"user_id": USERS,
                       "seen_item_ids": [np.array([1, 2, 3], np.int64), np.array([], np.int64), np.array([9], np.int64)],
                       "event_timestamp": [ts] * 3, "created": [ts] * 3})
    _clear(client, writer, USERS)
    store.write_to_online_store("user_seen", df)
    feast_bytes = _hashes(client, writer, USERS)
    assert all(len(h) == 2 for h in feast_bytes)
    _clear(client, writer, USERS)
    writer.write(client, _rows(df, "user_seen", ["seen_item_ids"]))
    assert _hashes(client, writer, USERS) == feast_bytes


def test_written_rows_read_back_exactly_by_sdk_and_reader(env):
    settings, store, writer, client = env
    _clear(client, writer, USERS)
    now = datetime.now(UTC).timestamp()
    ctx = [[5, 4, 3], [], [2**40]]
    seen = [[3, 4, 5, 6], [1], []]
    rows = []
    for i, u in enumerate(USERS):
        rows.append(UserRow(u, "user_context", {"recent_item_ids": np.array(ctx[i], np.int64),
                                                "recent_count_1h": i, "recent_count_24h": 10 * i + 1}, now - i))
        rows.append(UserRow(u, "user_seen", {"seen_item_ids": seen[i]}, now - 100 - i))
    assert writer.write(client, rows) == 6
    refs = ["user_context:recent_item_ids", "user_context:recent_count_1h", "user_context:recent_count_24h",
            "user_seen:seen_item_ids"]
    sdk = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in USERS],
                                    full_feature_names=True).to_dict()
    reader = build_reader(settings, store=store, metrics=FeatureReaderMetrics(CollectorRegistry()))
    try:
        for i, u in enumerate(USERS):
            assert sdk["user_context__recent_item_ids"][i] == ctx[i]
            assert sdk["user_context__recent_count_1h"][i] == i and type(sdk["user_context__recent_count_1h"][i]) is int
            assert sdk["user_context__recent_count_24h"][i] == 10 * i + 1
            assert sdk["user_seen__seen_item_ids"][i] == seen[i]
            got = reader.user_features(u)
            rec = got.values["user_context:recent_item_ids"]
            assert rec.dtype == np.int64 and rec.tolist() == ctx[i]
            assert got.values["user_context:recent_count_1h"] == i
            assert got.values["user_context:recent_count_24h"] == 10 * i + 1
            assert got.values["user_seen:seen_item_ids"].tolist() == seen[i]
            assert not {r for r in got.missing if r.startswith(("user_context:", "user_seen:"))}
            assert got.event_ts["user_context"] == pytest.approx(now - i, abs=1e-6)
            assert got.event_ts["user_seen"] == pytest.approx(now - 100 - i, abs=1e-6)
        # and the writer's own read-back (what the consumer merges with)
        back = writer.read(client, USERS + [10**8 + 99], ["user_context", "user_seen"])
        assert back[0]["user_context"][0]["recent_item_ids"].tolist() == ctx[0]
        assert back[0]["user_seen"][1] == pytest.approx(now - 100, abs=1e-6)
        assert back[3] == {"user_context": (None, None), "user_seen": (None, None)}
    finally:
        reader.close()


def test_one_view_leaves_the_others_of_the_hash_alone(env):
    _, store, writer, client = env
    u = USERS[0]
    _clear(client, writer, [u])
    writer.write(client, [UserRow(u, "user_seen", {"seen_item_ids": [1, 2]}, 1000.0)])
    before = client.hgetall(writer.layout.redis_key("user", u))
    writer.write(client, [UserRow(u, "user_context", {"recent_item_ids": [9], "recent_count_1h": 1,
                                                      "recent_count_24h": 1}, 2000.0)])
    after = client.hgetall(writer.layout.redis_key("user", u))
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == len(before) + 4


def test_incomplete_row_is_refused(env):
    _, _, writer, client = env
    with pytest.raises(KeyError, match="recent_count_24h"):
        writer.write(client, [UserRow(USERS[0], "user_context", {"recent_item_ids": [1], "recent_count_1h": 1}, 1.0)])
    with pytest.raises(KeyError, match="not a user feature view"):
        writer.encode(UserRow(1, "item_profile", {}, 1.0))
