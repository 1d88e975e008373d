"""The retrieval pipeline: features -> candidate sources -> filters -> merger.

Which sources (with their quotas), which filters and in which order is configuration
(``[retrieval]`` in services/pipeline.toml, see :mod:`services.components.config`). Each
component is named; the name labels its stage metric (``source:<name>``, ``filter:<name>``) and
is the ``source`` of every candidate it contributes. :class:`RetrievalPipeline` runs in-process
(tests, benchmarks, warm-up) exactly as behind gRPC (:mod:`services.retrieval.server`).

``load_artifacts`` does everything expensive once (ONNX session, FAISS index, popularity list,
...); ``retrieve`` is the per-request path and stays in numpy (no per-item Python loop).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from common.bundle import Bundle
from common.grpc_server import ServiceMetrics
from common.model_inputs import RECENT_ITEM_IDS, SEEN_ITEM_IDS, ModelInputs
from services.components.candidate_source import CandidateSource
from services.components.config import RetrievalConfig, build_filters, build_sources, load_config
from services.components.filter import Filter
from services.components.merger import Merger
from services.components.tracing import component_tracer, span
from services.components.types import Candidates, Query
from services.features import FeatureFetcher, describe_rows, parse_user_id

log = logging.getLogger(__name__)

_NO_IDS = np.empty(0, np.int64)


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


@dataclass
class RetrievalTrace:
    """What one request's components did (filled only when asked for: explain)."""

    query: Query | None = None
    sources: dict[str, Candidates] = field(default_factory=dict)  # as fetched, before filters
    removed: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # filter -> source -> ids
    taken: dict[str, int] = field(default_factory=dict)  # source -> candidates in the merged list
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds


def _ids(values) -> np.ndarray:
    return _NO_IDS if values is None else np.asarray(values, np.int64).reshape(-1)


class RetrievalPipeline:
    def __init__(self, *, version: str, sources: list[CandidateSource], filters: list[Filter], merger: Merger,
                 features: FeatureFetcher, metrics: ServiceMetrics, user_ids: np.ndarray,
                 score_with: str | None = None) -> None:
        self.version = version
        self.sources = sources
        self.filters = filters
        self.merger = merger
        self.features = features
        self.metrics = metrics
        self._user_ids = user_ids  # warm-up traffic
        self._t_features = metrics.stage("features")
        self._t_source = [metrics.stage(f"source:{s.name}") for s in sources]
        self._t_filters = metrics.stage("filters")
        self._t_merge = metrics.stage("merge")
        self._tracer = component_tracer()  # None unless tracing is on
        slots = merger.slots
        self._primaries = [i for i, slot in enumerate(slots) if not slot.backfill]
        self._backfills = [i for i, slot in enumerate(slots) if slot.backfill]
        self._all_by_exclusion = all(f.by_exclusion for f in filters)
        # ``score_with``: the source whose score every candidate gets (its slot index, its object)
        self._scorer = next(((i, s) for i, s in enumerate(sources) if s.name == score_with), None)

    @classmethod
    def load_artifacts(cls, bundle: Bundle, features: FeatureFetcher, metrics: ServiceMetrics,
                       config: RetrievalConfig | None = None) -> RetrievalPipeline:
        config = config if config is not None else load_config().retrieval
        sources = build_sources(config, bundle, features.live_state())
        filters = build_filters(config, bundle)
        pipeline = cls(version=bundle.version, sources=sources, filters=filters, merger=config.merger(),
                       features=features, metrics=metrics, user_ids=ModelInputs.from_bundle(bundle).user_ids[1:],
                       score_with=config.score_with)
        log.info("retrieval: bundle %s, sources %s, filters %s", bundle.version,
                 [s.name for s in sources], [f.name for f in filters])
        return pipeline

    @property
    def source_names(self) -> tuple[str, ...]:
        return self.merger.names

    def warm_up(self, n: int) -> None:
        """Run ``n`` real calls (known users, an unknown one, exclusions) before serving."""
        users = self._user_ids
        if n <= 0:
            return
        pick = users[np.linspace(0, max(users.size - 1, 0), num=min(n, max(users.size, 1)), dtype=np.int64)] \
            if users.size else _NO_IDS
        ids = [str(u) for u in pick.tolist()] + ["warm-up-unknown-user"]
        exclude = self.retrieve(ids[0], 5).item_ids
        for i in range(n):
            self.retrieve(ids[i % len(ids)], 100, exclude_item_ids=exclude)

    def query(self, user_id: str, k: int, recent_item_ids=None, exclude_item_ids=None) -> Query:
        """The request as the components see it: the user's online features read once."""
        uid = parse_user_id(user_id)
        user = self.features.user(uid)
        context, stored = _ids(recent_item_ids), user.values.get(RECENT_ITEM_IDS)
        recent = np.concatenate([context, _ids(stored)]) if stored is not None and len(stored) else context
        return Query(user_id=user_id, uid=uid, k=k, user=user, recent=recent, exclude=_ids(exclude_item_ids),
                     seen=_ids(user.values.get(SEEN_ITEM_IDS)))

    def retrieve(self, user_id: str, k: int, recent_item_ids: np.ndarray | None = None,
                 exclude_item_ids: np.ndarray | None = None, trace: RetrievalTrace | None = None) -> RetrievalResult:
        t0 = time.perf_counter()
        q = self.query(user_id, k, recent_item_ids, exclude_item_ids)
        if trace is not None:
            trace.query = q
        excluded = [f.excluded(q) for f in self.filters]
        # every source over-fetches by what the filters could remove, so that k remain after them
        extra = sum(int(e.size) for e in excluded)
        # Without a trace, exclusion filters run as one set: the kept candidates are the same,
        # and one np.isin per source instead of one per filter and source saves ~0.1 ms a request.
        union = None
        if trace is None and self._all_by_exclusion:
            union = excluded[0] if len(excluded) == 1 else np.concatenate(excluded) if excluded else _NO_IDS
        t1 = time.perf_counter()
        self._t_features.observe(t1 - t0)

        n = [w + extra for w in self.merger.wanted(k)]
        per_source = [Candidates.empty(s.name) for s in self.sources]
        filter_s = merge_s = 0.0
        for i in self._primaries:
            per_source[i], seconds = self._fetch(i, q, n[i], excluded, union, trace)
            filter_s += seconds
        t1 = time.perf_counter()
        merged = self._merge(per_source, k)
        merge_s += time.perf_counter() - t1
        # backfill sources are asked only when the primary ones fall short of k (cold, thin users)
        if len(merged.item_ids) < k and self._backfills:
            for i in self._backfills:
                per_source[i], seconds = self._fetch(i, q, n[i], excluded, union, trace)
                filter_s += seconds
            t1 = time.perf_counter()
            merged = self._merge(per_source, k)
            merge_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        scores = self._rescore(q, merged.item_ids, merged.scores, merged.source_codes)
        merge_s += time.perf_counter() - t1
        self._t_filters.observe(filter_s)
        self._t_merge.observe(merge_s)
        for name, n in merged.taken.items():
            if n:
                self.metrics.count_candidates(name, n)
        if trace is not None:
            trace.taken = merged.taken
            trace.seconds["filters"] = filter_s
            trace.seconds["merge"] = merge_s
        return RetrievalResult(merged.item_ids, scores, merged.source_codes, self.merger.names, self.version)

    def _fetch(self, i: int, q: Query, n: int, excluded: list[np.ndarray], union: np.ndarray | None,
               trace: RetrievalTrace | None) -> tuple[Candidates, float]:
        """Source i's candidates after the filters, and the seconds the filters took."""
        source = self.sources[i]
        with span(self._tracer, f"source {source.name}", component=source.name) as sp:
            t1 = time.perf_counter()
            cands = source.fetch(q, n)
            t2 = time.perf_counter()
            self._t_source[i].observe(t2 - t1)
            fetched = len(cands)
            if trace is not None:
                trace.sources[source.name] = cands
                trace.seconds[f"source:{source.name}"] = t2 - t1
            if union is not None:  # the exclusion filters as one set (see retrieve)
                if union.size and fetched:
                    cands = cands.select(~np.isin(cands.item_ids, union))
            else:
                for f, ids in zip(self.filters, excluded, strict=True):
                    out = f.apply(q, cands, ids)
                    cands = out.kept
                    if trace is not None and out.removed.size:
                        trace.removed.setdefault(f.name, {})[source.name] = out.removed
            if sp is not None:
                sp.set_attribute("recsys.fetched", fetched)
                sp.set_attribute("recsys.kept", len(cands))
        return cands, time.perf_counter() - t2

    def _merge(self, per_source: list[Candidates], k: int):
        with span(self._tracer, "merge", component="merge"):
            return self.merger.merge(per_source, k)

    def _rescore(self, q: Query, item_ids: np.ndarray, scores: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Candidates of the other sources get the ``score_with`` source's score, the one the
        ranker's ``retrieval_score`` feature was trained on (and the offline evaluation of the
        merged list used); kept as is when that source cannot score for this user."""
        if self._scorer is None:
            return scores
        slot, source = self._scorer
        other = codes != slot
        if not other.any():
            return scores
        rescored = source.score_items(q, item_ids[other])
        if rescored is None:
            return scores
        out = scores.copy()
        out[other] = rescored
        return out


def explain(trace: RetrievalTrace, result: RetrievalResult, *, top: int = 5, max_ids: int = 20) -> dict:
    """A JSON-able account of one traced ``retrieve``: per source what it fetched (count, its
    best few with scores) and contributed, per filter what it removed (count per source, the
    first ids), the time of each stage and the user's feature rows (event time of each view)."""
    q = trace.query
    contributed = dict.fromkeys(result.source_names, 0) | trace.taken
    sources = {name: {"fetched": len(c), "taken": contributed.get(name, 0),
                      "top": [[int(i), round(float(s), 6)] for i, s in zip(c.item_ids[:top], c.scores[:top], strict=True)]}
               for name, c in trace.sources.items()}
    filters = {}
    for name, per_source in trace.removed.items():
        ids = np.unique(np.concatenate(list(per_source.values())))
        filters[name] = {"removed": int(ids.size), "by_source": {s: int(v.size) for s, v in per_source.items()},
                         "ids": ids[:max_ids].tolist()}
    user = {}
    if q is not None:
        user = {"known": q.uid is not None and not q.user.all_missing, "recent_item_ids": q.recent[:max_ids].tolist(),
                "seen": int(q.seen.size), "missing_features": sorted(q.user.missing),
                "feature_rows": describe_rows(q.user.event_ts, time.time())}
    return {"model_version": result.model_version, "sources": sources, "filters": filters,
            "seconds": {k: round(v, 6) for k, v in trace.seconds.items()}, "user": user}
