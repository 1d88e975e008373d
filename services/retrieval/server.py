"""``recsys.v1.RetrievalService``: validation, the pipeline, the response (:func:`retrieve`), and
the gRPC servicer around it. ``services.inprocess`` runs the same :func:`retrieve` in the gateway."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import orjson

from common.proto.recsys.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.arms import Arms
from services.retrieval.pipeline import RetrievalPipeline, RetrievalResult, RetrievalTrace, explain
from services.retrieval.settings import RetrievalSettings
from services.validation import (
    InvalidRequest,
    at_most_entries,
    check,
    loaded,
    not_above,
    positive,
    reject_invalid,
    user_id_problem,
)

log = logging.getLogger(__name__)

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


def validate(request: retrieval_pb2.RetrieveRequest, settings: RetrievalSettings) -> str | None:
    """The reason the request is invalid, or None."""
    return (
        user_id_problem(request.user_id)
        or positive("k", request.k)
        or not_above("k", request.k, settings.max_k)
        or at_most_entries("exclude_item_ids", len(request.exclude_item_ids), settings.max_exclude_ids)
        or at_most_entries("context.recent_item_ids", len(request.context.recent_item_ids),
                           settings.max_context_items)
    )


def to_response(result: RetrievalResult) -> retrieval_pb2.RetrieveResponse:
    # Packed parallel arrays from Python lists: one C-level copy per array (~0.1 ms for 500
    # candidates) instead of one Candidate message per item.
    return retrieval_pb2.RetrieveResponse(
        candidates=common_pb2.CandidateList(
            item_ids=result.item_ids.tolist(),
            scores=result.scores.tolist(),
            source_index=result.source_codes.tolist(),
            source_names=result.source_names,
        ),
        model_version=result.model_version,
    )


def build_pipeline(settings: RetrievalSettings, bundle, features, metrics, config=None) -> RetrievalPipeline:
    """The configured pipeline on ``bundle`` (the gRPC service and ``services.inprocess``);
    ``config``: a :class:`PipelineConfig` (an experiment arm's), default RETRIEVAL_PIPELINE_CONFIG."""
    from services.components.config import load_config

    # an invalid config is a PipelineConfigError: the service refuses to serve, in one line
    retrieval = (config if config is not None else load_config(settings.pipeline_config)).retrieval
    retrieval.check_quotas(settings.max_k, "RETRIEVAL_MAX_K")
    return RetrievalPipeline.load_artifacts(bundle, features, metrics, retrieval)


def retrieve(arms: Arms, settings: RetrievalSettings,
             request: retrieval_pb2.RetrieveRequest) -> retrieval_pb2.RetrieveResponse:
    """One Retrieve call whatever carries it; :class:`InvalidRequest` for a bad request. The arm
    the request is pinned to answers when it is loaded, else the current one (the response says)."""
    check(validate(request, settings))
    pipeline = arms.select(request.model_version, request.pipeline)
    # CPU-bound (~1 ms) and without awaits on purpose: a thread hop would cost more than it
    # saves on 1-2 cores; scale out with processes/replicas.
    trace = RetrievalTrace() if request.explain else None  # nothing is collected unless asked
    result = pipeline.retrieve(
        request.user_id,
        request.k,
        recent_item_ids=np.fromiter(request.context.recent_item_ids, np.int64),
        exclude_item_ids=np.fromiter(request.exclude_item_ids, np.int64),
        trace=trace,
    )
    response = to_response(result)
    if trace is not None:
        response.explain_json = orjson.dumps(explain(trace, result)).decode()
    return response


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, settings: RetrievalSettings) -> None:
        self.settings = settings
        self.arms: Arms | None = None  # set once the artifacts are loaded; replaced whole by a hot swap

    async def Retrieve(self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext):
        arms = await loaded(context, self.arms, "retrieval")
        try:
            return retrieve(arms, self.settings, request)
        except InvalidRequest as exc:
            await reject_invalid(context, str(exc))
