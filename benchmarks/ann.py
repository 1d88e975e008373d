"""ANN benchmark: the served item index of the scale bundle and of the ml-100k bundle.

For each bundle: index type and search parameters (as the retrieval service applies them),
build time (from the manifest, or re-timed here when the manifest has none), memory (bytes of the
serialized index, RSS growth of a fresh process that loads it), single-thread p50/p99 search
latency at k = 500 over >= 1,000 real queries (user tower outputs for ml-100k users, built with
``common.model_inputs.ModelInputs``) and recall@100 against exact inner-product search; plus an
exact (Flat) row per bundle as the baseline. Prints a rich table and writes ``bench-results/ann.json``.

    python -m benchmarks ann [--scale artifacts/scale/current] [--base artifacts/current] [--queries 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from common.bundle import Bundle, BundleError, load_bundle
from common.settings import REPO_ROOT
from models.scale import exact_top, real_queries, recall_vs_exact, rss_delta_on_load, search_latency

DEFAULT_OUT = REPO_ROOT / "bench-results" / "ann.json"


def apply_search_params(index, meta: dict[str, Any]) -> dict[str, int]:
    """The retrieval service's rule (services/retrieval/pipeline.py): ``nprobe`` / ``ef_search``
    from ``manifest["index"]`` when the index has such a parameter."""
    import faiss

    applied = {}
    space = faiss.ParameterSpace()
    for name, value in (("nprobe", meta.get("nprobe")), ("efSearch", meta.get("ef_search", meta.get("efSearch")))):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
            applied[name] = int(value)
        except RuntimeError:
            pass
    return applied


def exact_vectors(bundle: Bundle, index) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [N, D], item ids [N])`` of every indexed item, for exact search."""
    import faiss

    if bundle.has("item_embeddings") and bundle.has("item_catalog"):
        emb = np.load(bundle.path("item_embeddings"), allow_pickle=False)
        ids = pq.read_table(bundle.path("item_catalog"), columns=["item_id"]).column("item_id").to_numpy()
        return np.ascontiguousarray(emb, np.float32), ids.astype(np.int64)
    top = faiss.downcast_index(index)
    if hasattr(top, "id_map"):
        inner = faiss.downcast_index(top.index)
        ids = faiss.vector_to_array(top.id_map).astype(np.int64)
        try:
            return inner.reconstruct_n(0, inner.ntotal), ids
        except RuntimeError as exc:
            raise BundleError(f"cannot read exact vectors back from {type(inner).__name__}: {exc}") from exc
    raise BundleError(f"bundle {bundle.version}: no item_embeddings file and {type(top).__name__} keeps no vectors")


def _rebuild_seconds(description: str, emb: np.ndarray, ids: np.ndarray) -> float | None:
    """Time a rebuild of the index from its factory string (only for bundles that record none)."""
    import faiss

    try:
        index = faiss.index_factory(emb.shape[1], description, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        return None
    t0 = time.perf_counter()
    if not index.is_trained:
        index.train(emb)
    index.add_with_ids(emb, ids)
    return time.perf_counter() - t0


def bench_bundle(path: Path, offline_dir: Path, n_queries: int, k: int, flat_queries: int,
                 threads: int) -> list[dict[str, Any]]:
    import faiss

    bundle = load_bundle(path)
    meta = bundle.manifest.get("index") or {}
    queries, qinfo = real_queries(bundle, offline_dir, n_queries)
    index_path = bundle.path("item_index")
    rss = rss_delta_on_load(index_path)
    index = faiss.read_index(str(index_path))
    params = apply_search_params(index, meta)
    emb, ids = exact_vectors(bundle, index)
    k = min(k, int(index.ntotal))
    at = min(100, k)

    faiss.omp_set_num_threads(threads)
    exact_ids = ids[exact_top(emb, queries, at)]
    _, ann_ids = index.search(queries, k)
    recall = recall_vs_exact(ann_ids, exact_ids, at)
    lat = search_latency(index, queries, k)

    build_s = meta.get("build_seconds")
    build_note = "manifest"
    if build_s is None:
        build_s = _rebuild_seconds(meta.get("type", ""), emb, ids)
        build_note = "re-timed here" if build_s is not None else "unknown"
    name = bundle.manifest.get("dataset", {}).get("name", path.name)
    served = {
        "bundle": name, "version": bundle.version, "path": str(path), "items": int(index.ntotal),
        "index": meta.get("type", type(index).__name__), "params": params, "k": k,
        "build_seconds": None if build_s is None else round(float(build_s), 2), "build_seconds_from": build_note,
        "index_bytes": index_path.stat().st_size, "rss_delta_bytes": rss,
        "p50_ms": round(lat["p50_ms"], 4), "p99_ms": round(lat["p99_ms"], 4), "mean_ms": round(lat["mean_ms"], 4),
        "latency_queries": lat["n"], f"recall@{at}_vs_exact": round(recall, 4), "queries": qinfo,
        "manifest_recall@100_vs_exact": (bundle.manifest.get("metrics", {}).get("ann") or {}).get("recall@100_vs_exact"),
    }
    flat = faiss.IndexFlatIP(emb.shape[1])
    t0 = time.perf_counter()
    flat.add(emb)
    flat_build = time.perf_counter() - t0
    flat_lat = search_latency(flat, queries[:flat_queries], k, warm_up=5)
    exact = {
        "bundle": name, "version": bundle.version, "path": str(path), "items": int(flat.ntotal),
        "index": "Flat (exact baseline)", "params": {}, "k": k, "build_seconds": round(flat_build, 2),
        "build_seconds_from": "timed here", "index_bytes": int(faiss.serialize_index(flat).nbytes),
        "rss_delta_bytes": None, "p50_ms": round(flat_lat["p50_ms"], 4), "p99_ms": round(flat_lat["p99_ms"], 4),
        "mean_ms": round(flat_lat["mean_ms"], 4), "latency_queries": flat_lat["n"], f"recall@{at}_vs_exact": 1.0,
        "queries": qinfo,
    }
    del flat, index
    return [served, exact]


def _mb(b: int | None) -> str:
    return "—" if b is None else f"{b / 2**20:,.1f} MB"


def render(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ANN search: k = 500, 1 thread, real ml-100k user queries")
    for col, just in (("bundle", "left"), ("items", "right"), ("index", "left"), ("params", "left"),
                      ("build", "right"), ("serialized", "right"), ("RSS Δ", "right"), ("p50 ms", "right"),
                      ("p99 ms", "right"), ("recall@100 vs exact", "right"), ("queries", "right")):
        table.add_column(col, justify=just)
    for r in results:
        recall = next(v for key, v in r.items() if key.startswith("recall@") and key.endswith("_vs_exact"))
        table.add_row(
            r.get("label", r["bundle"]), f"{r['items']:,}", r["index"], ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "—",
            "—" if r["build_seconds"] is None else f"{r['build_seconds']:.1f} s", _mb(r["index_bytes"]),
            _mb(r["rss_delta_bytes"]), f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{recall:.4f}",
            str(r["latency_queries"]),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a log file or CI: do not squeeze the table into 80 columns
    console.print(table)


def render_sweep(manifest: dict[str, Any]) -> None:
    """The build-time tuning sweep recorded in the scale bundle's manifest."""
    from rich.console import Console
    from rich.table import Table

    meta = manifest.get("index") or {}
    rows = meta.get("sweep") or []
    if not rows:
        return
    key = next((k for k in rows[0] if k.startswith("recall@")), "recall@100")
    chosen = (meta.get("type"), meta.get("nprobe", meta.get("ef_search")))
    table = Table(title=f"tuning sweep of {manifest['version']} ({manifest['dataset'].get('items', '?'):,} items, "
                        f"k = {meta.get('search', {}).get('k', '?')}, 1 thread; * = served)")
    for col in ("index", "build", "bytes", "param", "value", key + " vs exact", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("index", "param") else "right")
    cands = meta.get("candidates", {})
    for r in rows:
        c = cands.get(r["index"], {})
        mark = "*" if (r["description"], r["value"]) == chosen else ""
        table.add_row(f"{mark}{r['description']}", f"{c.get('build_seconds', float('nan')):.1f} s",
                      _mb(c.get("bytes")), r["param"], str(r["value"]), f"{r[key]:.4f}", f"{r['p50_ms']:.3f}",
                      f"{r['p99_ms']:.3f}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks ann", description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=Path, default=REPO_ROOT / "artifacts" / "scale" / "current",
                   help="scale bundle (make artifacts-scale)")
    p.add_argument("--base", type=Path, default=REPO_ROOT / "artifacts" / "current", help="ml-100k bundle")
    p.add_argument("--offline-dir", type=Path, default=REPO_ROOT / "data" / "features",
                   help="Feast offline parquet of the ml-100k users (query features)")
    p.add_argument("--queries", type=int, default=2000, help="real queries (>= 1000 for the latency figures)")
    p.add_argument("--flat-queries", type=int, default=300, help="queries timed for the exact baseline")
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--threads", type=int, default=2, help="threads for the batch recall search (latency: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args([] if argv is None else list(argv))  # None: defaults (the `python -m benchmarks` runner)

    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for label, path in (("scale", a.scale), ("ml-100k", a.base)):
        try:
            rows = bench_bundle(path, a.offline_dir, a.queries, a.k, a.flat_queries, a.threads)
        except BundleError as exc:
            skipped[label] = str(exc)
            print(f"skipping the {label} bundle: {exc}")
            continue
        for r in rows:
            r["label"] = label
        results += rows
    if not results:
        raise SystemExit("no bundle to benchmark (run `make artifacts` and `make artifacts-scale`)")
    render(results)
    scale_manifest = None
    if "scale" not in skipped:
        scale_manifest = load_bundle(a.scale, verify=False).manifest
        render_sweep(scale_manifest)
    report = {
        "benchmark": "ann", "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "k": a.k, "search_threads": 1, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results, "skipped": skipped,
        "scale_sweep": None if scale_manifest is None else scale_manifest["index"].get("sweep"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")
    return report


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
