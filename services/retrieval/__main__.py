"""``python -m services.retrieval``: the retrieval gRPC server (settings from the environment)."""

from __future__ import annotations

import os
import sys

from common.proto.recsys.v1 import retrieval_pb2_grpc
from services.components.config import load_config
from services.retrieval.pipeline import RetrievalPipeline
from services.retrieval.server import SERVICE_NAME, RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.runner import run_service


def main() -> int:
    # Before FAISS (OpenMP) loads: one query per call, so one thread per search in every thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = RetrievalSettings()

    def build_pipeline(bundle, fetcher, metrics) -> RetrievalPipeline:
        # an invalid config is a PipelineConfigError: the service refuses to serve, in one line
        config = load_config(settings.pipeline_config).retrieval
        config.check_quotas(settings.max_k, "RETRIEVAL_MAX_K")
        return RetrievalPipeline.load_artifacts(bundle, fetcher, metrics, config)

    return run_service(
        name="retrieval",
        service_full_name=SERVICE_NAME,
        settings=settings,
        servicer=RetrievalServicer(settings),
        add_servicer=retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
        build_pipeline=build_pipeline,
    )


if __name__ == "__main__":
    sys.exit(main())
