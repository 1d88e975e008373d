"""The retrieval pipeline: features -> query embedding -> candidate sources -> merge.

Product-mixer style: each candidate source is a small named object (``two_tower``, ``popular``)
and the name is the ``source`` of every candidate it produces and the label of its metrics.
:class:`RetrievalPipeline` composes them and runs in-process (tests, benchmarks, warm-up)
exactly as it runs behind gRPC (:mod:`services.retrieval.server`).

``load_artifacts`` does everything expensive once (ONNX session, FAISS index, id maps,
popularity list); ``retrieve`` is the per-request path and stays in numpy (no per-item
Python loop).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from common.bundle import Bundle, BundleError
from common.grpc_server import ServiceMetrics
from common.model_inputs import RECENT_ITEM_IDS, SEEN_ITEM_IDS, USER_EMBEDDING, ModelInputs
from common.onnx import cpu_session
from services.features import FeatureFetcher, parse_user_id

log = logging.getLogger(__name__)

SOURCE_TWO_TOWER = "two_tower"
SOURCE_POPULAR = "popular"


@dataclass(frozen=True)
class Candidates:
    """Candidates of one source, best first."""

    item_ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n]
    source: str


@dataclass(frozen=True)
class RetrievalResult:
    item_ids: np.ndarray  # int64 [k]
    scores: np.ndarray  # float32 [k]
    source_codes: np.ndarray  # uint8 [k], index into ``source_names``
    source_names: tuple[str, ...]
    model_version: str

    def sources(self) -> list[str]:
        names = self.source_names
        return [names[c] for c in self.source_codes.tolist()]


def _not_in(ids: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    if excluded.size == 0:
        return ids >= 0
    return (ids >= 0) & ~np.isin(ids, excluded)


class TwoTowerSource:
    """Nearest items to the query embedding in the FAISS index (ids = item ids, inner product)."""

    name = SOURCE_TWO_TOWER

    def __init__(self, index) -> None:
        self.index = index
        self.ntotal = int(index.ntotal)
        self._single_threaded = threading.local()

    def fetch(self, query: np.ndarray, k: int, excluded: np.ndarray) -> Candidates:
        if not getattr(self._single_threaded, "done", False):
            # OpenMP's thread count is per calling thread: the artifacts load in a worker thread,
            # requests are served on the event loop's. One query per call: extra OpenMP threads
            # only spin and wait (8 ms instead of 0.04 ms on a busy 2-core machine).
            import faiss

            faiss.omp_set_num_threads(1)
            self._single_threaded.done = True
        # Over-fetch by the number of excluded ids, so that filtering them out still leaves k.
        n = min(k + int(excluded.size), self.ntotal)
        scores, ids = self.index.search(query, n)
        ids, scores = ids[0], scores[0]
        keep = _not_in(ids, excluded)
        return Candidates(ids[keep][:k], scores[keep][:k].astype(np.float32, copy=False), self.name)


class PopularSource:
    """The bundle's popularity list (recency-weighted), best first: cold start and back-fill."""

    name = SOURCE_POPULAR

    def __init__(self, item_ids: np.ndarray, scores: np.ndarray) -> None:
        self.item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.scores = np.ascontiguousarray(scores, dtype=np.float32)

    @classmethod
    def from_file(cls, path) -> PopularSource:
        rows = json.loads(path.read_text())
        if not rows:
            raise BundleError(f"{path} holds no popular items")
        return cls(np.array([r["item_id"] for r in rows], np.int64), np.array([r["score"] for r in rows], np.float32))

    def fetch(self, k: int, excluded: np.ndarray) -> Candidates:
        head_ids = self.item_ids[: k + int(excluded.size)]
        keep = _not_in(head_ids, excluded)
        return Candidates(head_ids[keep][:k], self.scores[: head_ids.size][keep][:k], self.name)


class RetrievalPipeline:
    SOURCE_NAMES = (SOURCE_TWO_TOWER, SOURCE_POPULAR)

    def __init__(
        self,
        *,
        version: str,
        inputs: ModelInputs,
        session,
        two_tower: TwoTowerSource,
        popular: PopularSource,
        features: FeatureFetcher,
        metrics: ServiceMetrics,
        exclude_recent: bool = True,
        exclude_seen: bool = True,
    ) -> None:
        self.version = version
        self.inputs = inputs
        self.session = session
        self.two_tower = two_tower
        self.popular = popular
        self.features = features
        self.metrics = metrics
        self.exclude_recent = exclude_recent
        self.exclude_seen = exclude_seen
        self._n_recent = inputs.n_recent
        self._t_features = metrics.stage("features")
        self._t_embed = metrics.stage("embed")
        self._t_search = metrics.stage("search")
        self._t_merge = metrics.stage("merge")

    @classmethod
    def load_artifacts(
        cls,
        bundle: Bundle,
        features: FeatureFetcher,
        metrics: ServiceMetrics,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        exclude_recent: bool = True,
        exclude_seen: bool = True,
    ) -> RetrievalPipeline:
        import faiss

        faiss.omp_set_num_threads(1)  # one query per call: threads only add wake-up jitter
        index = faiss.read_index(str(bundle.path("item_index")))
        index_meta = bundle.manifest.get("index") or {}
        params = {
            "nprobe": nprobe if nprobe is not None else index_meta.get("nprobe"),
            "efSearch": ef_search if ef_search is not None else index_meta.get("ef_search", index_meta.get("efSearch")),
        }
        space = faiss.ParameterSpace()
        for name, value in params.items():
            if value is not None:
                try:
                    space.set_index_parameter(index, name, int(value))
                except RuntimeError:  # not an IVF / HNSW index: the parameter does not apply
                    log.debug("index %s ignores %s", type(index).__name__, name)
        if index.d != bundle.embedding_dim:
            raise BundleError(f"item_index has dimension {index.d}, manifest says {bundle.embedding_dim}")

        session = cpu_session(bundle.path("user_tower"))  # one thread: see common.onnx

        pipeline = cls(
            version=bundle.version,
            inputs=ModelInputs.from_bundle(bundle),
            session=session,
            two_tower=TwoTowerSource(index),
            popular=PopularSource.from_file(bundle.path("popular_items")),
            features=features,
            metrics=metrics,
            exclude_recent=exclude_recent,
            exclude_seen=exclude_seen,
        )
        log.info("retrieval: bundle %s, index %s (%d items, d=%d)", bundle.version, type(index).__name__,
                 index.ntotal, index.d)
        return pipeline

    def warm_up(self, n: int) -> None:
        """Run ``n`` real calls (known users, an unknown one, exclusions) before serving."""
        users = self.inputs.user_ids[1:]
        if n <= 0:
            return
        pick = users[np.linspace(0, max(users.size - 1, 0), num=min(n, max(users.size, 1)), dtype=np.int64)] \
            if users.size else np.array([], np.int64)
        ids = [str(u) for u in pick.tolist()] + ["warm-up-unknown-user"]
        for i in range(n):
            self.retrieve(ids[i % len(ids)], 100, exclude_item_ids=self.popular.item_ids[:5])

    def embed(self, user_id: int | None, user_values: dict, recent: np.ndarray) -> np.ndarray:
        feed = self.inputs.user_tower_feed(user_id, user_values, recent)
        return self.session.run([USER_EMBEDDING], feed)[0]

    def retrieve(
        self,
        user_id: str,
        k: int,
        recent_item_ids: np.ndarray | None = None,
        exclude_item_ids: np.ndarray | None = None,
    ) -> RetrievalResult:
        t0 = time.perf_counter()
        uid = parse_user_id(user_id)
        user = self.features.user(uid)
        stored = user.values.get(RECENT_ITEM_IDS)
        context = np.asarray(recent_item_ids if recent_item_ids is not None else (), np.int64).reshape(-1)
        if stored is not None and len(stored):
            recent = np.concatenate([context, np.asarray(stored, np.int64).reshape(-1)])
        else:
            recent = context
        excluded = np.asarray(exclude_item_ids if exclude_item_ids is not None else (), np.int64).reshape(-1)
        if self.exclude_recent and recent.size:
            excluded = np.concatenate([excluded, recent])
        if self.exclude_seen and (seen := user.values.get(SEEN_ITEM_IDS)) is not None and len(seen):
            excluded = np.concatenate([excluded, np.asarray(seen, np.int64).reshape(-1)])
        t1 = time.perf_counter()
        self._t_features.observe(t1 - t0)

        # Cold start: nothing known about the user (not in the model, no profile, nothing seen)
        # -> the popularity source alone.
        row = 0 if uid is None else int(self.inputs.user_rows(np.array([uid]))[0])
        has_signal = row > 0 or recent.size > 0 or not user.all_missing
        if has_signal:
            query = self.embed(uid, user.values, recent[: self._n_recent])
            t2 = time.perf_counter()
            self._t_embed.observe(t2 - t1)
            tt = self.two_tower.fetch(query, k, excluded)
            t1 = time.perf_counter()
            self._t_search.observe(t1 - t2)
        else:
            tt = Candidates(np.empty(0, np.int64), np.empty(0, np.float32), SOURCE_TWO_TOWER)

        n_tt = tt.item_ids.size
        if n_tt < k:  # thin or cold: back-fill with popular items not already there
            pop = self.popular.fetch(k - n_tt, np.concatenate([excluded, tt.item_ids]) if n_tt else excluded)
            item_ids = np.concatenate([tt.item_ids, pop.item_ids])
            scores = np.concatenate([tt.scores, pop.scores])
            codes = np.zeros(item_ids.size, np.uint8)
            codes[n_tt:] = 1
            n_pop = pop.item_ids.size
        else:
            item_ids, scores, codes, n_pop = tt.item_ids, tt.scores, np.zeros(n_tt, np.uint8), 0
        self._t_merge.observe(time.perf_counter() - t1)
        if n_tt:
            self.metrics.count_candidates(SOURCE_TWO_TOWER, n_tt)
        if n_pop:
            self.metrics.count_candidates(SOURCE_POPULAR, n_pop)
        return RetrievalResult(item_ids, scores, codes, self.SOURCE_NAMES, self.version)
