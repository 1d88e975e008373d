"""The ranking service as a real process: same ids sorted by score, features, errors."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest

from common.bundle import load_bundle
from common.proto.recsys.v1 import common_pb2, ranking_pb2


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
    scores = np.linspace(1, 0, len(item_ids)) if scores is None else scores
    cands = common_pb2.CandidateList(
        item_ids=[int(i) for i in item_ids], scores=[float(s) for s in scores],
        source_index=[0] * len(item_ids), source_names=["two_tower"],
    )
    return ranking_pb2.RankRequest(user_id=user_id, candidates=cands)


def test_returns_the_same_ids_sorted_by_score(ranking_stub, bundle, catalog, known_user):
    ids = np.random.default_rng(0).choice(catalog, 300, replace=False)
    resp = ranking_stub.Rank(rank_request(known_user, ids), timeout=5)
    got = list(resp.item_ids)
    assert sorted(got) == sorted(ids.tolist())
    scores = list(resp.scores)
    assert scores == sorted(scores, reverse=True)
    assert resp.model_version == bundle.version


def test_scores_come_from_item_features_not_only_the_retrieval_score(ranking_stub, catalog, known_user):
    ids = catalog[:100]
    resp = ranking_stub.Rank(rank_request(known_user, ids, np.full(ids.size, 0.5)), timeout=5)
    assert len(set(resp.scores)) > 50, "equal retrieval scores gave (nearly) equal ranking scores"


def test_scores_change_when_the_users_online_features_change(ranking_stub, bundle, services_feast, catalog):
    """A new user_aggregates row written to the online store changes the next Rank's scores: the
    service reads the user's features per request and the model uses them."""
    from datetime import UTC, datetime

    import pandas as pd

    from feature_store.store import feature_store

    user = int(np.load(bundle.path("user_ids"), allow_pickle=False)[5])  # no other test ranks this user
    ids = catalog[:100]
    request = rank_request(str(user), ids, np.linspace(0.9, 0.1, ids.size))

    def scores() -> dict[int, float]:
        resp = ranking_stub.Rank(request, timeout=5)
        return dict(zip(resp.item_ids, resp.scores, strict=True))

    store = feature_store(services_feast)
    refs = ["user_aggregates:n_interactions", "user_aggregates:mean_rating", "user_aggregates:genre_affinity"]
    original = store.get_online_features(refs, [{"user_id": user}]).to_dict()

    def write(n: float, mean: float, affinity) -> None:
        now = pd.Timestamp(datetime.now(UTC))
        store.write_to_online_store("user_aggregates", pd.DataFrame({
            "user_id": [user], "n_interactions": np.float32([n]), "mean_rating": np.float32([mean]),
            "genre_affinity": [np.asarray(affinity, np.float32)], "event_timestamp": [now], "created": [now]}))

    before = scores()
    n_genres = len(original["genre_affinity"][0])
    write(2000.0, 1.0, np.eye(n_genres, dtype=np.float32)[0])
    try:
        after = scores()
    finally:
        write(original["n_interactions"][0], original["mean_rating"][0], original["genre_affinity"][0])
    diff = max(abs(before[i] - after[i]) for i in before)
    assert diff > 1e-3, f"the user's features changed, the scores did not (max diff {diff})"
    assert scores() == pytest.approx(before, rel=1e-5), "restoring the row restores the scores"


def test_unknown_user_is_ranked(ranking_stub, catalog):
    ids = catalog[:50]
    resp = ranking_stub.Rank(rank_request("not-a-known-user", ids), timeout=5)
    assert sorted(resp.item_ids) == sorted(ids.tolist())


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
    assert list(resp.item_ids) == local.item_ids.tolist()
    np.testing.assert_allclose(list(resp.scores), local.scores, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        (dict(item_ids=[1, 2, 3], scores=[0.5, 0.4]), "candidates.scores has 2 entries"),
        (dict(item_ids=[1, 2], scores=[0.5, 0.4], source_index=[0], source_names=["two_tower"]),
         "candidates.source_index has 1 entries"),
        (dict(item_ids=[1, 2], scores=[0.5, 0.4], source_index=[0, 1], source_names=["two_tower"]),
         "candidates.source_index must be below"),
    ],
)
def test_inconsistent_candidate_arrays_are_invalid_argument(ranking_stub, candidates, message):
    request = ranking_pb2.RankRequest(user_id="1", candidates=common_pb2.CandidateList(**candidates))
    with pytest.raises(grpc.RpcError) as info:
        ranking_stub.Rank(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_candidates_without_sources_are_ranked(ranking_stub, catalog, known_user):
    ids = catalog[:20].tolist()
    request = ranking_pb2.RankRequest(
        user_id=known_user, candidates=common_pb2.CandidateList(item_ids=ids, scores=[0.5] * len(ids)))
    assert sorted(ranking_stub.Rank(request, timeout=5).item_ids) == sorted(ids)


def test_non_finite_retrieval_score_is_invalid_argument(ranking_stub, catalog):
    with pytest.raises(grpc.RpcError) as info:
        ranking_stub.Rank(rank_request("1", catalog[:3], [0.5, float("nan"), 0.1]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_endpoint(ranking, ranking_stub, bundle, catalog, known_user):
    ranking_stub.Rank(rank_request(known_user, catalog[:20]), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{ranking.metrics_port}/metrics", timeout=5).read().decode()
    assert 'recsys_grpc_server_handling_seconds_count{code="OK",method="Rank",service="ranking"}' in body
    for stage in ("features", "score", "select"):
        assert f'recsys_stage_seconds_count{{service="ranking",stage="{stage}"}}' in body
    assert f'recsys_model_info{{service="ranking",version="{bundle.version}"}} 1.0' in body


def test_health_was_not_serving_while_loading_then_serving(ranking):
    ranking.check_health_transition()


def test_sigterm_turns_health_not_serving_and_exits_cleanly(ranking):
    """Last test of the module: it stops the module's server."""
    ranking.check_sigterm()
