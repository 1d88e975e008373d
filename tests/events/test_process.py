"""The consumer as a real process (``python -m services.events`` under deploy.local.Stack) on a
private redis-server: SIGKILLed several times mid-stream, restarted (the last time under another
name, so a dead consumer's pending entries must be claimed), it ends with exactly the state one
clean pass gives; metrics and health answer; SIGTERM exits 0."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import httpx
import numpy as np
import pytest
import redis

from common.net import free_port
from common.realtime import (
    DEAD_LETTER,
    GROUP,
    ITEM_COUNTS,
    POPULAR,
    POPULAR_META,
    STREAM,
    Event,
    PopularScale,
    event_id_key,
    user_events_key,
    user_seen_key,
)
from common.settings import FeatureStoreSettings
from deploy.local import Stack, start_redis
from feature_store import store as fs
from feature_store.repo.definitions import N_RECENT
from feature_store.writer import UserRowWriter
from services.events.settings import EventsSettings

from .conftest import APPEND

PROJECT = "eventscrash"
N_USERS, N_EVENTS = 200, 20_000
TYPES = ["view", "click", "add_to_cart", "purchase", "rating", "impression"]
P_TYPES = [0.35, 0.3, 0.08, 0.04, 0.08, 0.15]


def _events(now: float) -> list[Event]:
    rng = np.random.default_rng(11)
    users = rng.integers(0, N_USERS, N_EVENTS)
    items = rng.integers(1, 1683, N_EVENTS)
    types = rng.choice(len(TYPES), N_EVENTS, p=P_TYPES)
    t0 = now - 900
    return [Event(f"ev-{i}", str(7_000_000 + int(u)), int(it), TYPES[t], t0 + i * 0.02, received=t0 + i * 0.02)
            for i, (u, it, t) in enumerate(zip(users, items, types, strict=True))]


def _append(client, events: list[Event]) -> None:
    script = client.register_script(APPEND)
    for start in range(0, len(events), 1000):
        with client.pipeline(transaction=False) as pipe:
            for e in events[start:start + 1000]:
                args = [86400]
                for k, v in e.fields().items():
                    args += [k, v]
                script(keys=[event_id_key(e.event_id), STREAM], args=args, client=pipe)
            pipe.execute()


def _group(client) -> dict:
    return next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())


def _wait(cond, timeout: float, what: str, stack: Stack, name: str):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        stack.check_alive([name])
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s; log:\n{stack.log_path(name).read_text()[-3000:]}")
        time.sleep(0.02)


@pytest.fixture
def env(tmp_path):
    stack = Stack(tmp_path / "run")
    url = start_redis(stack)
    settings = FeatureStoreSettings(redis_url=url, data_dir=tmp_path / "feast", project=PROJECT)
    store = fs.apply(settings)
    client = redis.Redis.from_url(url)
    try:
        yield stack, url, settings, UserRowWriter.from_store(store, PROJECT), client
    finally:
        client.close()
        for name in stack.names():
            stack.stop(name)


def test_crashes_and_redelivery_give_exactly_one_clean_pass(env):
    stack, url, settings, writer, client = env
    port = free_port()
    base = {"REDIS_URL": url, "FEAST_DATA_DIR": str(settings.data_dir), "FEAST_PROJECT": PROJECT,
            "EVENTS_BATCH_SIZE": "200", "EVENTS_BLOCK_MS": "200", "EVENTS_METRICS_PORT": str(port),
            "EVENTS_CLAIM_IDLE_MS": "1000", "EVENTS_LOG_LEVEL": "INFO"}
    now = time.time()
    events = _events(now)
    _append(client, events[:12_000])  # before the first start: the group is created at id 0

    def start(consumer: str):
        stack.start_module("events", "services.events", {**base, "EVENTS_CONSUMER_NAME": consumer})

    def kill_after(n_read: int):
        _wait(lambda: client.exists(STREAM) and client.xinfo_groups(STREAM) and _group(client)["entries-read"] >= n_read,
              60, f"{n_read} entries read", stack, "events")
        stack.signal("events", signal.SIGKILL)
        stack.procs["events"].wait(5)
        stack.stop("events")

    start("c1")
    kill_after(2_000)
    start("c1")  # re-reads its own pending entries
    _append(client, events[12_000:])
    kill_after(9_000)
    start("c1")
    kill_after(15_000)
    assert client.xpending(STREAM, GROUP)["pending"] > 0  # something was in flight when it died
    start("c2")  # another name: c1's pending entries must be claimed (XAUTOCLAIM, idle > 1 s)
    _wait(lambda: (g := _group(client))["lag"] == 0 and g["pending"] == 0, 90, "lag 0", stack, "events")

    # -- what one clean pass gives ------------------------------------------------------------
    s = EventsSettings()
    recent_t, seen_t, weights = s.recent_type_set, s.seen_type_set, s.weights
    n_events, seen, latest = defaultdict(int), defaultdict(set), defaultdict(dict)
    for e in events:
        if e.type in recent_t:
            n_events[e.user_id] += 1
            latest[e.user_id][e.item_id] = e.ts
        if e.type in seen_t:
            seen[e.user_id].add(e.item_id)
    users = sorted({e.user_id for e in events})
    rows = writer.read(client, [int(u) for u in users], ["user_context", "user_seen"])
    for u, row in zip(users, rows, strict=True):
        assert client.zcard(user_events_key(u)) == n_events[u], u
        assert {int(x) for x in client.smembers(user_seen_key(u))} == seen[u], u
        ctx, ctx_ts = row["user_context"]
        want = [i for i, _ in sorted(latest[u].items(), key=lambda kv: -kv[1])][:N_RECENT]
        assert ctx["recent_item_ids"].tolist() == want, u
        assert ctx["recent_count_1h"] == ctx["recent_count_24h"] == n_events[u], u
        assert ctx_ts == pytest.approx(max(latest[u].values()), abs=1e-5)
        seen_row, _ = row["user_seen"]
        assert seen_row["seen_item_ids"].tolist() == sorted(seen[u]), u

    meta = client.hgetall(POPULAR_META)
    scale = PopularScale(float(meta[b"epoch"]), float(meta[b"half_life_s"]))
    expected = sum(scale.increment(weights[e.type], e.ts) for e in events)
    total = sum(score for _, score in client.zrange(POPULAR, 0, -1, withscores=True))
    assert total == pytest.approx(expected, rel=1e-9)  # aggregates applied exactly once
    assert sum(int(v) for v in client.hvals(ITEM_COUNTS)) == sum(n_events.values())
    assert client.xlen(DEAD_LETTER) == 0

    # -- metrics, health, SIGTERM ---------------------------------------------------------------
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert http.get("/healthz").status_code == 200
        ready = _wait(lambda: (r := http.get("/readyz")).status_code == 200 and r, 10, "ready", stack, "events")
        assert ready.json()["group"] is True
        _wait(lambda: "recsys_events_lag_seconds 0.0" in http.get("/metrics").text, 10, "lag_seconds 0", stack, "events")
        text = http.get("/metrics").text
        for name in ("recsys_events_applied_total", "recsys_events_duplicates_total", "recsys_events_lag_entries",
                     "recsys_events_apply_seconds_bucket", "recsys_events_batch_size_bucket",
                     "recsys_events_freshness_seconds_bucket"):
            assert name in text, name
        assert "recsys_events_lag_entries 0.0" in text
    proc = stack.procs["events"]
    stack.signal("events", signal.SIGTERM)
    assert proc.wait(10) == 0
    log = stack.log_path("events").read_text()
    assert "claimed" in log  # c2 took c1's entries over
