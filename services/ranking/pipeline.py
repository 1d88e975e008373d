"""The ranking pipeline: features -> scorer (``ranking.scorer`` of services/pipeline.toml) -> select.

Runs in-process (tests, benchmarks, warm-up) exactly as behind gRPC
(:mod:`services.ranking.server`). The scorer returns one score per candidate in input order; the
selector here sorts them best first (stable, so ties keep retrieval's order).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from common.bundle import Bundle
from common.grpc_server import ServiceMetrics
from services.components.config import RankingConfig, build_scorer, load_config
from services.components.scorer import Scorer
from services.features import FeatureFetcher, parse_user_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankResult:
    item_ids: np.ndarray  # int64 [N], best first
    scores: np.ndarray  # float32 [N]
    model_version: str


class RankingPipeline:
    def __init__(self, *, version: str, scorer: Scorer, features: FeatureFetcher, metrics: ServiceMetrics,
                 user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        self.version = version
        self.scorer = scorer
        self.features = features
        self.metrics = metrics
        self._user_ids, self._item_ids = user_ids, item_ids  # warm-up traffic
        self._t_features = metrics.stage("features")
        self._t_score = metrics.stage("score")
        self._t_select = metrics.stage("select")

    @classmethod
    def load_artifacts(cls, bundle: Bundle, features: FeatureFetcher, metrics: ServiceMetrics,
                       config: RankingConfig | None = None) -> RankingPipeline:
        from common.model_inputs import ModelInputs

        config = config if config is not None else load_config().ranking
        scorer = build_scorer(config, bundle)
        inputs = ModelInputs.from_bundle(bundle)
        log.info("ranking: bundle %s, scorer %s, %d features", bundle.version, scorer.name, inputs.n_features)
        return cls(version=bundle.version, scorer=scorer, features=features, metrics=metrics,
                   user_ids=inputs.user_ids[1:], item_ids=inputs.item_ids[1:])

    def warm_up(self, n: int, n_candidates: int = 500) -> None:
        items, users = self._item_ids, self._user_ids
        if n <= 0 or items.size == 0:
            return
        rng = np.random.default_rng(0)
        for i in range(n):
            cand = rng.choice(items, size=min(n_candidates, items.size), replace=False)
            user = str(users[i % users.size]) if users.size and i % 5 else "warm-up-unknown-user"
            self.rank(user, cand, rng.random(cand.size, dtype=np.float32))

    def rank(self, user_id: str, item_ids: np.ndarray, retrieval_scores: np.ndarray) -> RankResult:
        t0 = time.perf_counter()
        user = self.features.user(parse_user_id(user_id))
        items = self.features.items(item_ids)
        t1 = time.perf_counter()
        self._t_features.observe(t1 - t0)
        scores = self.scorer.score(user, items, retrieval_scores)
        t2 = time.perf_counter()
        self._t_score.observe(t2 - t1)
        order = np.argsort(-scores, kind="stable")
        self._t_select.observe(time.perf_counter() - t2)
        self.metrics.count_candidates(self.scorer.name, int(item_ids.size))
        return RankResult(item_ids[order], scores[order].astype(np.float32, copy=False), self.version)
