"""``python -m services.ranking``: the ranking gRPC server (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from common.bundle import load_bundle
from common.grpc_server import ServerSpec, ServiceMetrics, configure_logging, serve
from common.proto.recsys.v1 import ranking_pb2_grpc
from common.settings import ArtifactSettings, FeatureStoreSettings
from common.telemetry import TelemetrySettings, grpc_server_interceptors, setup_tracing
from services.features import FeatureFetcher
from services.ranking.pipeline import RankingPipeline
from services.ranking.server import SERVICE_NAME, RankingServicer
from services.ranking.settings import RankingSettings


def main() -> int:
    settings = RankingSettings()
    artifacts = ArtifactSettings()
    feast = FeatureStoreSettings()
    configure_logging(settings.log_level)
    tracing = setup_tracing(TelemetrySettings(), "ranking")
    metrics = ServiceMetrics("ranking")
    servicer = RankingServicer(settings)

    def load() -> None:
        bundle = load_bundle(artifacts.artifacts_dir)  # verifies every sha256 first
        from feature_store.reader import build_reader

        fetcher = FeatureFetcher(build_reader(feast, registry=metrics.registry, enforce_ttl=feast.enforce_ttl), metrics)
        pipeline = RankingPipeline.load_artifacts(bundle, fetcher, metrics)
        pipeline.warm_up(settings.warmup_requests)
        metrics.set_model(bundle.version)
        servicer.pipeline = pipeline

    spec = ServerSpec(
        name="ranking",
        service_full_name=SERVICE_NAME,
        host=settings.host,
        port=settings.port,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        grace_seconds=settings.grace_period_s,
        add_servicer=lambda server: ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server),
        load=load,
        metrics=metrics,
        extra_interceptors=grpc_server_interceptors(tracing),
    )
    try:
        return asyncio.run(serve(spec))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    sys.exit(main())
