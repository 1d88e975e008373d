"""The retrieval service as a real process: candidates, exclusion, cold start, errors, metrics."""

from __future__ import annotations

import json
import urllib.request

import grpc
import numpy as np
import pytest

from common.bundle import load_bundle
from common.proto.recsys.v1 import common_pb2, retrieval_pb2

Req = retrieval_pb2.RetrieveRequest


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path, verify=False)


@pytest.fixture(scope="module")
def popular_ids(bundle) -> list[int]:
    return [r["item_id"] for r in json.loads(bundle.path("popular_items").read_text())]


@pytest.fixture(scope="module")
def item_ids(bundle) -> set[int]:
    return set(np.load(bundle.path("item_ids"), allow_pickle=False)[1:].tolist())


@pytest.fixture(scope="module")
def known_user(bundle) -> str:
    return str(int(np.load(bundle.path("user_ids"), allow_pickle=False)[1]))


def ids_of(resp) -> list[int]:
    return list(resp.candidates.item_ids)


def sources_of(resp) -> list[str]:
    names = resp.candidates.source_names
    return [names[i] for i in resp.candidates.source_index]


def test_known_user_gets_k_distinct_catalog_items(retrieval_stub, bundle, item_ids, known_user):
    resp = retrieval_stub.Retrieve(Req(user_id=known_user, k=100), timeout=5)
    ids = ids_of(resp)
    assert len(ids) == 100 and len(set(ids)) == 100
    assert set(ids) <= item_ids
    assert resp.model_version == bundle.version
    assert sources_of(resp)[0] == "two_tower"
    assert len(resp.candidates.scores) == len(resp.candidates.source_index) == 100
    tt = [s for s, src in zip(resp.candidates.scores, sources_of(resp), strict=True) if src == "two_tower"]
    assert tt == sorted(tt, reverse=True)  # nearest first


def test_exclusion_never_returns_excluded_ids_and_still_k(retrieval_stub, known_user):
    first = ids_of(retrieval_stub.Retrieve(Req(user_id=known_user, k=50), timeout=5))
    excluded = first[:40]
    resp = retrieval_stub.Retrieve(Req(user_id=known_user, k=50, exclude_item_ids=excluded), timeout=5)
    ids = ids_of(resp)
    assert len(ids) == 50 and len(set(ids)) == 50
    assert not set(ids) & set(excluded)
    assert set(first[40:]) <= set(ids)  # the survivors are still there


def test_cold_start_unknown_user_gets_popular_items(retrieval_stub, popular_ids):
    for user in ("someone-new", "987654321"):
        resp = retrieval_stub.Retrieve(Req(user_id=user, k=20), timeout=5)
        assert ids_of(resp) == popular_ids[:20]
        assert set(sources_of(resp)) == {"popular"}


def test_cold_start_respects_exclusion(retrieval_stub, popular_ids):
    resp = retrieval_stub.Retrieve(Req(user_id="someone-new", k=20, exclude_item_ids=popular_ids[:5]), timeout=5)
    assert ids_of(resp) == popular_ids[5:25]


def test_session_context_personalises_an_anonymous_user(retrieval_stub, popular_ids, item_ids):
    """Recent items in the request make the two-tower source work without any stored profile."""
    results = []
    for recent in (popular_ids[:3], sorted(item_ids)[-3:]):
        ctx = common_pb2.Context(recent_item_ids=recent)
        resp = retrieval_stub.Retrieve(Req(user_id="anonymous-session", k=30, context=ctx), timeout=5)
        ids = ids_of(resp)
        assert len(ids) == 30 and len(set(ids)) == 30
        assert sources_of(resp)[0] == "two_tower"
        assert not set(ids) & set(recent)  # seen items are not recommended again
        results.append(ids)
    assert results[0] != results[1]


def test_items_the_user_has_seen_are_never_returned(retrieval_stub, services_feast):
    """``user_seen`` (every rated item, materialised) is excluded: the offline evaluation skips
    a user's known items too, so serving and the measured metrics agree."""
    import pandas as pd

    seen = pd.read_parquet(services_feast.offline_dir / "user_seen.parquet").set_index("user_id")["seen_item_ids"]
    heavy = seen.map(len).sort_values()
    for user in (int(heavy.index[0]), int(heavy.index[len(heavy) // 2]), int(heavy.index[-1])):
        mine = set(seen.at[user].tolist())
        ids = ids_of(retrieval_stub.Retrieve(Req(user_id=str(user), k=300), timeout=5))
        assert len(ids) == 300 and len(set(ids)) == 300
        assert not set(ids) & mine, f"user {user} got {len(set(ids) & mine)} of their {len(mine)} seen items"


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"user_id": "", "k": 10}, "user_id is required"),
        ({"user_id": "   ", "k": 10}, "user_id is required"),
        ({"user_id": "1", "k": 0}, "k must be positive"),
        ({"user_id": "1", "k": -3}, "k must be positive"),
        ({"user_id": "1", "k": 1001}, "k must be at most 1000"),
        ({"user_id": "1", "k": 10, "exclude_item_ids": list(range(5001))}, "exclude_item_ids"),
        ({"user_id": "x" * 300, "k": 10}, "user_id is longer"),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_message(retrieval_stub, request_kwargs, message):
    with pytest.raises(grpc.RpcError) as info:
        retrieval_stub.Retrieve(Req(**request_kwargs), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_metrics_endpoint(retrieval, retrieval_stub, bundle, known_user):
    retrieval_stub.Retrieve(Req(user_id=known_user, k=10), timeout=5)
    retrieval_stub.Retrieve(Req(user_id="987654321", k=10), timeout=5)  # no row online: defaults
    with pytest.raises(grpc.RpcError):
        retrieval_stub.Retrieve(Req(user_id="", k=10), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{retrieval.metrics_port}/metrics", timeout=5).read().decode()
    assert 'recsys_grpc_server_handling_seconds_count{code="OK",method="Retrieve",service="retrieval"}' in body
    assert 'code="INVALID_ARGUMENT",method="Retrieve"' in body
    for stage in ("features", "source:two_tower", "source:popular", "filters", "merge"):
        assert f'recsys_stage_seconds_count{{service="retrieval",stage="{stage}"}}' in body
    assert 'recsys_candidates_total{service="retrieval",source="two_tower"}' in body
    assert f'recsys_model_info{{service="retrieval",version="{bundle.version}"}} 1.0' in body
    assert 'recsys_missing_features_total{feature_view="user_profile"}' in body


def test_reflection_lists_the_services(retrieval):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(retrieval.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"recsys.v1.RetrievalService", "grpc.health.v1.Health"} <= services


def test_in_process_pipeline_returns_what_the_server_returns(retrieval_stub, bundle, services_feast, known_user):
    """The pipeline object runs in-process exactly as behind gRPC."""
    from common.grpc_server import ServiceMetrics
    from feature_store.reader import build_reader
    from services.features import FeatureFetcher
    from services.retrieval.pipeline import RetrievalPipeline

    metrics = ServiceMetrics("retrieval")
    pipeline = RetrievalPipeline.load_artifacts(bundle, FeatureFetcher(build_reader(services_feast, registry=metrics.registry, enforce_ttl=services_feast.enforce_ttl), metrics), metrics)
    local = pipeline.retrieve(known_user, 50, exclude_item_ids=np.array([1, 2, 3]))
    remote = retrieval_stub.Retrieve(Req(user_id=known_user, k=50, exclude_item_ids=[1, 2, 3]), timeout=5)
    assert local.item_ids.tolist() == ids_of(remote)
    assert local.sources() == sources_of(remote)
    np.testing.assert_allclose(local.scores, list(remote.candidates.scores), rtol=1e-5, atol=1e-6)


def test_health_was_not_serving_while_loading_then_serving(retrieval):
    retrieval.check_health_transition()


def test_sigterm_turns_health_not_serving_and_exits_cleanly(retrieval):
    """Last test of the module: it stops the module's server."""
    retrieval.check_sigterm()
