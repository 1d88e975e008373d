"""The start-up both gRPC services share: settings, logging, tracing, metrics, the online store
setting checked, the bundle (verified before it is used) and feature reader loaded in ``load``,
warm-up, then ``serve``.

Each ``services/<name>/__main__.py`` only says how to build its pipeline from the bundle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from common.bundle import Bundle, load_bundle
from common.grpc_server import (
    LoadError,
    ServerSpec,
    ServiceMetrics,
    configure_logging,
    connection_age_options,
    serve,
)
from common.process_metrics import add_process_metrics
from common.settings import ArtifactSettings, FeatureStoreSettings
from common.telemetry import TelemetrySettings, grpc_server_interceptors, setup_tracing
from feature_store.backends import OnlineStoreConfigError, online_store_type
from services.arms import Arms
from services.features import FeatureFetcher
from services.reload import Reloader


def check_online_store(feast: FeatureStoreSettings) -> None:
    """A setting, not a bug: ``LoadError`` (one "refusing to serve" line, no traceback), checked
    before the bundle is hashed."""
    try:
        online_store_type(feast)
    except OnlineStoreConfigError as exc:
        raise LoadError(str(exc)) from exc


def feature_reader(feast: FeatureStoreSettings, metrics: ServiceMetrics, items: bool = True):
    """The online feature reader, its counters in ``metrics``' registry. The item table is loaded
    before the service reports SERVING; a later snapshot is loaded on a helper thread while the
    current table keeps serving (double-buffered: 1M items take ~2 s to load, which a request must
    not wait for). ``items=False`` (retrieval, which reads no item rows): no item table at all."""
    from feature_store.reader import build_reader  # imports feast: after the bundle check

    return build_reader(feast, registry=metrics.registry, enforce_ttl=feast.enforce_ttl, background_refresh=True,
                        items=items)


def run_service(
    *,
    name: str,
    service_full_name: str,
    settings: Any,  # the service's settings: host, port, metrics_*, grace_period_s, warmup_requests,
    #                 reload_poll_s, keep_previous_s, pipeline_config, log_level
    servicer: Any,  # has an ``arms`` attribute (services/arms.py), set once loaded
    add_servicer: Callable[[Any, Any], None],  # the generated add_*Servicer_to_server
    build_pipeline: Callable[[Bundle, FeatureFetcher, ServiceMetrics, Any], Any],  # (..., PipelineConfig)
    wants_shadow: bool = False,
    on_loaded: Callable[[ServiceMetrics], None] | None = None,
    reads_items: bool = True,
) -> int:
    """Serve the ``current`` bundle and follow it (:mod:`services.reload`); ``wants_shadow``: also
    hold the shadow ranker of ``rollout.json``; ``on_loaded``: called once the arms are loaded;
    ``reads_items``: the pipeline reads item feature rows (ranking), so the reader holds the item table."""
    from services.components.config import load_config

    artifacts = ArtifactSettings()
    feast = FeatureStoreSettings()
    configure_logging(settings.log_level)
    tracing = setup_tracing(TelemetrySettings(), name)
    metrics = ServiceMetrics(name)
    add_process_metrics(metrics.registry)  # process_cpu_seconds_total, python_gc_pause_seconds

    reloader: list[Reloader] = []  # set by load(): the hot swap needs the feature fetcher it built

    def load() -> None:
        check_online_store(feast)
        config = load_config(settings.pipeline_config)  # one "refusing to serve" line when invalid
        bundle = load_bundle(artifacts.artifacts_dir)  # verifies every sha256
        features = FeatureFetcher(feature_reader(feast, metrics, items=reads_items), metrics)

        def build(b: Bundle, arm_config):
            pipeline = build_pipeline(b, features, metrics, arm_config)
            pipeline.warm_up(settings.warmup_requests)
            return pipeline

        servicer.arms = Arms.single(build(bundle, config))
        metrics.set_model(bundle.version)
        reloader.append(Reloader(name=name, artifacts_dir=artifacts.artifacts_dir, servicer=servicer, build=build,
                                 config=config, registry=metrics.registry, set_model=metrics.set_model,
                                 keep_previous_s=settings.keep_previous_s, wants_shadow=wants_shadow))
        # the canary, shadow and experiment arms before SERVING: an experiment whose bundle cannot
        # be served is refused now, and a restart during a canary serves it at once
        reloader[0].check()
        if on_loaded is not None:
            on_loaded(metrics)

    def poll() -> None:
        if reloader:
            reloader[0].check()

    def status() -> dict:
        return reloader[0].status() if reloader else {"service": name, "state": "loading"}

    spec = ServerSpec(
        name=name,
        service_full_name=service_full_name,
        host=settings.host,
        port=settings.port,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        grace_seconds=settings.grace_period_s,
        add_servicer=lambda server: add_servicer(servicer, server),
        load=load,
        metrics=metrics,
        extra_interceptors=grpc_server_interceptors(tracing),
        options=connection_age_options(settings.max_connection_age_s, settings.grace_period_s),
        poll=poll,
        poll_seconds=settings.reload_poll_s,
        status=status,
        versions=lambda: {k.version for k in servicer.arms.pipelines} if servicer.arms is not None else set(),
    )
    try:
        return asyncio.run(serve(spec))
    finally:
        tracing.shutdown()
