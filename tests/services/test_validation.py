"""services.validation and the servicers' ``validate`` built on it, in-process (no server)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.proto.recsys.v1 import common_pb2, ranking_pb2, retrieval_pb2
from services import validation as V
from services.ranking.server import validate as validate_rank
from services.ranking.settings import RankingSettings
from services.retrieval.server import validate as validate_retrieve
from services.retrieval.settings import RetrievalSettings


def test_checks_name_the_field_or_pass():
    assert V.user_id_problem("42") is None
    assert V.user_id_problem("  ") == "user_id is required"
    assert V.user_id_problem("x" * (V.MAX_USER_ID_LEN + 1)) == f"user_id is longer than {V.MAX_USER_ID_LEN} characters"
    assert V.positive("k", 1) is None and V.positive("k", 0) == "k must be positive, got 0"
    assert V.not_above("k", 5, 5) is None and V.not_above("k", 6, 5) == "k must be at most 5, got 6"
    assert V.not_empty("candidates", 1) is None and V.not_empty("candidates", 0) == "candidates must not be empty"
    assert V.at_most_entries("ids", 3, 3) is None and V.at_most_entries("ids", 4, 3) == "at most 3 ids, got 4"
    assert V.same_length("a", 2, "b", 2) is None and V.same_length("a", 1, "b", 2) == "a has 1 entries, b has 2"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"user_id": "1", "k": 10}, None),
        ({"user_id": "", "k": 10}, "user_id is required"),
        ({"user_id": "1", "k": 0}, "k must be positive, got 0"),
        ({"user_id": "1", "k": 1001}, "k must be at most 1000, got 1001"),
        ({"user_id": "1", "k": 10, "exclude_item_ids": list(range(5001))}, "at most 5000 exclude_item_ids, got 5001"),
        ({"user_id": "1", "k": 10, "context": common_pb2.Context(recent_item_ids=list(range(101)))},
         "at most 100 context.recent_item_ids, got 101"),
    ],
)
def test_retrieve_validation(kwargs, reason):
    assert validate_retrieve(retrieval_pb2.RetrieveRequest(**kwargs), RetrievalSettings()) == reason


@pytest.mark.parametrize(
    ("candidates", "reason"),
    [
        (dict(item_ids=[1, 2], scores=[0.5, 0.4]), None),
        (dict(item_ids=[1, 2], scores=[0.5, 0.4], source_index=[0, 1], source_names=["a", "b"]), None),
        (dict(), "candidates must not be empty"),
        (dict(item_ids=[1, 2, 3], scores=[0.5, 0.4]), "candidates.scores has 2 entries, candidates.item_ids has 3"),
        (dict(item_ids=[1, 2], scores=[0.5, 0.4], source_index=[0], source_names=["a"]),
         "candidates.source_index has 1 entries, candidates.item_ids has 2"),
        (dict(item_ids=[1, 2], scores=[0.5, 0.4], source_index=[0, 1], source_names=["a"]),
         "candidates.source_index must be below len(candidates.source_names) = 1"),
    ],
)
def test_rank_validation(candidates, reason):
    request = ranking_pb2.RankRequest(user_id="1", candidates=common_pb2.CandidateList(**candidates))
    assert validate_rank(request, RankingSettings()) == reason


def test_rank_validation_limits_the_candidates():
    ids = list(range(3))
    request = ranking_pb2.RankRequest(user_id="1", candidates=common_pb2.CandidateList(item_ids=ids, scores=[0.0] * 3))
    assert validate_rank(request, RankingSettings(max_candidates=2)) == "at most 2 candidates, got 3"


class _Aborted(Exception):
    pass


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the helpers use: ``abort`` raises."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise _Aborted


def test_reject_invalid_and_loaded():
    ctx = _Context()
    asyncio.run(V.reject_invalid(ctx, None))
    assert ctx.aborted is None
    with pytest.raises(_Aborted):
        asyncio.run(V.reject_invalid(ctx, "k must be positive, got 0"))
    assert ctx.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "k must be positive, got 0")

    pipeline = object()
    assert asyncio.run(V.loaded(ctx, pipeline, "ranking")) is pipeline
    with pytest.raises(_Aborted):
        asyncio.run(V.loaded(ctx, None, "ranking"))
    assert ctx.aborted == (grpc.StatusCode.UNAVAILABLE, "ranking is loading its artifacts")
