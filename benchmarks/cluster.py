"""One Redis vs a 3-node Redis Cluster, side by side: what each per-request Redis operation of
the stack costs on both (``python -m benchmarks cluster``).

What runs, for real: a private ``redis-server`` and a private 3-node Redis Cluster on free ports
(deploy.local), the same private Feast project materialised into both (feature_store.testing),
then, from this process, each operation on both targets in alternating blocks of 200 calls (so
the machine's noise falls on both alike):

* ``user_features``: the services' per-request user read (one HMGET; on one server pipelined with
  the snapshot pointer's GET);
* ``user + 500 items``: that and the item gather from the in-process snapshot table;
* ``cache lookup``: the gateway's response cache read (the user's generation + the entry, one
  slot: one round trip on both);
* ``events append``: ``POST /events``' Lua script (stream + idempotency key, one slot);
* ``precomputed read``: the precomputed list + seen set + recent ZSET (one slot).

Writes ``bench-results/cluster.json``. There is no target: the figures say what the cluster
client costs per call on one machine (all nodes on loopback; across hosts add a network RTT on
both, and the cluster's spread of keys is what buys capacity).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import console, report, summary

BLOCK = 200


def _interleaved(calls: dict[str, Any], n: int, warmup: int) -> dict[str, np.ndarray]:
    """Per target: ``n`` latencies (ms) of ``calls[target](i)``, targets alternating every BLOCK calls."""
    for fn in calls.values():
        for i in range(warmup):
            fn(i)
    out = {t: [] for t in calls}
    perf = time.perf_counter
    done = 0
    while done < n:
        m = min(BLOCK, n - done)
        for t, fn in calls.items():
            lat = np.empty(m)
            for j in range(m):
                t0 = perf()
                fn(done + j)
                lat[j] = perf() - t0
            out[t].append(lat)
        done += m
    return {t: np.concatenate(v) * 1e3 for t, v in out.items()}


def _async_calls(loop: asyncio.AbstractEventLoop, make):
    """A sync ``fn(i)`` running the coroutine ``make(i)`` to completion on ``loop``."""
    return lambda i: loop.run_until_complete(make(i))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks cluster", description=__doc__)
    p.add_argument("--calls", type=int, default=4000, help="Measured calls per operation and target.")
    p.add_argument("--warmup", type=int, default=300)
    args = p.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from common.precomputed import PrecomputedList, encode
    from common.realtime import Event, precomputed_key, user_recent_key, user_seen_key
    from common.redis_client import sync_client
    from deploy.local import Stack, start_redis, start_redis_cluster, stop_redis_cluster
    from feature_store.reader import FeatureReaderMetrics, build_reader
    from feature_store.testing import private_feast
    from services.gateway.cache import RedisCache, cache_key
    from services.gateway.events import EventLog
    from services.gateway.precomputed import PrecomputedStore

    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"ratios_p50": {}, "ratios_p99": {}}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        stack = Stack(work / "run")
        readers, clients = {}, {}
        loop = asyncio.new_event_loop()
        try:
            urls = {"one server": start_redis(stack), "cluster (3 nodes)": start_redis_cluster(stack)}
            console.print(f"targets: {urls}")
            feasts = {t: private_feast(work / f"feast-{i}", u) for i, (t, u) in enumerate(urls.items())}
            for t, f in feasts.items():
                readers[t] = build_reader(f.settings, store=f.store, metrics=FeatureReaderMetrics(CollectorRegistry()))
                clients[t] = sync_client(urls[t], socket_timeout=5)
            import pandas as pd

            off = next(iter(feasts.values())).settings.offline_dir
            users = pd.read_parquet(off / "user_profile.parquet")["user_id"].to_numpy()
            items = pd.read_parquet(off / "item_profile.parquet")["item_id"].to_numpy()
            rng = np.random.default_rng(0)
            item_sets = [rng.choice(items, 500) for _ in range(64)]
            lst = PrecomputedList("bench", time.time(), np.arange(1, 301, dtype=np.int64),
                                  np.linspace(1, 0, 300, dtype=np.float32), np.zeros(300, np.float32),
                                  np.zeros(300, np.int8), ("two_tower",))
            for c in clients.values():  # the precomputed read's three keys for 64 users
                for u in users[:64]:
                    c.set(precomputed_key(str(u)), encode(lst))
                    c.sadd(user_seen_key(str(u)), 1, 2, 3)
                    c.zadd(user_recent_key(str(u)), {"4": 1.0})
            caches = {t: RedisCache(u, 300, 1.0) for t, u in urls.items()}
            logs = {t: EventLog(u, dedup_ttl_s=3600, timeout_s=1.0) for t, u in urls.items()}
            pres = {t: PrecomputedStore(u, 1.0) for t, u in urls.items()}
            for t in urls:  # an entry for every cache lookup to hit
                for u in users[:64]:
                    loop.run_until_complete(caches[t].set(cache_key("v", str(u), 10, None, []), b"x" * 600))

            def both(make):
                return {t: make(t) for t in urls}

            ops = {
                "user_features": both(lambda t: lambda i: readers[t].user_features(int(users[i % users.size]))),
                "user + 500 items": both(lambda t: lambda i: (readers[t].user_features(int(users[i % users.size])),
                                                              readers[t].item_features(item_sets[i % 64]))),
                "cache lookup": both(lambda t: _async_calls(loop, lambda i: caches[t].lookup(
                    str(users[i % 64]), cache_key("v", str(users[i % 64]), 10, None, [])))),
                "events append": both(lambda t: _async_calls(loop, lambda i: logs[t].append(
                    [Event(uuid.uuid4().hex, str(users[i % users.size]), int(items[i % items.size]), "view", time.time())]))),
                "precomputed read": both(lambda t: _async_calls(loop, lambda i: pres[t].read(str(users[i % 64])))),
            }
            for op, calls in ops.items():
                lat = _interleaved(calls, args.calls, args.warmup)
                stats = {t: summary(v) for t, v in lat.items()}
                for t, s in stats.items():
                    rows.append({"case": f"{op}: {t}", **s, "target": ""})
                a, b = stats["one server"], stats["cluster (3 nodes)"]
                extra["ratios_p50"][op] = round(b["p50_ms"] / a["p50_ms"], 2)
                extra["ratios_p99"][op] = round(b["p99_ms"] / a["p99_ms"], 2)
            for t in urls:
                loop.run_until_complete(caches[t].close())
                loop.run_until_complete(pres[t].close())
        finally:
            loop.close()
            for r in readers.values():
                r.close()
            for c in clients.values():
                c.close()
            stop_redis_cluster(stack)
            stack.stop_all()
    console.print(f"cluster / one server, p50: {extra['ratios_p50']}; p99: {extra['ratios_p99']}")
    report("cluster", "Redis operations: one server vs a 3-node cluster (loopback, interleaved)", rows, extra)
    return {"results": rows, **extra}


if __name__ == "__main__":
    main()
