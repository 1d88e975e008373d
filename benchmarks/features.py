"""Online feature fetch: the fast reader (feature_store/reader.py) vs Feast's SDK, same run.

``python -m benchmarks features`` or ``python -m benchmarks.features [--calls N ...]``.

What runs, for real: a private ``redis-server`` on a free port (or ``REDIS_URL`` when given),
``feast apply`` + materialise of the pipeline's offline parquet (latest row per entity, see
feature_store/testing.py) with the reader's post-materialise snapshot hook, then for the same
entities, one after the other in this process:

* reader: ``user_features(u)`` + ``item_features(500 ids)`` per fetch;
* Feast SDK: ``get_online_features`` for the user's 10 features + for the 500 items' 6 features
  (``feast_sdk_*``), and the same plus ``.to_dict()`` (``feast_sdk_to_dict_*``), which is what a
  service would need to use the values.

Also measured: the SQLite backend (Feast's embedded store) against the SDK on SQLite, the
snapshot publish (post-materialise hook) and load (reader refresh) at the catalog's size, and a
synthetic 1M-item table: packed size, Redis load time, resident memory and gather latency.
Writes ``bench-results/features.json`` with ``reader_p50_ms``, ``reader_p99_ms``,
``feast_sdk_p50_ms``, ``feast_sdk_p99_ms``, ``speedup_p50`` and the rest.
Target: 1 user + 500 items p50 ≤ 1 ms and ≥ 50× faster than the SDK.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import console, measure, private_redis, report, summary

TARGET_P50_MS = 1.0
TARGET_SPEEDUP = 50.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _entities(feast, n_sets: int, n_items: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    import pandas as pd

    off = feast.settings.offline_dir
    users = pd.read_parquet(off / "user_profile.parquet")["user_id"].to_numpy()
    items = np.unique(np.concatenate([pd.read_parquet(off / f"{v}.parquet")["item_id"].to_numpy()
                                      for v in ("item_profile", "item_aggregates")]))
    rng = np.random.default_rng(seed)
    item_sets = [rng.choice(items, size=n_items, replace=n_items > items.size) for _ in range(n_sets)]
    return rng.permutation(users), item_sets


def _bench_backend(label: str, feast, reader, calls: int, sdk_calls: int, warmup: int, n_items: int,
                   rows: list[dict[str, Any]], target: str) -> dict[str, Any]:
    users, item_sets = _entities(feast, 64, n_items)
    user_refs = [f.ref for v in reader.layout.views_of("user") for f in v.features]
    item_refs = [f.ref for v in reader.layout.views_of("item") for f in v.features]
    store = feast.store

    def fetch(i: int) -> None:
        reader.user_features(int(users[i % users.size]))
        reader.item_features(item_sets[i % len(item_sets)])

    def sdk(i: int, to_dict: bool = False) -> None:
        u = store.get_online_features(features=user_refs, entity_rows=[{"user_id": int(users[i % users.size])}])
        it = store.get_online_features(features=item_refs,
                                       entity_rows=[{"item_id": int(x)} for x in item_sets[i % len(item_sets)]])
        if to_dict:
            u.to_dict(), it.to_dict()

    for i in range(warmup):
        fetch(i)
    gc.collect()
    gc.freeze()  # as the services do after warm-up: no full GC over start-up objects mid-measurement
    try:
        lat = summary(measure(fetch, calls, 0))
        lat_user = summary(measure(lambda i: reader.user_features(int(users[i % users.size])), calls, 0))
        lat_items = summary(measure(lambda i: reader.item_features(item_sets[i % len(item_sets)]), calls, 0))
    finally:
        gc.unfreeze()
    sdk_lat = summary(measure(sdk, sdk_calls, min(20, sdk_calls)))
    sdk_dict = summary(measure(lambda i: sdk(i, True), sdk_calls, 5))
    speedup = sdk_lat["p50_ms"] / lat["p50_ms"]
    met = lat["p50_ms"] <= TARGET_P50_MS and speedup >= TARGET_SPEEDUP
    rows.append({"case": f"{label}: reader, 1 user + {n_items} items", **lat,
                 "target": (f"p50≤{TARGET_P50_MS:g} ms & ≥{TARGET_SPEEDUP:g}× SDK: {'met' if met else 'MISSED'}"
                            if target else f"{speedup:.0f}× SDK")})
    rows.append({"case": f"{label}: reader, user only", **lat_user, "target": ""})
    rows.append({"case": f"{label}: reader, {n_items} items only", **lat_items, "target": ""})
    rows.append({"case": f"{label}: Feast SDK get_online_features", **sdk_lat, "target": f"{speedup:.0f}× slower"})
    rows.append({"case": f"{label}: Feast SDK + to_dict()", **sdk_dict, "target": ""})
    return {"reader": lat, "reader_user": lat_user, "reader_items": lat_items, "sdk": sdk_lat,
            "sdk_to_dict": sdk_dict, "speedup_p50": round(speedup, 1), "target_met": met}


def _snapshot_costs(feast, reader) -> dict[str, Any]:
    from feature_store.item_table import pack_table
    from feature_store.reader import publish_item_snapshot

    t = time.perf_counter()
    publish_item_snapshot(feast.settings, store=feast.store)
    publish_s = time.perf_counter() - t
    t = time.perf_counter()
    table = reader.refresh(force=True)
    load_s = time.perf_counter() - t
    return {"items": table.n, "publish_s": round(publish_s, 3), "load_s": round(load_s, 4),
            "snapshot_bytes": len(pack_table(table)), "table_bytes": table.nbytes()}


def _scale(redis_url: str, layout, n: int, n_items: int, calls: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A synthetic ``n``-item table (the 1M scale catalog's size): pack, publish, load, gather."""
    import redis

    from feature_store.backends.redis import RedisBackend
    from feature_store.item_table import ItemTable, pack_table, unpack_table
    from feature_store.online_layout import Layout

    rng = np.random.default_rng(1)
    ids = np.arange(1, n + 1, dtype=np.int64)
    values, present, event_ts = {}, {}, {}
    item_views = layout.views_of("item")
    for v in item_views:
        event_ts[v.name] = np.append(np.full(n, 8.9e8), np.nan)
        for spec in v.features:
            present[spec.ref] = np.append(np.ones(n, bool), False)
            if spec.kind == "str":
                arr = np.empty(n + 1, dtype=object)
                arr[:n] = [f"Synthetic movie {i} ({1930 + i % 70})" for i in range(n)]
                arr[n] = ""
            elif spec.kind == "array":
                arr = np.zeros((n + 1, 19), dtype=spec.array_dtype)
                arr[:n] = rng.random((n, 19)) < 0.15
            else:
                arr = np.zeros(n + 1, dtype=np.float32 if spec.kind == "float" else np.int64)
                arr[:n] = rng.random(n) * 5
            values[spec.ref] = arr
    table = ItemTable(ids=ids, values=values, present=present, event_ts=event_ts, version="scale")
    t = time.perf_counter()
    blob = pack_table(table)
    pack_s = time.perf_counter() - t
    del table, values, present, event_ts
    gc.collect()
    scale_layout = Layout(project="benchscale", views={v.name: v for v in item_views}, join_keys=layout.join_keys)
    client = redis.Redis.from_url(redis_url, socket_timeout=120)
    backend = RedisBackend(scale_layout, client)
    try:
        t = time.perf_counter()
        backend.publish_snapshot(blob, "scale")
        publish_s = time.perf_counter() - t
        blob_bytes = len(blob)
        del blob
        gc.collect()
        rss0 = _rss_mb()
        t = time.perf_counter()
        raw = backend.load_snapshot("scale")
        get_s = time.perf_counter() - t
        loaded = unpack_table(raw, scale_layout)
        del raw
        load_s = time.perf_counter() - t
        gc.collect()
        rss = _rss_mb() - rss0
        sets = [rng.integers(1, n + 1, n_items) for _ in range(64)]
        def gather(i: int) -> None:
            rows_ = loaded.rows(sets[i % 64])
            for a in loaded.values.values():
                a[rows_]

        lat = summary(measure(gather, calls, 50))
        rows.append({"case": f"{n:,} items: table gather, {n_items} items", **lat, "target": ""})
        out = {"items": n, "snapshot_mb": round(blob_bytes / 2**20, 1), "pack_s": round(pack_s, 2),
               "publish_s": round(publish_s, 2), "redis_get_s": round(get_s, 2), "load_s": round(load_s, 2),
               "table_rss_mb": round(rss, 1), "gather": lat}
        with client.pipeline(transaction=False) as pipe:  # leave nothing behind in a given REDIS_URL
            for k in client.scan_iter(match="{benchscale:fsreader:items}:*", count=1000):
                pipe.delete(k)
            pipe.execute()
        return out
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="measured reader fetches per backend")
    p.add_argument("--sdk-calls", type=int, default=200, help="measured Feast SDK fetches per backend")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--items", type=int, default=500, help="items per fetch")
    p.add_argument("--scale-items", type=int, default=1_000_000, help="synthetic table size (0 = skip)")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite backend")
    args = p.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from feature_store.reader import build_reader
    from feature_store.testing import private_feast

    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"items_per_fetch": args.items}
    given = os.environ.get("REDIS_URL")
    with (contextlib.nullcontext(given) if given else private_redis()) as redis_url, \
            tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        console.print(f"feast apply + materialise into {redis_url} ...")
        t = time.perf_counter()
        feast = private_feast(Path(tmp) / "redis", redis_url, project="benchfeatures")
        extra["redis_materialise_s"] = round(time.perf_counter() - t, 1)
        reader = build_reader(feast.settings, store=feast.store, registry=CollectorRegistry())
        try:
            res = _bench_backend("redis", feast, reader, args.calls, args.sdk_calls, args.warmup, args.items,
                                 rows, target="yes")
            extra.update({
                "reader_p50_ms": res["reader"]["p50_ms"], "reader_p99_ms": res["reader"]["p99_ms"],
                "feast_sdk_p50_ms": res["sdk"]["p50_ms"], "feast_sdk_p99_ms": res["sdk"]["p99_ms"],
                "feast_sdk_to_dict_p50_ms": res["sdk_to_dict"]["p50_ms"],
                "speedup_p50": res["speedup_p50"], "target_met": res["target_met"],
                "redis": res, "item_snapshot": _snapshot_costs(feast, reader),
            })
            if args.scale_items:
                console.print(f"synthetic {args.scale_items:,}-item table ...")
                extra["scale"] = _scale(redis_url, reader.layout, args.scale_items, args.items,
                                        min(args.calls, 1000), rows)
        finally:
            reader.close()
        if not args.no_sqlite:
            console.print("feast apply + materialise into SQLite ...")
            sq = private_feast(Path(tmp) / "sqlite", None, project="benchfeatures")
            sreader = build_reader(sq.settings, store=sq.store, registry=CollectorRegistry())
            try:
                sres = _bench_backend("sqlite", sq, sreader, args.calls, max(20, args.sdk_calls // 2),
                                      args.warmup, args.items, rows, target="")
                extra["sqlite"] = sres
                extra["sqlite_reader_p50_ms"] = sres["reader"]["p50_ms"]
                extra["sqlite_speedup_p50"] = sres["speedup_p50"]
            finally:
                sreader.close()
    report("features", f"online features: reader vs Feast SDK ({args.items} items)", rows, extra)
    return extra


if __name__ == "__main__":
    main()
