"""The scorer: one score per candidate, in input order (it never sorts or drops)."""

from __future__ import annotations

import numpy as np

from common.bundle import load_bundle
from common.grpc_server import ServiceMetrics
from common.settings import FeatureStoreSettings
from services.components.scorers.onnx_ranker import OnnxRanker
from services.features import FeatureFetcher


def test_onnx_ranker_keeps_order_and_length(bundle_path):
    from feature_store.reader import build_reader

    bundle = load_bundle(bundle_path, verify=False)
    scorer = OnnxRanker("onnx_ranker")
    scorer.load_artifacts(bundle)
    metrics = ServiceMetrics("ranking")
    fetcher = FeatureFetcher(build_reader(FeatureStoreSettings(redis_url=None), registry=metrics.registry), metrics)
    items = np.load(bundle.path("item_ids"), allow_pickle=False)[1:201]
    retrieval = np.linspace(1.0, 0.0, items.size).astype(np.float32)
    user = fetcher.user(int(np.load(bundle.path("user_ids"), allow_pickle=False)[3]))
    scores = scorer.score(user, fetcher.items(items), retrieval)
    assert scores.shape == (items.size,) and np.isfinite(scores).all()
    perm = np.random.default_rng(1).permutation(items.size)
    again = scorer.score(user, fetcher.items(items[perm]), retrieval[perm])
    np.testing.assert_allclose(again, scores[perm], rtol=1e-5, atol=1e-6)  # row i is candidate i, whatever the order
    assert not np.all(np.diff(scores) <= 0), "scores came back sorted: the scorer must not sort"
