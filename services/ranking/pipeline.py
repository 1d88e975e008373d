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
from services.components.tracing import component_tracer, span
from services.features import FeatureFetcher, describe_rows, parse_user_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankResult:
    item_ids: np.ndarray  # int64 [N], best first
    scores: np.ndarray  # float32 [N]
    model_version: str
    explain: dict | None = None  # only when asked: the scorer's inputs for the best candidates


class RankingPipeline:
    def __init__(self, *, version: str, scorer: Scorer, features: FeatureFetcher, metrics: ServiceMetrics,
                 user_ids: np.ndarray, item_ids: np.ndarray, feature_names: tuple[str, ...] = ()) -> None:
        self.version = version
        self.scorer = scorer
        self.features = features
        self.metrics = metrics
        self._user_ids, self._item_ids = user_ids, item_ids  # warm-up traffic
        self.feature_names = feature_names  # the scorer's input columns (explain)
        self._t_features = metrics.stage("features")
        self._t_score = metrics.stage("score")
        self._t_select = metrics.stage("select")
        self._tracer = component_tracer()  # None unless tracing is on

    @classmethod
    def load_artifacts(cls, bundle: Bundle, features: FeatureFetcher, metrics: ServiceMetrics,
                       config: RankingConfig | None = None) -> RankingPipeline:
        from common.model_inputs import ModelInputs

        config = config if config is not None else load_config().ranking
        scorer = build_scorer(config, bundle)
        inputs = ModelInputs.from_bundle(bundle)
        log.info("ranking: bundle %s, scorer %s, %d features", bundle.version, scorer.name, inputs.n_features)
        return cls(version=bundle.version, scorer=scorer, features=features, metrics=metrics,
                   user_ids=inputs.user_ids[1:], item_ids=inputs.item_ids[1:],
                   feature_names=tuple(f["name"] for f in bundle.ranker_features))

    def warm_up(self, n: int, n_candidates: int = 500) -> None:
        items, users = self._item_ids, self._user_ids
        if n <= 0 or items.size == 0:
            return
        rng = np.random.default_rng(0)
        for i in range(n):
            cand = rng.choice(items, size=min(n_candidates, items.size), replace=False)
            user = str(users[i % users.size]) if users.size and i % 5 else "warm-up-unknown-user"
            self.rank(user, cand, rng.random(cand.size, dtype=np.float32))

    def rank(self, user_id: str, item_ids: np.ndarray, retrieval_scores: np.ndarray,
             explain_top: int = 0, record: bool = True) -> RankResult:
        """``explain_top`` > 0: also the scorer's input rows (feature name -> value) of the best
        ``explain_top`` candidates and the event time of each feature view row they came from.
        ``record=False``: not observed in the stage metrics (the shadow ranker's calls)."""
        t0 = time.perf_counter()
        user = self.features.user(parse_user_id(user_id))
        items = self.features.items(item_ids)
        t1 = time.perf_counter()
        with span(self._tracer, f"scorer {self.scorer.name}", component=self.scorer.name, candidates=int(item_ids.size)):
            scores = self.scorer.score(user, items, retrieval_scores)
        t2 = time.perf_counter()
        order = np.argsort(-scores, kind="stable")
        if record:
            self._t_features.observe(t1 - t0)
            self._t_score.observe(t2 - t1)
            self._t_select.observe(time.perf_counter() - t2)
            self.metrics.count_candidates(self.scorer.name, int(item_ids.size))
        explained = None
        if explain_top > 0:
            explained = self._explain(user, items, item_ids, retrieval_scores, order[:explain_top],
                                      {"features": t1 - t0, "score": t2 - t1})
        return RankResult(item_ids[order], scores[order].astype(np.float32, copy=False), self.version, explained)

    def _explain(self, user, items, item_ids, retrieval_scores, best, seconds) -> dict:
        matrix = getattr(self.scorer, "matrix", None)
        rows = matrix(user, items, retrieval_scores)[best] if matrix is not None else None
        names = self.feature_names
        ts = self.features.item_event_ts(item_ids[best])
        now = time.time()
        return {
            "scorer": self.scorer.name, "model_version": self.version,
            "seconds": {k: round(v, 6) for k, v in seconds.items()},
            "user_feature_rows": describe_rows(user.event_ts, now),
            "items": {str(int(i)): {"inputs": (dict(zip(names, (round(float(x), 6) for x in rows[n]), strict=True))
                                               if rows is not None else None),
                                    "feature_rows": describe_rows({view: t[n] for view, t in ts.items()}, now)}
                      for n, i in enumerate(item_ids[best].tolist())},
        }
