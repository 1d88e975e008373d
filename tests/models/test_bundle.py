"""The published bundle (`make artifacts`): checksums, contents, quality targets, index recall."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from common.bundle import REQUIRED_FILES, BundleError, load_bundle, metric
from common.model_inputs import ModelInputs

METHODS = ("popularity", "retrieval", "retrieval_ann", "ranked")


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


def test_manifest_checksums_verify_and_contract_keys(bundle):
    m = bundle.manifest
    for key in ("format_version", "version", "created_at", "dataset", "files", "embedding_dim", "genres",
                "user_tower", "ranker_features", "ranker", "index", "metrics", "training", "libraries"):
        assert key in m, key
    for name in (*REQUIRED_FILES, "item_tower", "item_ids", "user_ids", "item_catalog"):
        assert bundle.path(name).is_file(), name
    assert len(m["dataset"]["sha256"]) == 3
    for method in METHODS:
        # recall@k can only grow with k, every method is evaluated on all 943 test users: a metric
        # computed at the wrong k or on a subset breaks one of these
        recalls = [metric(m, f"{method}.recall@{k}") for k in (10, 50, 100)]
        assert 0.0 < recalls[0] <= recalls[1] <= recalls[2] < 1.0, (method, recalls)
        assert m["metrics"][method]["users"] == 943, method
    assert m["training"]["seed"] == m["training"]["config"]["seed"]


def test_tampered_file_is_rejected(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    load_bundle(copy)  # an intact copy verifies
    ranker = copy / bundle.manifest["files"]["ranker"]["path"]
    data = bytearray(ranker.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ranker.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch for ranker"):
        load_bundle(copy)


def test_missing_file_is_rejected(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)  # intact, but for the one file removed below
    rel = bundle.manifest["files"]["popular_items"]["path"]
    (copy / rel).unlink()
    with pytest.raises(BundleError, match=rf"file popular_items \({rel}\) is missing"):
        load_bundle(copy)


def test_manifest_that_is_not_json_is_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text('{"version": "v1", "files": ')
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(tmp_path)


def test_publish_refuses_an_existing_version(bundle, tmp_path):
    from common.bundle import publish

    root = tmp_path / "artifacts"
    first, second = tmp_path / "staging-1", tmp_path / "staging-2"
    shutil.copytree(bundle.root, first)
    shutil.copytree(bundle.root, second)
    publish(first, root, "v1")
    with pytest.raises(BundleError, match="already exists; versions are immutable"):
        publish(second, root, "v1")
    assert (root / "current").resolve() == (root / "v1").resolve()
    assert second.is_dir(), "the refused staging folder is left for the caller"


def test_quality_targets(bundle):
    m = bundle.manifest
    assert metric(m, "ann.recall@100_vs_exact") >= 0.95
    assert metric(m, "ranked.ndcg@10") >= metric(m, "retrieval.ndcg@10")


def test_served_ranker_orders_held_out_candidates_better_than_the_retrieval_score(bundle):
    """Measured here, not read from the manifest: on the test set's candidate lists (written by
    the same pipeline run), the bundle's ONNX ranker puts a user's positives above the negatives
    more often than the retrieval score alone does (mean per-user pairwise AUC)."""
    import onnxruntime as ort

    from common.settings import REPO_ROOT
    from models.ranker import FEATURES

    path = REPO_ROOT / "data" / "processed" / "ranker_test.npz"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make artifacts`")
    d = np.load(path)
    x, positive, group = d["x"], d["y"] > 0, d["group"]
    assert x.shape[1] == len(bundle.ranker_features) and bundle.ranker_features[0]["name"] == "retrieval_score"
    ranked = ort.InferenceSession(str(bundle.path("ranker")), providers=["CPUExecutionProvider"]).run(
        None, {FEATURES: x})[0].ravel()

    def auc(score: np.ndarray) -> float:
        per_user = []
        for g in np.unique(group):
            m = group == g
            pos, neg = score[m][positive[m]], score[m][~positive[m]]
            if pos.size and neg.size:
                pairs = pos[:, None] - neg[None, :]
                per_user.append((pairs > 0).mean() + 0.5 * (pairs == 0).mean())
        return float(np.mean(per_user))

    ranker_auc, retrieval_auc = auc(ranked), auc(x[:, 0])
    assert ranker_auc > retrieval_auc > 0.6, (ranker_auc, retrieval_auc)


def test_ids_catalog_and_popular_items(bundle):
    user_ids = np.load(bundle.path("user_ids"), allow_pickle=False)
    item_ids = np.load(bundle.path("item_ids"), allow_pickle=False)
    assert user_ids[0] == -1 and item_ids[0] == -1
    assert len(np.unique(item_ids)) == len(item_ids)
    popular = json.loads(bundle.path("popular_items").read_text())
    scores = [p["score"] for p in popular]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)
    assert set(p["item_id"] for p in popular) <= set(item_ids[1:].tolist())
    catalog = pd.read_parquet(bundle.path("item_catalog"))
    assert list(catalog.columns) == ["item_id", "title", "year"]
    assert sorted(catalog["item_id"]) == sorted(item_ids[1:].tolist())


def test_index_matches_exact_search_over_item_tower_embeddings(bundle):
    import faiss
    import onnxruntime as ort

    from models.pipeline import build_hnsw

    m = bundle.manifest
    index = faiss.read_index(str(bundle.path("item_index")))
    item_ids = np.load(bundle.path("item_ids"), allow_pickle=False)
    assert index.ntotal == len(item_ids) - 1 == m["index"]["ntotal"]
    # embeddings from the exported item tower (its own inputs, described in the manifest)
    catalog = pd.read_parquet(bundle.path("item_catalog")).set_index("item_id").loc[item_ids[1:]]
    from common.settings import FeatureStoreSettings

    prof = pd.read_parquet(FeatureStoreSettings().offline_dir / "item_profile.parquet").set_index("item_id")
    genres = np.stack(prof.loc[item_ids[1:], "genres"].to_numpy()).astype(np.float32)
    sess = ort.InferenceSession(str(bundle.path("item_tower")), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [i["name"] for i in m["item_tower"]["inputs"]]
    emb = sess.run(None, {"item_idx": np.arange(1, len(item_ids), dtype=np.int64), "item_genres": genres,
                          "item_year": catalog["year"].to_numpy(np.float32)})[0]
    # queries: real user embeddings of cold-ish users from the user tower
    inputs = ModelInputs.from_bundle(bundle)
    users = np.load(bundle.path("user_ids"), allow_pickle=False)[1:200]
    feed = inputs.user_tower_feed_batch(users, [{}] * len(users), [item_ids[1 + (u % 50):4 + (u % 50)] for u in users])
    q = ort.InferenceSession(str(bundle.path("user_tower")), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    exact = np.argsort(-(q @ emb.T), axis=1)[:, :100]
    exact_ids = item_ids[1:][exact]
    _, served = index.search(q, 100)
    assert np.mean([len(set(a) & set(b)) / 100 for a, b in zip(served, exact_ids, strict=True)]) >= 0.99
    _, ann = build_hnsw(emb, item_ids[1:]).search(q, 100)
    assert np.mean([len(set(a) & set(b)) / 100 for a, b in zip(ann, exact_ids, strict=True)]) >= 0.95


def test_item_neighbors_file_and_manifest_section(bundle):
    from common.item_neighbors import ItemNeighbors
    from models.config import BUNDLE_FILES

    m = bundle.manifest
    assert set(BUNDLE_FILES) <= set(m["files"]), "the bundle lacks a file the code writes"
    nb = ItemNeighbors.load(bundle.path("item_neighbors"))
    sec = m["item_to_item"]
    assert sec["file"] == "item_neighbors" and sec["built_from"] == "train+valid interactions"
    assert sec["items_with_neighbors"] == nb.items_with_neighbors
    assert sec["mean_neighbors"] == pytest.approx(nb.mean_neighbors, abs=1e-3)
    assert nb.mean_neighbors <= sec["top_n"] == m["training"]["config"]["item_to_item"]["top_n"]
    item_ids = np.load(bundle.path("item_ids"), allow_pickle=False)
    assert set(nb.item_ids.tolist()) | set(nb.neighbor_ids.tolist()) <= set(item_ids[1:].tolist())
    for r in range(0, len(nb), 97):  # every row best first
        assert np.all(np.diff(nb.scores[nb.indptr[r]:nb.indptr[r + 1]]) <= 0)
    mg = m["metrics"]["merged"]
    for name in ("two_tower", "two_tower+item_to_item"):
        recalls = [mg[name][f"recall@{k}"] for k in (10, 50, 100, 200)]
        assert 0.0 < recalls[0] <= recalls[1] <= recalls[2] <= recalls[3] < 1.0, (name, recalls)
        assert mg[name]["users"] == 943
    # the merge keeps two-tower's first n_candidates - quota, so the recall up to there is identical
    if mg["quota"] <= mg["n_candidates"] - 100:
        assert mg["two_tower+item_to_item"]["recall@100"] == mg["two_tower"]["recall@100"]
    assert m["metrics"]["item_to_item"]["users"] == 943
    assert 0.0 < m["metrics"]["item_to_item"]["users_with_seeds"] <= 1.0
    assert m["metrics"]["ranked_with_item_to_item"]["users"] == 943
