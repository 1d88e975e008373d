"""``python -m services.retrieval``: the retrieval gRPC server (settings from the environment)."""

from __future__ import annotations

import os
import sys
from functools import partial

from common.proto.recsys.v1 import retrieval_pb2_grpc
from services.retrieval.server import SERVICE_NAME, RetrievalServicer, build_pipeline
from services.retrieval.settings import RetrievalSettings
from services.runner import run_service


def main() -> int:
    # Before FAISS (OpenMP) loads: one query per call, so one thread per search in every thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = RetrievalSettings()
    return run_service(
        name="retrieval",
        service_full_name=SERVICE_NAME,
        settings=settings,
        servicer=RetrievalServicer(settings),
        add_servicer=retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
        build_pipeline=partial(build_pipeline, settings),
        reads_items=False,  # no retrieval component reads item rows: no item table (~220 MB at 1M items)
    )


if __name__ == "__main__":
    sys.exit(main())
