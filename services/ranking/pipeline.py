"""The ranking pipeline: features -> ranker matrix -> one ONNX call -> sort.

Runs in-process (tests, benchmarks, warm-up) exactly as behind gRPC
(:mod:`services.ranking.server`). The matrix is assembled in ``manifest["ranker_features"]``
order by :meth:`common.model_inputs.ModelInputs.ranker_matrix`, the function the ranker's
training set was built with; the retrieval score of each candidate is one of its columns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from common.bundle import Bundle, BundleError
from common.grpc_server import ServiceMetrics
from common.model_inputs import ModelInputs
from common.onnx import cpu_session
from services.features import FeatureFetcher, parse_user_id

log = logging.getLogger(__name__)

SCORER = "ranker"


@dataclass(frozen=True)
class RankResult:
    item_ids: np.ndarray  # int64 [N], best first
    scores: np.ndarray  # float32 [N]
    model_version: str


class RankingPipeline:
    def __init__(self, *, version: str, inputs: ModelInputs, session, features: FeatureFetcher,
                 metrics: ServiceMetrics) -> None:
        self.version = version
        self.inputs = inputs
        self.session = session
        self.features = features
        self.metrics = metrics
        self._input_name = session.get_inputs()[0].name
        self._output_name = session.get_outputs()[0].name
        self._t_features = metrics.stage("features")
        self._t_assemble = metrics.stage("assemble")
        self._t_score = metrics.stage("score")

    @classmethod
    def load_artifacts(cls, bundle: Bundle, features: FeatureFetcher, metrics: ServiceMetrics) -> RankingPipeline:
        session = cpu_session(bundle.path("ranker"))  # one thread: see common.onnx
        inputs = ModelInputs.from_bundle(bundle)
        shape = session.get_inputs()[0].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != inputs.n_features):
            raise BundleError(f"ranker input shape {shape} does not match {inputs.n_features} ranker_features")
        log.info("ranking: bundle %s, %d features", bundle.version, inputs.n_features)
        return cls(version=bundle.version, inputs=inputs, session=session, features=features, metrics=metrics)

    def warm_up(self, n: int, n_candidates: int = 500) -> None:
        items = self.inputs.item_ids[1:]
        users = self.inputs.user_ids[1:]
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
        matrix = self.inputs.ranker_matrix(user.values, items.values, retrieval_scores)
        t2 = time.perf_counter()
        self._t_assemble.observe(t2 - t1)
        scores = self.session.run([self._output_name], {self._input_name: matrix})[0].reshape(-1)
        order = np.argsort(-scores, kind="stable")
        self._t_score.observe(time.perf_counter() - t2)
        self.metrics.count_candidates(SCORER, int(item_ids.size))
        return RankResult(item_ids[order], scores[order].astype(np.float32, copy=False), self.version)
