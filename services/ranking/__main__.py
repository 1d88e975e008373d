"""``python -m services.ranking``: the ranking gRPC server (settings from the environment)."""

from __future__ import annotations

import sys

from common.proto.recsys.v1 import ranking_pb2_grpc
from services.components.config import load_config
from services.ranking.pipeline import RankingPipeline
from services.ranking.server import SERVICE_NAME, RankingServicer
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
        build_pipeline=lambda bundle, fetcher, metrics: RankingPipeline.load_artifacts(
            bundle, fetcher, metrics, load_config(settings.pipeline_config).ranking),
    )


if __name__ == "__main__":
    sys.exit(main())
