"""``recsys.v1.RankingService`` over gRPC: validation, the pipeline, the response."""

from __future__ import annotations

import grpc
import numpy as np

from common.proto.recsys.v1 import ranking_pb2, ranking_pb2_grpc
from services.ranking.pipeline import RankingPipeline, RankResult
from services.ranking.settings import RankingSettings

SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
MAX_USER_ID_LEN = 256


def validate(request: ranking_pb2.RankRequest, settings: RankingSettings) -> str | None:
    """The reason the request is invalid, or None (candidate scores are checked once decoded)."""
    if not request.user_id.strip():
        return "user_id is required"
    if len(request.user_id) > MAX_USER_ID_LEN:
        return f"user_id is longer than {MAX_USER_ID_LEN} characters"
    cands = request.candidates
    n = len(cands.item_ids)
    if n == 0:
        return "candidates must not be empty"
    if n > settings.max_candidates:
        return f"at most {settings.max_candidates} candidates, got {n}"
    if len(cands.scores) != n:
        return f"candidates.scores has {len(cands.scores)} entries, candidates.item_ids has {n}"
    if cands.source_index:
        if len(cands.source_index) != n:
            return f"candidates.source_index has {len(cands.source_index)} entries, candidates.item_ids has {n}"
        if max(cands.source_index) >= len(cands.source_names):
            return f"candidates.source_index must be below len(candidates.source_names) = {len(cands.source_names)}"
    return None


def to_response(result: RankResult) -> ranking_pb2.RankResponse:
    # Packed repeated fields from Python lists: one C-level copy per array, ~0.1 ms for 500 items
    # (passing the numpy arrays themselves is ~5x slower: upb converts numpy scalars one by one).
    return ranking_pb2.RankResponse(
        item_ids=result.item_ids.tolist(), scores=result.scores.tolist(), model_version=result.model_version,
    )


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, settings: RankingSettings) -> None:
        self.settings = settings
        self.pipeline: RankingPipeline | None = None  # set once the artifacts are loaded

    async def Rank(self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext):
        pipeline = self.pipeline
        if pipeline is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ranking is loading its artifacts")
        if (reason := validate(request, self.settings)) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        cands = request.candidates
        item_ids = np.array(cands.item_ids, np.int64)
        scores = np.array(cands.scores, np.float32)
        if not np.isfinite(scores).all():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "candidate scores must be finite numbers")
        # CPU-bound (~1-2 ms) without awaits on purpose; scale out with processes/replicas.
        return to_response(pipeline.rank(request.user_id, item_ids, scores))
