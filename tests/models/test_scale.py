"""The scale catalog generator on a small N: a loadable bundle with a tuned ANN index.

Real parts only: the published ml-100k bundle (its item and user towers through onnxruntime),
the real Feast offline parquet, real FAISS indexes; recall is re-measured here independently of
the generator's own sweep, on real query embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from common.bundle import REQUIRED_FILES, load_bundle, metric
from common.settings import FeatureStoreSettings
from models import scale

N = 20_000


@pytest.fixture(scope="module")
def offline_dir():
    path = FeatureStoreSettings().offline_dir
    if not (path / "item_profile.parquet").is_file():
        pytest.fail(f"no Feast offline parquet in {path}: run `make artifacts`")
    return path


@pytest.fixture(scope="module")
def built(bundle_path, offline_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    cfg = scale.ScaleConfig(
        items=N, candidates=("ivf_flat", "ivf_pq_refine", "hnsw"), n_queries=1_000, latency_queries=100,
        nprobe_values=(1, 4, 8, 16, 32, 64, 128), ef_values=(32, 64, 128, 256),
    )
    target = scale.build_bundle(cfg, source=bundle_path, offline_dir=offline_dir, out_root=root / "artifacts",
                                features_out=root / "features", log_fn=lambda _m: None)
    return target, root


def test_bundle_loads_and_mirrors_the_source(built, bundle_path):
    target, root = built
    b = load_bundle(root / "artifacts" / "current")  # verifies every sha256
    assert b.root == target.resolve()
    src = load_bundle(bundle_path)
    assert set(src.manifest) <= set(b.manifest)
    assert set(REQUIRED_FILES) | {"item_ids", "item_catalog", "user_tower"} <= set(b.manifest["files"])
    assert b.embedding_dim == src.embedding_dim
    assert b.ranker_features == src.ranker_features
    for name in ("user_tower", "ranker", "popular_items", "item_ids", "user_ids"):
        assert b.manifest["files"][name]["sha256"] == src.manifest["files"][name]["sha256"], name
    assert b.manifest["dataset"]["items"] == N


def test_catalog_ids_unique_and_real_ids_first(built, bundle_path, offline_dir):
    target, _ = built
    b = load_bundle(target)
    ids = pq.read_table(b.path("item_catalog")).column("item_id").to_numpy()
    assert ids.size == N
    assert np.unique(ids).size == N
    real = np.sort(pd.read_parquet(offline_dir / "item_profile.parquet")["item_id"].unique())
    assert real.size == 1682
    np.testing.assert_array_equal(ids[: real.size], real)
    assert ids[real.size:].min() > real.max()
    # the model vocabulary is untouched: real users' histories map to the same tower rows
    src = load_bundle(bundle_path)
    np.testing.assert_array_equal(np.load(b.path("item_ids")), np.load(src.path("item_ids")))


def test_embeddings_real_items_match_the_source_index_and_no_ties(built, bundle_path):
    import faiss

    target, _ = built
    b = load_bundle(target)
    emb = np.load(b.path("item_embeddings"), allow_pickle=False)
    assert emb.shape == (N, b.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    rows = np.unique(emb.round(6), axis=0)
    assert rows.shape[0] == N, "exact ties in the synthetic catalog make recall vs exact meaningless"
    assert b.manifest["dataset"]["embedding_duplicates"] == 0
    # the source index (exact, ids = item ids) holds the tower's embeddings of the real items
    src = load_bundle(bundle_path)
    idx = faiss.read_index(str(src.path("item_index")))
    top = faiss.downcast_index(idx)
    if not hasattr(top, "id_map"):
        pytest.skip(f"source index {type(top).__name__} has no id map to read vectors back")
    src_ids = faiss.vector_to_array(top.id_map)
    src_emb = faiss.downcast_index(top.index).reconstruct_n(0, top.ntotal)
    cat_ids = pq.read_table(b.path("item_catalog")).column("item_id").to_numpy()
    pos = {int(i): r for r, i in enumerate(cat_ids[:1682])}
    mine = emb[[pos[int(i)] for i in src_ids]]
    np.testing.assert_allclose(mine, src_emb, atol=2e-5)


def test_index_recall_vs_exact_on_real_queries(built, offline_dir):
    import faiss

    from benchmarks.ann import apply_search_params

    target, _ = built
    b = load_bundle(target)
    meta = b.manifest["index"]
    assert meta["target"]["met"] is True
    assert metric(b.manifest, "ann.recall@100_vs_exact") >= 0.95
    assert {r["index"] for r in meta["sweep"]} == {"ivf_flat", "ivf_pq_refine", "hnsw"}
    # independently: read the file as the retrieval service does, search real queries
    index = faiss.read_index(str(b.path("item_index")))
    applied = apply_search_params(index, meta)
    assert applied, "the manifest must carry the tuned nprobe / ef_search"
    assert index.ntotal == N
    queries, info = scale.real_queries(b, offline_dir, 1_000, seed=7)
    assert info["n"] == 1_000 and info["users"] == 943
    emb = np.load(b.path("item_embeddings"), allow_pickle=False)
    ids = pq.read_table(b.path("item_catalog")).column("item_id").to_numpy()
    exact = ids[scale.exact_top(emb, queries, 100)]
    _, ann = index.search(queries, 500)
    assert set(np.unique(ann[ann >= 0])) <= set(ids.tolist())
    assert scale.recall_vs_exact(ann, exact, 100) >= 0.95
    # a wrong setting must show: nprobe 1 / efSearch 1 is far below the target
    faiss.ParameterSpace().set_index_parameter(index, "nprobe" if "nprobe" in applied else "efSearch", 1)
    _, bad = index.search(queries, 500)
    assert scale.recall_vs_exact(bad, exact, 100) < 0.95


def test_offline_features_cover_every_item(built, offline_dir):
    _, root = built
    for view in ("item_profile", "item_aggregates"):
        out = pq.read_table(root / "features" / f"{view}.parquet")
        assert out.schema == pq.read_schema(offline_dir / f"{view}.parquet")
        assert pd.Series(out.column("item_id").to_numpy()).nunique() == N
    prof = pd.read_parquet(root / "features" / "item_profile.parquet")
    syn = prof[prof["item_id"] > 1682]
    real = pd.read_parquet(offline_dir / "item_profile.parquet")
    assert set(syn["year"].unique()) <= set(real["year"].unique())
    real_sets = {tuple(g) for g in real["genres"]}
    assert {tuple(g) for g in syn["genres"].head(500)} <= real_sets
    for view in ("user_profile", "user_aggregates", "user_context"):
        assert (root / "features" / f"{view}.parquet").is_file()


def test_synthesize_unit():
    rng = np.random.default_rng(0)
    r = 50
    real = scale.Catalog(
        item_ids=np.arange(1, r + 1) * 3, title=np.array([f"t{i}" for i in range(r)], dtype=object),
        year=rng.integers(1950, 1999, r).astype(np.float32), genres=(rng.random((r, 5)) < 0.3).astype(np.float32),
        popularity=rng.random(r).astype(np.float32), n_ratings=rng.integers(0, 100, r).astype(np.float32),
        mean_rating=rng.uniform(1, 5, r).astype(np.float32), parent_a=np.full(r, -1), parent_b=np.full(r, -1),
        mix=np.zeros(r, np.float32),
    )
    cat = scale.synthesize(real, 1_000, rng, mix_max=0.5)
    assert len(cat) == 1_000 and np.unique(cat.item_ids).size == 1_000
    np.testing.assert_array_equal(cat.item_ids[:r], real.item_ids)
    syn = slice(r, None)
    assert np.all(cat.parent_a[syn] != cat.parent_b[syn])
    assert np.all((cat.mix[syn] >= 0) & (cat.mix[syn] < 0.5)) and np.all(cat.mix[:r] == 0)
    assert np.all(cat.popularity <= 1.0)
    with pytest.raises(ValueError, match="smaller than the real catalog"):
        scale.synthesize(real, r - 1, rng)


def test_choose_picks_cheapest_reaching_target():
    rows = [{"index": "a", "recall@100": 0.97, "p50_ms": 0.5, "p99_ms": 1.0},
            {"index": "b", "recall@100": 0.951, "p50_ms": 0.3, "p99_ms": 0.9},
            {"index": "c", "recall@100": 0.90, "p50_ms": 0.1, "p99_ms": 0.2}]
    best, met = scale.choose(rows, 0.95)
    assert met and best["index"] == "b"
    best, met = scale.choose(rows[2:], 0.95)
    assert not met and best["index"] == "c"
    json.dumps(rows)


def test_retrieval_service_pipeline_serves_the_scale_bundle(built, offline_dir):
    """The retrieval service's own pipeline loads the scale bundle unchanged and returns
    two-tower candidates from the whole synthetic catalog (k = 500)."""
    from common.grpc_server import ServiceMetrics
    from feature_store.reader import UserFeatures
    from services.features import FeatureFetcher
    from services.retrieval.pipeline import RetrievalPipeline

    class OfflineUserReader:
        """A user's latest offline feature rows (real values; items are not read here)."""

        def __init__(self, directory):
            self.rows = {}
            for view in ("user_profile", "user_aggregates", "user_context"):
                df = pd.read_parquet(directory / f"{view}.parquet").sort_values("event_timestamp")
                for rec in df.drop_duplicates("user_id", keep="last").to_dict("records"):
                    vals = self.rows.setdefault(int(rec["user_id"]), {})
                    vals.update({f"{view}:{k}": v for k, v in rec.items()
                                 if k not in ("user_id", "event_timestamp", "created")})

        def user_features(self, user_id):
            return UserFeatures(user_id, dict(self.rows.get(user_id, {})), set())

        def item_features(self, item_ids):  # pragma: no cover - retrieval does not read items
            raise AssertionError("retrieval read item features")

    target, _ = built
    b = load_bundle(target)
    metrics = ServiceMetrics("retrieval")
    pipeline = RetrievalPipeline.load_artifacts(b, FeatureFetcher(OfflineUserReader(offline_dir), metrics), metrics)
    assert pipeline.sources[0].name == "two_tower" and pipeline.sources[0].ntotal == N
    ids = pq.read_table(b.path("item_catalog")).column("item_id").to_numpy()
    res = pipeline.retrieve("1", 500)
    sources = np.array(res.sources())
    assert res.item_ids.size == 500 and set(sources) == {"two_tower", "item_to_item"}
    assert np.unique(res.item_ids).size == 500 and np.isin(res.item_ids, ids).all()
    assert (res.item_ids > 1682).any(), "synthetic items must be retrievable"
    assert np.all(np.diff(res.scores[sources == "two_tower"]) <= 1e-6)
    # item_to_item's candidates carry the two-tower score too: the IVF index reconstructs by id
    i2i = res.item_ids[sources == "item_to_item"]
    q = pipeline.query("1", 500)
    np.testing.assert_allclose(res.scores[sources == "item_to_item"], pipeline.sources[0].score_items(q, i2i),
                               rtol=1e-5)
    cold = pipeline.retrieve("not-a-user", 50)
    assert set(cold.sources()) == {"popular"}
