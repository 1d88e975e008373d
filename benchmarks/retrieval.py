"""Retrieval benchmark: p50/p99 of ``Retrieve`` (k=500) over loopback gRPC.

A real ``python -m services.retrieval`` process per bundle, reading user features from a private
``redis-server`` into which Feast materialised the offline features. Bundles: the ml-100k bundle
(``artifacts/current``) and, when present, the 1M-item scale bundle (``artifacts/scale/current``,
written by ``make artifacts-scale``). Target on the 1M catalog: p50 ≤ 2 ms, p99 ≤ 5 ms.

    python -m benchmarks retrieval [--calls 3000 --warmup 300 --k 500]
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

NAME = "retrieval"
TARGET_P50_MS, TARGET_P99_MS = 2.0, 5.0  # on the 1M-item catalog
BUNDLE = REPO_ROOT / "artifacts" / "current"
SCALE_BUNDLE = REPO_ROOT / "artifacts" / "scale" / "current"


def bundles() -> list[tuple[str, Path]]:
    out = [("ml-100k", BUNDLE)]
    if (SCALE_BUNDLE / "manifest.json").is_file():
        out.append(("1M items", SCALE_BUNDLE))
    else:
        console.print(f"[yellow]no 1M-item scale bundle at {SCALE_BUNDLE.relative_to(REPO_ROOT)}: "
                      "skipping that case (run `make artifacts-scale`)[/yellow]")
    return out


def bench_one(label: str, bundle_dir: Path, env: dict[str, str], log_dir: Path, calls: int, warmup: int,
              k: int) -> dict:
    import grpc

    from common.proto.recsys.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc

    bundle = load_bundle(bundle_dir)
    n_items = int(bundle.manifest.get("index", {}).get("ntotal", 0)) or None
    user_ids = np.load(bundle.path("user_ids"), allow_pickle=False)[1:]
    rng = np.random.default_rng(7)
    users = rng.choice(user_ids, size=512)
    # 1 in 4 calls carries session context (recent items), like a live session would.
    item_ids = np.load(bundle.path("item_ids"), allow_pickle=False)[1:]
    requests = []
    for j, u in enumerate(users.tolist()):
        ctx = common_pb2.Context(recent_item_ids=rng.choice(item_ids, 3).tolist()) if j % 4 == 0 else None
        requests.append(retrieval_pb2.RetrieveRequest(user_id=str(u), k=k, context=ctx))
    with run_service("retrieval", {**env, "ARTIFACTS_DIR": str(bundle_dir)}, log_dir) as svc, \
            grpc.insecure_channel(svc.address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        first = stub.Retrieve(requests[0], timeout=10)
        if len(first.candidates.item_ids) != k:
            raise BenchError(f"{label}: asked for {k} candidates, got {len(first.candidates.item_ids)}")
        lat = measure(lambda i: stub.Retrieve(requests[i % len(requests)], timeout=5), calls, warmup)
        server = server_stage_means(svc.metrics_port)  # includes warm-up calls
    stats = summary(lat)
    console.print(f"  server-side means (ms, incl. warm-up): {server}")
    return {"case": f"{label}: Retrieve k={k}", "bundle": bundle.version, "items": n_items, **stats,
            "target": verdict(stats, TARGET_P50_MS, TARGET_P99_MS), "server_mean_ms": server}


def main(calls: int = 3000, warmup: int = 300, k: int = 500) -> int:
    if not (BUNDLE / "manifest.json").is_file():
        console.print("[red]no artifacts/current bundle: run `make artifacts` first[/red]")
        return 2
    rows = []
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        settings = feast_settings(redis_url, Path(tmp) / "feast")
        secs = materialise(settings)
        console.print(f"materialised features into a private Redis in {secs:.1f}s")
        env = service_env(settings, BUNDLE, {"RETRIEVAL_LOG_LEVEL": "WARNING"})
        for label, path in bundles():
            console.print(f"retrieval: {label} ({path.relative_to(REPO_ROOT)}) - {warmup} warm-up + {calls} calls")
            rows.append(bench_one(label, path, env, Path(tmp), calls, warmup, k))
    report(NAME, "Retrieve over loopback gRPC (client-side wall clock)", rows,
           {"k": k, "calls": calls, "warmup": warmup,
            "target": {"catalog": "1M items", "p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
