"""The scale catalog served end to end, on a catalog small enough for CI.

The path is the one ``make artifacts-scale`` + ``make up-scale`` take for 1M items; only the size
(``ScaleConfig.items``) differs: the generator builds a bundle of its own, ``deploy.local
online-store`` applies its Feast project and materialises it batched into a private Redis saved as
RDB, and the stack is started from that RDB (``start_redis(rdb=...)``, what ``up --online-rdb``
does) in both gateway runtimes, ranking 500 candidates with the response cache off.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from common.bundle import load_bundle
from common.settings import REPO_ROOT, FeatureStoreSettings
from deploy.local import Ports, Stack, start_redis, start_services
from models import scale
from tests.conftest import until

N = 20_000
PROJECT = "recsys_scale_ci"
SERVICE_ENV = {"RETRIEVAL_WARMUP_REQUESTS": "5", "RANKING_WARMUP_REQUESTS": "5",
               "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1"}


@pytest.fixture(scope="module")
def scale_env(bundle_path, tmp_path_factory) -> dict[str, str]:
    """A 20,000-item scale bundle, its Feast project, and the online store saved as RDB."""
    offline = FeatureStoreSettings().offline_dir
    root = tmp_path_factory.mktemp("scale-serving")
    cfg = scale.ScaleConfig(items=N, candidates=("ivf_flat",), n_queries=500, latency_queries=50,
                            nprobe_values=(4, 8, 16, 32, 64))
    scale.build_bundle(cfg, source=bundle_path, offline_dir=offline, out_root=root / "artifacts",
                       features_out=root / "features", log_fn=lambda _m: None)
    env = {"ARTIFACTS_DIR": str(root / "artifacts" / "current"), "FEAST_PROJECT": PROJECT,
           "FEAST_OFFLINE_DIR": str(root / "features"), "FEAST_DATA_DIR": str(root / "feast"),
           "FEAST_ONLINE_TYPE": "redis"}
    rdb = root / "redis" / "online.rdb"
    clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # a private Redis, saved as RDB
    done = subprocess.run([sys.executable, "-m", "deploy.local", "online-store", "--rdb", str(rdb),
                           "--batch-rows", "7000"], cwd=REPO_ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "item_profile" in done.stdout and f"{N:,} rows" in done.stdout, done.stdout
    assert rdb.is_file()
    return {**env, "rdb": str(rdb), "root": str(root)}


@pytest.fixture(scope="module")
def online_redis(scale_env, tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("scale-redis"))
    try:
        yield start_redis(stack, appendonly=True, rdb=Path(scale_env["rdb"]), timeout=60)
    finally:
        stack.stop_all()


def test_every_item_is_materialised_and_in_the_snapshot(scale_env, online_redis):
    import redis

    from feature_store.reader import build_reader

    settings = FeatureStoreSettings(project=PROJECT, offline_dir=Path(scale_env["FEAST_OFFLINE_DIR"]),
                                    data_dir=Path(scale_env["FEAST_DATA_DIR"]), redis_url=online_redis,
                                    online_type="redis")
    bundle = load_bundle(scale_env["ARTIFACTS_DIR"])
    catalog_ids = pq.read_table(bundle.path("item_catalog"), columns=["item_id"]).column("item_id").to_numpy()
    assert catalog_ids.size == N
    with redis.Redis.from_url(online_redis) as client:
        # AOF switched on after the RDB load: events acknowledged later survive a restart
        assert client.info("persistence")["aof_enabled"] == 1
        # Feast's row of a synthetic item (one hash per entity key, the project at the end)
        from prometheus_client import CollectorRegistry

        reader = build_reader(settings, registry=CollectorRegistry())
        try:
            key = reader.layout.entity_prefix("item") + struct.pack("<q", int(catalog_ids[-1])) + PROJECT.encode()
            assert client.exists(key)
            table = reader.item_table
            assert table.n == N and np.array_equal(table.ids, np.sort(catalog_ids))
            feats = reader.item_features(catalog_ids[-100:])
            assert not feats.missing.any(), "synthetic items must have their own online features"
            assert (feats.values["item_profile:year"] > 1900).all()
        finally:
            reader.close()


@pytest.mark.parametrize("mode", ["grpc", "inprocess"])
def test_recommend_over_the_scale_catalog(mode, scale_env, online_redis, tmp_path, known_users):
    stack = Stack(tmp_path)
    ports = Ports.free()
    env = {**SERVICE_ENV, **{k: v for k, v in scale_env.items() if k.isupper()}}
    gateway_env = {"GATEWAY_CACHE_TTL_S": "0", "GATEWAY_NUM_CANDIDATES": "500", "GATEWAY_ENVIRONMENT": "dev",
                   "GATEWAY_ADMIN_TOKEN": "scale-test-token-0123456789"}
    try:
        url = start_services(stack, ports, online_redis, extra_env=env, gateway_env=gateway_env, timeout=180,
                             mode=mode, events=True)
        bundle = load_bundle(scale_env["ARTIFACTS_DIR"], verify=False)
        first_synthetic = bundle.manifest["dataset"]["first_synthetic_id"]
        with httpx.Client(base_url=url, timeout=10) as client:
            synthetic = 0
            for user in known_users[:30]:
                for _ in range(2):  # cache off: the second answer is computed again, not cached
                    body = client.get("/recommend", params={"user_id": user, "k": 20}).json()
                    assert body["fallback"] is None and body["cached"] is False, body
                    assert body["model_version"] == bundle.version
                    assert len(body["items"]) == 20
                synthetic += sum(i["item_id"] >= first_synthetic for i in body["items"])
            assert synthetic > 0, "no synthetic item was ever recommended from a catalog that is 92% synthetic"
            cold = client.get("/recommend", params={"user_id": "never-seen-user", "k": 10}).json()
            assert cold["fallback"] is None and len(cold["items"]) == 10
            explained = client.post("/debug/explain", json={"user_id": known_users[0], "k": 10},
                                    headers={"Authorization": "Bearer scale-test-token-0123456789"})
            assert explained.status_code == 200, explained.text
            trace = explained.json()["explain"]
            taken = sum(s["taken"] for s in trace["retrieval"]["sources"].values())
            assert taken == 500, trace["retrieval"]["sources"]  # what ranking then scored
            assert trace["ranking"]["model_version"] == bundle.version
            # the events loop knows the whole catalog: a click on a synthetic item is applied (not
            # dead-lettered as an unknown item) and the item leaves the user's next answers
            user = known_users[1]
            top = client.get("/recommend", params={"user_id": user, "k": 10}).json()["items"][0]["item_id"]
            event = {"event_id": f"scale-{mode}", "user_id": user, "item_id": top, "type": "click"}
            assert client.post("/events", json={"events": [event]}).status_code == 202
            until(lambda: all(i["item_id"] != top for i in client.get(
                "/recommend", params={"user_id": user, "k": 10}).json()["items"]), 10)
            metrics = client.get("/metrics").text if mode == "inprocess" else httpx.get(
                f"http://127.0.0.1:{ports.ranking_metrics}/metrics").text
        item_missing = [line for line in metrics.splitlines() if line.startswith("recsys_missing_features_total")
                        and 'feature_view="item_' in line and not line.rstrip().endswith(" 0.0")]
        assert not item_missing, f"item features defaulted during serving: {item_missing}"
    finally:
        stack.stop_all()


def test_a_redis_from_a_saved_store_keeps_what_it_acknowledged_across_restarts(tmp_path):
    """``start_redis(rdb=...)`` (``make up-scale``): the first start loads the saved store, a
    restart continues from its own AOF (events acknowledged since are kept), and a rebuilt store
    (a newer RDB) is loaded again instead."""
    import os
    import time

    import redis

    maker = Stack(tmp_path / "store")  # its Redis saves into its folder: store/dump.rdb
    saved = maker.run_dir / "dump.rdb"
    try:
        with redis.Redis.from_url(start_redis(maker)) as client:
            client.set("feature-row", "v1")
            client.save()
    finally:
        maker.stop_all()

    run = Stack(tmp_path / "run")

    def start_and_read(*keys):
        url = start_redis(run, appendonly=True, rdb=saved, timeout=30)
        try:
            with redis.Redis.from_url(url) as client:
                got = [client.get(k) for k in keys]
                client.set("event-applied", "yes")  # acknowledged after the start
                return got, client.info("persistence")["aof_enabled"]
        finally:
            run.stop_all()

    assert start_and_read("feature-row", "event-applied") == ([b"v1", None], 1)
    assert start_and_read("feature-row", "event-applied") == ([b"v1", b"yes"], 1), "the AOF was not continued"
    later = time.time() + 5
    os.utime(saved, (later, later))  # the store was rebuilt after the AOF was last written
    assert start_and_read("feature-row", "event-applied") == ([b"v1", None], 1), "a newer saved store was ignored"
