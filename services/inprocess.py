"""Retrieval and ranking inside the gateway's process (``GATEWAY_MODE=inprocess``).

The gateway's :class:`~services.gateway.pipeline.Recommender` calls its two stages as
``await stage.Retrieve(request, timeout=...)`` / ``await stage.Rank(request, timeout=...)`` and
handles ``grpc.aio.AioRpcError``: the generated gRPC stubs in ``grpc`` mode, the *faces* here in
``inprocess`` mode. A face runs the very code the gRPC servicer runs
(:func:`services.retrieval.server.retrieve`, :func:`services.ranking.server.rank`: validation,
pipeline, ``to_response``) and fails the way a gRPC call fails, so the Recommender's breakers
and fallback ladder treat both runtimes alike:

==============================  =======================================================
invalid request                 ``INVALID_ARGUMENT`` with the same message
exception inside the pipeline   ``INTERNAL`` (traceback logged, as the gRPC server does)
call that overran ``timeout``   ``DEADLINE_EXCEEDED``, its result discarded: CPU work
                                cannot be interrupted, so the time is measured afterwards
==============================  =======================================================

:func:`load` builds both pipelines the way ``services.runner`` does for a gRPC service (online
store setting checked, bundle verified, one feature reader, ``load_artifacts``, warm-up) from the
same ``RETRIEVAL_*`` / ``RANKING_*`` / ``FEAST_*`` settings; :func:`preflight` is its cheap part
plus the components, run by ``python -m services.gateway`` before any worker starts so that a bad
config or bundle is one line, not a worker traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from common.bundle import Bundle, load_bundle
from common.grpc_server import ServiceMetrics
from common.settings import FeatureStoreSettings
from services.arms import ArmNotLoaded, Arms
from services.features import FeatureFetcher
from services.ranking import server as ranking_server
from services.ranking.settings import RankingSettings
from services.reload import Reloader
from services.retrieval import server as retrieval_server
from services.retrieval.settings import RetrievalSettings
from services.runner import check_online_store, feature_reader
from services.validation import InvalidRequest

log = logging.getLogger(__name__)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a failed gRPC call raises (what the Recommender's ``_invoke`` inspects)."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class LocalMethod:
    """``await method(request, timeout=...)`` over a synchronous ``handler(request) -> response``.

    The handler runs on the event loop without a thread hop, as in the gRPC servicers: it is
    ~1-2 ms of CPU and a hop costs more than it saves; a process has one core's worth of it and
    ``GATEWAY_WORKERS`` scales it out.
    """

    def __init__(self, name: str, handler: Callable[[Any], Any], clock: Callable[[], float] = time.perf_counter):
        self.name = name
        self._handler = handler
        self._clock = clock

    async def __call__(self, request, timeout: float | None = None, **_: Any):
        if timeout is not None and timeout <= 0:  # the gRPC server refuses such a call unrun
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
        start = self._clock()
        try:
            response = self._handler(request)
        except InvalidRequest as exc:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except ArmNotLoaded as exc:
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        except Exception as exc:  # a bug or a broken artifact: what the gRPC interceptor maps to INTERNAL
            log.exception("unhandled error in in-process %s", self.name)
            raise rpc_error(grpc.StatusCode.INTERNAL, f"{self.name}: {type(exc).__name__}") from exc
        elapsed = self._clock() - start
        if timeout is not None and elapsed > timeout:
            # a gRPC client would have given up at the deadline: the late answer is not used
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"{self.name} took {elapsed * 1000:.1f} ms of a {timeout * 1000:.1f} ms budget")
        return response


def _arms(pipeline_or_arms) -> Arms:
    return pipeline_or_arms if isinstance(pipeline_or_arms, Arms) else Arms.single(pipeline_or_arms)


class LocalRetrieval:
    """The in-process face of ``recsys.v1.RetrievalService`` (``Retrieve``). ``arms`` is read per
    call, so a :class:`~services.reload.Reloader` swaps it as it does a servicer's."""

    def __init__(self, pipeline, settings: RetrievalSettings) -> None:
        self.arms = _arms(pipeline)
        self.Retrieve = LocalMethod(  # noqa: N815 - the generated stub's method name
            "retrieval", lambda request: retrieval_server.retrieve(self.arms, settings, request))


class LocalRanking:
    """The in-process face of ``recsys.v1.RankingService`` (``Rank``); a version it does not hold
    is ``FAILED_PRECONDITION``, as from the servicer. No shadow ranker in this mode."""

    def __init__(self, pipeline, settings: RankingSettings) -> None:
        self.arms = _arms(pipeline)
        self.Rank = LocalMethod(  # noqa: N815 - the generated stub's method name
            "ranking", lambda request: ranking_server.rank(self.arms, settings, request))


@dataclass
class LocalStages:
    retrieval: LocalRetrieval
    ranking: LocalRanking
    metrics: dict[str, ServiceMetrics]  # "retrieval", "ranking": the pipelines' own registries
    bundle_version: str
    reloaders: tuple[Reloader, ...] = ()  # hot swap of both faces, polled by the gateway

    def poll(self) -> None:
        """Blocking (loads bundles): on a worker thread."""
        for reloader in self.reloaders:
            reloader.check()


@dataclass(frozen=True)
class StageSettings:
    """What the in-process stages read, from the services' own variables."""

    retrieval: RetrievalSettings
    ranking: RankingSettings
    feast: FeatureStoreSettings

    @classmethod
    def from_env(cls) -> StageSettings:
        return cls(RetrievalSettings(), RankingSettings(), FeatureStoreSettings())


def _components(settings: StageSettings, bundle: Bundle) -> None:
    """Build (and drop) every configured component: options and artifacts are checked."""
    from services.components.config import build_filters, build_scorer, build_sources, load_config

    retrieval = load_config(settings.retrieval.pipeline_config).retrieval
    retrieval.check_quotas(settings.retrieval.max_k, "RETRIEVAL_MAX_K")
    build_sources(retrieval, bundle)
    build_filters(retrieval, bundle)
    build_scorer(load_config(settings.ranking.pipeline_config).ranking, bundle)


def preflight(settings: StageSettings, artifacts_dir: Path) -> str:
    """Raise ``LoadError`` / ``BundleError`` (one-line messages) unless the stages can load;
    returns the bundle version."""
    check_online_store(settings.feast)
    bundle = load_bundle(artifacts_dir)  # verifies every sha256
    _components(settings, bundle)
    return bundle.version


def load(settings: StageSettings, artifacts_dir: Path) -> LocalStages:
    """Both pipelines, loaded and warmed up, with the canary and experiment arms (blocking:
    seconds; run it in a thread). ``LocalStages.poll`` follows ``current`` / ``rollout.json``."""
    from services.components.config import load_config

    check_online_store(settings.feast)
    bundle = load_bundle(artifacts_dir)
    metrics = {name: ServiceMetrics(name) for name in ("retrieval", "ranking")}
    # one reader for both stages (one item table in memory); its counters are labelled by
    # feature view, not by service, so they live in the retrieval registry
    reader = feature_reader(settings.feast, metrics["retrieval"])
    stages = {"retrieval": (settings.retrieval, retrieval_server.build_pipeline, LocalRetrieval),
              "ranking": (settings.ranking, ranking_server.build_pipeline, LocalRanking)}
    faces, reloaders = {}, []
    for name, (stage_settings, build_pipeline, face) in stages.items():
        config = load_config(stage_settings.pipeline_config)
        features = FeatureFetcher(reader, metrics[name])

        def build(b: Bundle, arm_config, stage_settings=stage_settings, build_pipeline=build_pipeline,
                  features=features, stage_metrics=metrics[name]):
            pipeline = build_pipeline(stage_settings, b, features, stage_metrics, arm_config)
            pipeline.warm_up(stage_settings.warmup_requests)
            return pipeline

        faces[name] = face(build(bundle, config), stage_settings)
        metrics[name].set_model(bundle.version)
        reloaders.append(Reloader(name=name, artifacts_dir=artifacts_dir, servicer=faces[name], build=build,
                                  config=config, registry=metrics[name].registry, set_model=metrics[name].set_model,
                                  keep_previous_s=stage_settings.keep_previous_s))
    stages_ = LocalStages(faces["retrieval"], faces["ranking"], metrics, bundle.version, tuple(reloaders))
    stages_.poll()  # the canary and experiment arms before the first request
    return stages_
