"""``python -m services.ranking``: the ranking gRPC server (settings from the environment)."""

from __future__ import annotations

import sys
from functools import partial

from common.proto.recsys.v1 import ranking_pb2_grpc
from services.ranking.server import SERVICE_NAME, RankingServicer, build_pipeline
from services.ranking.settings import RankingSettings
from services.ranking.shadow import ShadowScorer
from services.runner import run_service


def main() -> int:
    settings = RankingSettings()
    servicer = RankingServicer(settings)

    def start_shadow(metrics) -> None:  # once loaded: its metrics go in the service's registry
        servicer.shadow = ShadowScorer(service="ranking", registry=metrics.registry,
                                       queue_size=settings.shadow_queue_size, sample_rate=settings.shadow_sample_rate)
        servicer.shadow.start()

    try:
        return run_service(
            name="ranking",
            service_full_name=SERVICE_NAME,
            settings=settings,
            servicer=servicer,
            add_servicer=ranking_pb2_grpc.add_RankingServiceServicer_to_server,
            build_pipeline=partial(build_pipeline, settings),
            wants_shadow=True,
            on_loaded=start_shadow,
        )
    finally:
        if servicer.shadow is not None:
            servicer.shadow.close()


if __name__ == "__main__":
    sys.exit(main())
