"""The ranking service as a real process: same ids sorted by score, features, errors."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest

from common.bundle import load_bundle
from common.proto.recsys.v1 import ranking_pb2


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path, verify=False)


@pytest.fixture(scope="module")
def catalog(bundle) -> np.ndarray:
    return np.load(bundle.path("item_ids"), allow_pickle=False)[1:]


@pytest.fixture(scope="module")
def known_user(bundle) -> str:
    return str(int(np.load(bundle.path("user_ids"), allow_pickle=False)[1]))


def rank_request(user_id: str, item_ids, scores=None) -> ranking_pb2.RankRequest:
    req = ranking_pb2.RankRequest(user_id=user_id)
    scores = np.linspace(1, 0, len(item_ids)) if scores is None else scores
    for i, s in zip(item_ids, scores, strict=True):
        req.candidates.add(item_id=int(i), score=float(s), source="two_tower")
    return req


def test_returns_the_same_ids_sorted_by_score(ranking_stub, bundle, catalog, known_user):
    ids = np.random.default_rng(0).choice(catalog, 300, replace=False)
    resp = ranking_stub.Rank(rank_request(known_user, ids), timeout=5)
    got = [it.item_id for it in resp.items]
    assert sorted(got) == sorted(ids.tolist())
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1  # a real model, not a constant
    assert resp.model_version == bundle.version


def test_unknown_user_is_ranked(ranking_stub, catalog):
    ids = catalog[:50]
    resp = ranking_stub.Rank(rank_request("not-a-known-user", ids), timeout=5)
    assert sorted(it.item_id for it in resp.items) == sorted(ids.tolist())


def test_scores_match_the_in_process_pipeline(ranking_stub, bundle, services_feast, catalog, known_user):
    from common.grpc_server import ServiceMetrics
    from feature_store.reader import build_reader
    from services.features import FeatureFetcher
    from services.ranking.pipeline import RankingPipeline

    metrics = ServiceMetrics("ranking")
    pipeline = RankingPipeline.load_artifacts(bundle, FeatureFetcher(build_reader(services_feast, registry=metrics.registry, enforce_ttl=services_feast.enforce_ttl), metrics), metrics)
    ids = catalog[10:110]
    retrieval_scores = np.linspace(0.9, 0.1, ids.size).astype(np.float32)
    local = pipeline.rank(known_user, ids, retrieval_scores)
    resp = ranking_stub.Rank(rank_request(known_user, ids, retrieval_scores), timeout=5)
    assert [it.item_id for it in resp.items] == local.item_ids.tolist()
    np.testing.assert_allclose([it.score for it in resp.items], local.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("user_id", "n", "message"),
    [
        ("", 10, "user_id is required"),
        ("1", 0, "candidates must not be empty"),
        ("1", 2001, "at most 2000 candidates"),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_message(ranking_stub, user_id, n, message):
    with pytest.raises(grpc.RpcError) as info:
        ranking_stub.Rank(rank_request(user_id, list(range(1, n + 1))), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_non_finite_retrieval_score_is_invalid_argument(ranking_stub, catalog):
    with pytest.raises(grpc.RpcError) as info:
        ranking_stub.Rank(rank_request("1", catalog[:3], [0.5, float("nan"), 0.1]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_endpoint(ranking, ranking_stub, bundle, catalog, known_user):
    ranking_stub.Rank(rank_request(known_user, catalog[:20]), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{ranking.metrics_port}/metrics", timeout=5).read().decode()
    assert 'recsys_grpc_server_handling_seconds_count{code="OK",method="Rank",service="ranking"}' in body
    for stage in ("features", "assemble", "score"):
        assert f'recsys_stage_seconds_count{{service="ranking",stage="{stage}"}}' in body
    assert f'recsys_model_info{{service="ranking",version="{bundle.version}"}} 1.0' in body


def test_health_was_not_serving_while_loading_then_serving(ranking):
    ranking.check_health_transition()


def test_sigterm_turns_health_not_serving_and_exits_cleanly(ranking):
    """Last test of the module: it stops the module's server."""
    ranking.check_sigterm()
