"""``python -m services.ranking``: the ranking gRPC server (settings from the environment)."""

from __future__ import annotations

import sys
from functools import partial

from common.proto.recsys.v1 import ranking_pb2_grpc
from services.ranking.server import SERVICE_NAME, RankingServicer, build_pipeline
from services.ranking.settings import RankingSettings
from services.runner import run_service


def main() -> int:
    settings = RankingSettings()
    return run_service(
        name="ranking",
        service_full_name=SERVICE_NAME,
        settings=settings,
        servicer=RankingServicer(settings),
        add_servicer=ranking_pb2_grpc.add_RankingServiceServicer_to_server,
        build_pipeline=partial(build_pipeline, settings),
        keep_previous_s=settings.keep_previous_s,
    )


if __name__ == "__main__":
    sys.exit(main())
