"""Ranking benchmark: p50/p99 of ``Rank`` (500 candidates, features included) over loopback gRPC.

A real ``python -m services.ranking`` process reading user and item features from a private
``redis-server`` into which Feast materialised the offline features; each call ranks 500
candidates of the catalog for a real user. Target: p50 ≤ 3 ms, p99 ≤ 8 ms.

The ranker's cost depends on the number of candidates, not on the catalog size, so the ml-100k
bundle is the measured case (the 1M-item scale bundle has no per-item online features).

    python -m benchmarks ranking [--calls 3000 --warmup 300 --candidates 500]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    BenchError,
    console,
    feast_settings,
    materialise,
    measure,
    private_redis,
    report,
    run_service,
    server_stage_means,
    service_env,
    summary,
    verdict,
)
from common.bundle import load_bundle
from common.settings import REPO_ROOT

NAME = "ranking"
TARGET_P50_MS, TARGET_P99_MS = 3.0, 8.0
BUNDLE = REPO_ROOT / "artifacts" / "current"


def main(calls: int = 3000, warmup: int = 300, candidates: int = 500) -> int:
    import grpc

    from common.proto.recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc

    if not (BUNDLE / "manifest.json").is_file():
        console.print("[red]no artifacts/current bundle: run `make artifacts` first[/red]")
        return 2
    bundle = load_bundle(BUNDLE)
    user_ids = np.load(bundle.path("user_ids"), allow_pickle=False)[1:]
    item_ids = np.load(bundle.path("item_ids"), allow_pickle=False)[1:]
    n = min(candidates, item_ids.size)
    rng = np.random.default_rng(11)
    requests = []
    for u in rng.choice(user_ids, size=256).tolist():
        ids = rng.choice(item_ids, size=n, replace=False)
        scores = np.sort(rng.random(n, dtype=np.float32))[::-1]
        cands = common_pb2.CandidateList(item_ids=ids.tolist(), scores=scores.tolist(),
                                         source_index=[0] * n, source_names=["two_tower"])
        requests.append(ranking_pb2.RankRequest(user_id=str(u), candidates=cands))
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="bench-ranking-") as tmp:
        settings = feast_settings(redis_url, Path(tmp) / "feast")
        secs = materialise(settings)
        console.print(f"materialised features into a private Redis in {secs:.1f}s")
        env = service_env(settings, BUNDLE, {"RANKING_LOG_LEVEL": "WARNING"})
        console.print(f"ranking: {n} candidates - {warmup} warm-up + {calls} calls")
        with run_service("ranking", env, Path(tmp)) as svc, grpc.insecure_channel(svc.address) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            first = stub.Rank(requests[0], timeout=10)
            if len(first.item_ids) != n:
                raise BenchError(f"ranked {len(first.item_ids)} items, sent {n}")
            lat = measure(lambda i: stub.Rank(requests[i % len(requests)], timeout=5), calls, warmup)
            server = server_stage_means(svc.metrics_port)  # includes warm-up calls
    stats = summary(lat)
    console.print(f"  server-side means (ms, incl. warm-up): {server}")
    row = {"case": f"ml-100k: Rank {n} candidates", "bundle": bundle.version, **stats,
           "target": verdict(stats, TARGET_P50_MS, TARGET_P99_MS), "server_mean_ms": server}
    report(NAME, "Rank over loopback gRPC (client-side wall clock, features included)", [row],
           {"candidates": n, "calls": calls, "warmup": warmup,
            "target": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
