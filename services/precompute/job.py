"""Compute every known user's top-N with the services' own code and write it to Redis.

The pipelines are built the way the services build theirs (:func:`services.runner.check_online_store`,
:func:`common.bundle.load_bundle` with every sha256 verified, one feature reader,
``services.retrieval.server.build_pipeline`` / ``services.ranking.server.build_pipeline`` from the
``RETRIEVAL_*`` / ``RANKING_*`` settings and pipeline config), and each user goes through the very
per-call functions a Retrieve and a Rank call run (:func:`services.retrieval.server.retrieve`,
:func:`services.ranking.server.rank`: validation, arm selection, pipeline, response). So a list
is exactly what the online path answered for that user at that moment, with no request context
and no exclusions: the gateway applies the real-time filters when it serves it.

Users: the bundle's ``user_ids`` (row 0, the padding / unknown row, and negative ids skipped),
whatever the catalog or Feast project. One value per user under
:func:`common.realtime.precomputed_key` (format: :mod:`common.precomputed`), ``SET ... EX
PRECOMPUTE_TTL_S``, ``PRECOMPUTE_BATCH`` per pipelined round trip. A re-run overwrites.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.precomputed import PrecomputedList, encode
from common.proto.recsys.v1 import ranking_pb2, retrieval_pb2
from common.realtime import precomputed_key

log = logging.getLogger(__name__)


class PrecomputeError(Exception):
    """A one-line reason the job cannot run (a setting, the bundle, the online store)."""


@dataclass
class Stages:
    """Both stages as the services hold them (one arm each: the bundle's default pipeline)."""

    retrieval: object  # services.arms.Arms
    ranking: object
    retrieval_settings: object  # RetrievalSettings
    ranking_settings: object  # RankingSettings
    version: str
    user_ids: np.ndarray  # the bundle's known users


def load_stages(artifacts_dir: Path, top_n: int) -> Stages:
    """Blocking (seconds): the bundle verified, both pipelines built and warmed up."""
    from pydantic import ValidationError

    from common.bundle import BundleError, load_bundle
    from common.grpc_server import LoadError, ServiceMetrics
    from common.model_inputs import ModelInputs
    from services.arms import Arms
    from services.components.config import PipelineConfigError
    from services.features import FeatureFetcher
    from services.inprocess import StageSettings
    from services.ranking import server as ranking_server
    from services.retrieval import server as retrieval_server
    from services.runner import check_online_store, feature_reader

    try:
        settings = StageSettings.from_env()
    except ValidationError as exc:
        raise PrecomputeError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    if top_n > settings.retrieval.max_k:
        raise PrecomputeError(f"PRECOMPUTE_TOP_N ({top_n}) is above RETRIEVAL_MAX_K ({settings.retrieval.max_k})")
    if top_n > settings.ranking.max_candidates:
        raise PrecomputeError(f"PRECOMPUTE_TOP_N ({top_n}) is above RANKING_MAX_CANDIDATES "
                              f"({settings.ranking.max_candidates})")
    try:
        check_online_store(settings.feast)
        bundle = load_bundle(artifacts_dir)  # verifies every sha256
        metrics = {name: ServiceMetrics(name) for name in ("retrieval", "ranking")}
        reader = feature_reader(settings.feast, metrics["retrieval"])
        retrieval = retrieval_server.build_pipeline(settings.retrieval, bundle, FeatureFetcher(reader, metrics["retrieval"]),
                                                    metrics["retrieval"])
        ranking = ranking_server.build_pipeline(settings.ranking, bundle, FeatureFetcher(reader, metrics["ranking"]),
                                                metrics["ranking"])
    except (BundleError, LoadError, PipelineConfigError) as exc:
        raise PrecomputeError(str(exc)) from None
    retrieval.warm_up(settings.retrieval.warmup_requests)
    ranking.warm_up(settings.ranking.warmup_requests)
    users = ModelInputs.from_bundle(bundle).user_ids[1:]
    return Stages(Arms.single(retrieval), Arms.single(ranking), settings.retrieval, settings.ranking,
                  bundle.version, users[users >= 0])


def compute(stages: Stages, user_id: str, top_n: int, now: Callable[[], float] = time.time) -> PrecomputedList:
    """The user's top-N: a Retrieve call and a Rank call of its candidates, as the gateway makes them."""
    from services.ranking.server import rank
    from services.retrieval.server import retrieve

    retrieved = retrieve(stages.retrieval, stages.retrieval_settings,
                         retrieval_pb2.RetrieveRequest(user_id=user_id, k=top_n, model_version=stages.version))
    cands = retrieved.candidates
    computed_at = now()
    names = tuple(cands.source_names) or ("unknown",)
    if not len(cands.item_ids):
        empty = np.empty(0, np.float32)
        return PrecomputedList(retrieved.model_version, computed_at, np.empty(0, np.int64), empty, empty,
                               np.empty(0, np.uint8), names)
    ranked = rank(stages.ranking, stages.ranking_settings,
                  ranking_pb2.RankRequest(user_id=user_id, candidates=cands, model_version=retrieved.model_version))
    cand_ids = np.array(cands.item_ids, np.int64)
    ids = np.array(ranked.item_ids, np.int64)
    # each ranked id's position among the candidates (unique ids: retrieval de-duplicates)
    order = np.argsort(cand_ids, kind="stable")
    at = order[np.searchsorted(cand_ids, ids, sorter=order)]
    codes = np.array(cands.source_index, np.uint8)[at] if len(cands.source_index) else np.zeros(ids.size, np.uint8)
    return PrecomputedList(ranked.model_version, computed_at, ids, np.array(ranked.scores, np.float32),
                           np.array(cands.scores, np.float32)[at], codes, names)


@dataclass
class Report:
    version: str
    users: int = 0
    seconds: float = 0.0
    bytes: int = 0
    short: int = 0  # lists with fewer than top_n items
    memory_before: int = 0
    memory_after: int = 0

    @property
    def users_per_s(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_list(self) -> float:
        return self.bytes / self.users if self.users else 0.0

    @property
    def memory_delta(self) -> int:
        return self.memory_after - self.memory_before


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def run(stages: Stages, client, users: Iterable[str], *, top_n: int, ttl_s: int, batch: int,
        advance: Callable[[int], None] = lambda n: None) -> Report:
    """Compute and write every user's list; ``advance(n)`` after each written batch (progress)."""
    report = Report(stages.version, memory_before=used_memory(client))
    t0 = time.perf_counter()
    pipe, pending = client.pipeline(transaction=False), 0
    for user_id in users:
        lst = compute(stages, user_id, top_n)
        value = encode(lst)
        pipe.set(precomputed_key(user_id), value, ex=ttl_s or None)
        report.users += 1
        report.bytes += len(value)
        report.short += len(lst) < top_n
        pending += 1
        if pending == batch:
            pipe.execute()
            advance(pending)
            pipe, pending = client.pipeline(transaction=False), 0
    if pending:
        pipe.execute()
        advance(pending)
    report.seconds = time.perf_counter() - t0
    report.memory_after = used_memory(client)
    return report
