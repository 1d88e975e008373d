"""The item_to_item source in the retrieval pipeline, on the real bundle."""

from __future__ import annotations

import numpy as np
import pytest

from common.bundle import load_bundle
from common.grpc_server import ServiceMetrics
from common.settings import FeatureStoreSettings
from services.features import FeatureFetcher


@pytest.fixture(scope="module")
def pipeline(bundle_path):
    from feature_store.reader import build_reader
    from services.retrieval.pipeline import RetrievalPipeline

    bundle = load_bundle(bundle_path, verify=False)
    metrics = ServiceMetrics("retrieval")
    reader = build_reader(FeatureStoreSettings(redis_url=None), registry=metrics.registry)
    return RetrievalPipeline.load_artifacts(bundle, FeatureFetcher(reader, metrics), metrics)


def test_neighbours_of_recent_items_join_the_candidates_with_two_tower_scores(pipeline):
    from services.retrieval.pipeline import RetrievalTrace

    trace = RetrievalTrace()
    res = pipeline.retrieve("1", 300, trace=trace)
    sources = np.array(res.sources())
    assert (sources == "item_to_item").sum() == 45 and (sources == "two_tower").sum() == 255  # share 0.15 of 300
    assert len(set(res.item_ids.tolist())) == 300
    tt, i2i = pipeline.sources[0], pipeline.sources[1]
    assert i2i.name == "item_to_item"
    # the item_to_item candidates carry the two-tower inner product (score_with), not their weights
    mine = res.item_ids[sources == "item_to_item"]
    q = pipeline.query("1", 300)
    np.testing.assert_allclose(res.scores[sources == "item_to_item"], tt.score_items(q, mine), rtol=1e-5)
    fetched = trace.sources["item_to_item"]
    assert not np.allclose(fetched.scores[: mine.size], res.scores[sources == "item_to_item"])
    # none of them is an item the user has seen, nor a recent one
    assert not np.isin(res.item_ids, q.seen).any() and not np.isin(res.item_ids, q.recent).any()


def test_no_recent_items_no_item_to_item(pipeline):
    res = pipeline.retrieve("not-a-user", 50)
    assert set(res.sources()) == {"popular"}
    with_context = pipeline.retrieve("not-a-user", 50, recent_item_ids=np.array([50, 181, 172]))
    assert "popular" not in with_context.sources()
