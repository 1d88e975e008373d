"""Applying events on a real Redis with a private Feast: per-user state, aggregates, Feast rows
(read back through feature_store.reader), generations, poison, idempotency, claims, trim, export."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from common.realtime import (
    DEAD_LETTER,
    GROUP,
    ITEM_COUNTS,
    POPULAR,
    POPULAR_META,
    STREAM,
    Event,
    PopularScale,
    covisit_key,
    event_id_key,
    generation_key,
    user_events_key,
    user_recent_key,
    user_seen_key,
)
from feature_store.reader import FeatureReaderMetrics, build_reader
from feature_store.repo.definitions import N_RECENT
from services.events.aggregates import RESCALE_AFTER
from services.events.export import export, since_id
from services.events.settings import EventsSettings
from services.events.stream import Stream

from .conftest import append, make_applier, make_consumer


@pytest.fixture(scope="module")
def reader(feast_env):
    r = build_reader(feast_env.settings, store=feast_env.store, metrics=FeatureReaderMetrics(CollectorRegistry()))
    yield r
    r.close()


def _materialised_user(feast_env, k: int = 0) -> tuple[int, list[int]]:
    df = pd.read_parquet(feast_env.settings.offline_dir / "user_context.parquet")
    df = df[df["recent_item_ids"].map(len) >= 5].sort_values("user_id")
    row = df.iloc[k]
    return int(row["user_id"]), [int(x) for x in row["recent_item_ids"]]


def _snapshot(client) -> dict:
    """Every key's value (type-aware), generations excluded (a re-run bumps them: harmless)."""
    out = {}
    for k in client.scan_iter(count=1000):
        if k.endswith(b":gen"):
            continue
        t = client.type(k)
        if t == b"hash":
            out[k] = client.hgetall(k)
        elif t == b"zset":
            out[k] = client.zrange(k, 0, -1, withscores=True)
        elif t == b"set":
            out[k] = client.smembers(k)
        elif t == b"string":
            out[k] = (client.get(k), client.ttl(k) > 0)
        elif t == b"stream":
            out[k] = client.xrange(k)
    return out


def test_apply_updates_state_aggregates_rows_and_generation(client, writer, reader, feast_env):
    uid, history = _materialised_user(feast_env)
    fresh = [i for i in (1500, 1501, 1502) if i not in history]
    now = time.time()
    before = reader.user_features(uid)
    events = [Event("e-view", str(uid), fresh[0], "view", now - 120),
              Event("e-click", str(uid), fresh[1], "click", now - 60, received=now - 59)]
    out = make_applier(client, writer).apply(events)
    assert out.applied == {"view": 1, "click": 1} and out.duplicates == 0 and out.users == 1

    got = reader.user_features(uid)
    recent = got.values["user_context:recent_item_ids"].tolist()
    assert recent[:2] == [fresh[1], fresh[0]]  # the click, newest first
    old = [x for x in before.values["user_context:recent_item_ids"].tolist() if x not in fresh]
    assert recent[2:] == old[: N_RECENT - 2]  # then the materialised history
    assert got.values["user_context:recent_count_1h"] == 2 and got.values["user_context:recent_count_24h"] == 2
    assert got.event_ts["user_context"] == pytest.approx(now - 60, abs=1e-5)
    seen = got.values["user_seen:seen_item_ids"].tolist()
    assert fresh[1] in seen and fresh[0] not in seen  # a view is not "seen"
    assert set(before.values["user_seen:seen_item_ids"].tolist()) <= set(seen) and seen == sorted(seen)
    assert got.values["user_profile:age"] == before.values["user_profile:age"]  # other views untouched

    meta = client.hgetall(POPULAR_META)
    scale = PopularScale(float(meta[b"epoch"]), float(meta[b"half_life_s"]))
    assert scale.half_life_s == 21600.0
    assert client.zscore(POPULAR, fresh[1]) == pytest.approx(scale.increment(1.0, now - 60), rel=1e-12)
    assert client.zscore(covisit_key(fresh[1]), fresh[0]) == 1.0  # 60 s apart: co-visited
    assert client.zscore(covisit_key(fresh[0]), fresh[1]) == 1.0
    assert client.hget(ITEM_COUNTS, fresh[0]) == b"1"
    assert client.get(generation_key(str(uid))) == b"1"
    assert client.get(event_id_key("e-click")) == b"p"
    assert client.zcard(user_events_key(str(uid))) == 2
    assert client.smembers(user_seen_key(str(uid))) == {str(fresh[1]).encode()}


def test_same_entries_applied_twice_change_nothing(client, writer, feast_env):
    uid, _ = _materialised_user(feast_env, 1)
    now = time.time()
    rng = np.random.default_rng(3)
    events = [Event(f"i{i}", str(uid if i % 3 else 10**7 + i % 2), int(rng.integers(1, 1683)),
                    ["view", "click", "purchase", "impression", "rating"][i % 5], now - 300 + i) for i in range(60)]
    events.append(Event("anon", "visitor-7", 5, "purchase", now - 5))
    applier = make_applier(client, writer)
    first = applier.apply(events)
    assert first.duplicates == 0 and first.anonymous == 1
    snap = _snapshot(client)
    gen = client.get(generation_key(str(uid)))
    again = applier.apply(events)
    assert sum(again.applied.values()) == 0 and again.duplicates == len(events)
    assert _snapshot(client) == snap
    assert int(client.get(generation_key(str(uid)))) == int(gen) + 1  # bumped again: harmless


def test_anonymous_user_reaches_aggregates_only(client, writer):
    out = make_applier(client, writer).apply([Event("a1", "session-abc", 42, "purchase", time.time())])
    assert out.anonymous == 1 and out.users == 0 and out.applied == {"purchase": 1}
    assert client.zscore(POPULAR, 42) > 0
    assert not list(client.scan_iter(match="{u:*"))


def test_trims_recent_to_n_recent_and_events_to_a_day(client, writer):
    uid, now = 10**7 + 5, time.time()
    events = [Event(f"t{i}", str(uid), 100 + i, "click", now - 3000 + i) for i in range(N_RECENT + 5)]
    events.append(Event("old", str(uid), 7, "click", now - 2 * 86400))
    make_applier(client, writer).apply(events)
    assert client.zcard(user_recent_key(str(uid))) == N_RECENT
    assert client.zcard(user_events_key(str(uid))) == N_RECENT + 5
    (row, _), = [writer.read(client, [uid], ["user_context"])[0]["user_context"]]
    assert row["recent_item_ids"].tolist() == [100 + i for i in range(N_RECENT + 4, 4, -1)]
    assert row["recent_count_1h"] == N_RECENT + 5


def test_popularity_rescale_keeps_decayed_weights(client, writer):
    hl, now = 21600.0, time.time()
    old_epoch = now - (RESCALE_AFTER + 1) * hl
    client.hset(POPULAR_META, mapping={"epoch": repr(old_epoch), "half_life_s": repr(hl)})
    client.zadd(POPULAR, {"9": 2.0 ** (RESCALE_AFTER + 0.5)})
    before = client.zscore(POPULAR, 9) * PopularScale(old_epoch, hl).factor_now(now)
    make_applier(client, writer, clock=lambda: now).apply([Event("r1", "5", 10, "view", now)])
    meta = client.hgetall(POPULAR_META)
    assert float(meta[b"epoch"]) == pytest.approx(now)
    new = PopularScale(float(meta[b"epoch"]), hl)
    assert client.zscore(POPULAR, 9) * new.factor_now(now) == pytest.approx(before, rel=1e-9)
    assert client.zscore(POPULAR, 10) == pytest.approx(1.0)


def test_poison_goes_to_the_dead_letter_and_the_stream_flows(client, writer):
    consumer = make_consumer(client, writer)
    consumer.stream.ensure_group()
    now = time.time()
    good = [Event(f"g{i}", "7", 50 + i, "click", now) for i in range(3)]
    append(client, good[:1])
    client.xadd(STREAM, {"event_id": "bad1", "user_id": "7", "type": "click", "ts": "1"})  # no item_id
    client.xadd(STREAM, {"event_id": "bad2", "user_id": "7", "item_id": "5", "type": "teleport", "ts": "1"})
    append(client, [Event("bad3", "7", 999999, "click", now)])  # not in the catalog
    client.xadd(STREAM, {"event_id": "bad4", "user_id": "7", "item_id": "x", "type": "click", "ts": "1"})
    append(client, good[1:])
    entries = consumer.stream.read_new(100, 10)
    consumer.process(entries)
    dead = client.xrange(DEAD_LETTER)
    reasons = {f[b"event_id"].decode(): f[b"reason"].decode() for _, f in dead}
    assert reasons == {"bad1": "missing field item_id", "bad2": "unknown type 'teleport'",
                       "bad3": "unknown item 999999", "bad4": reasons["bad4"]}
    assert reasons["bad4"].startswith("unparseable field")
    ids = {e.id for e in entries}
    assert {f[b"stream_id"].decode() for _, f in dead} <= ids
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert client.smembers(user_seen_key("7")) == {b"50", b"51", b"52"}
    reg = consumer.metrics.registry
    assert reg.get_sample_value("recsys_events_dead_letter_total", {"reason": "unknown item"}) == 1
    assert reg.get_sample_value("recsys_events_applied_total", {"type": "click"}) == 3


def test_dead_consumer_entries_are_claimed_and_over_delivered_ones_dead_lettered(client, writer):
    consumer = make_consumer(client, writer, claim_idle_ms=1000, max_deliveries=3)
    consumer.stream.ensure_group()
    now = time.time()
    append(client, [Event("c1", "8", 60, "click", now), Event("c2", "8", 61, "click", now)])
    ghost = Stream(client, "crashed-consumer")
    taken = ghost.read_new(10, 10)
    assert len(taken) == 2
    for _ in range(3):  # c2 keeps failing somewhere: delivered 4 times in all
        ghost.read_own_pending(taken[0].id, 10)
    time.sleep(1.05)
    assert consumer.claim() == 2
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert client.sismember(user_seen_key("8"), 60)
    (_, f), = client.xrange(DEAD_LETTER)
    assert f[b"event_id"] == b"c2" and f[b"reason"] == b"failed 5 deliveries"


def test_trim_never_passes_an_unacknowledged_entry(client, writer):
    s = Stream(client, "t")
    s.ensure_group()
    base = 1_000_000_000_000
    for i in range(10):
        client.xadd(STREAM, {"event_id": f"x{i}"}, id=f"{base + i * 1000}-0")
    entries = s.read_new(10, 10)
    s.ack([e.id for e in entries[:3] + entries[5:]])  # 3 and 4 stay pending
    s.trim(retention_s=1.0, now=base / 1000 + 100)
    left = [i.decode() for i, _ in client.xrange(STREAM)]
    assert entries[3].id in left and entries[4].id in left
    # only acknowledged entries older than the pending ones may go (~: whole nodes, maybe none)
    assert all(x in left for x in (e.id for e in entries[3:]))


def test_export_jsonl_and_parquet(client, writer, tmp_path):
    now = time.time()
    evs = [Event("x1", "3", 10, "click", now - 5), Event("x2", "bob", 11, "rating", now - 4, value=4.0)]
    append(client, evs)
    client.xadd(STREAM, {"event_id": "p", "type": "nope"})
    r = export(client, tmp_path / "ev.jsonl")
    assert (r.events, r.skipped) == (2, 1)
    lines = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert lines[1] == {"event_id": "x2", "user_id": "bob", "item_id": 11, "type": "rating", "ts": now - 4, "value": 4.0}
    r = export(client, tmp_path / "ev.parquet", since=str(now - 3600))
    df = pd.read_parquet(tmp_path / "ev.parquet")
    assert list(df.columns) == ["event_id", "user_id", "item_id", "type", "ts", "value"]
    assert df["event_id"].tolist() == ["x1", "x2"] and pd.isna(df["value"][0]) and df["item_id"].dtype == np.int64
    assert since_id("1700000000.5") == "1700000000500-0" and since_id("5-1") == "5-1"
    assert since_id("2023-11-14T22:13:20Z") == "1700000000000-0"
    assert export(client, tmp_path / "none.jsonl", since=str(now + 3600)).events == 0


def test_settings_parse_and_refuse_unknown_types(monkeypatch):
    monkeypatch.setenv("EVENTS_SEEN_TYPES", "click, purchase")
    monkeypatch.setenv("EVENTS_POPULARITY_WEIGHTS", "click=2,purchase=5.5")
    s = EventsSettings()
    assert s.seen_type_set == {"click", "purchase"} and s.weights["purchase"] == 5.5 and s.weights["view"] == 0.0
    assert EventsSettings(consumer_name=None).resolved_consumer_name()
    monkeypatch.setenv("EVENTS_RECENT_TYPES", "click,teleport")
    with pytest.raises(ValueError, match="teleport"):
        EventsSettings()
