"""``two_tower``: the user tower embeds the query (ONNX), FAISS returns the nearest items.

Ids in the index are item ids; scores are inner products. A user with no signal at all (not in
the model, no online features, nothing recent) gets nothing from this source: a query embedding
built from defaults only would rank the same arbitrary items for every stranger.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from common.bundle import Bundle, BundleError
from common.model_inputs import USER_EMBEDDING, ModelInputs
from common.onnx import cpu_session
from services.components.candidate_source import CandidateSource
from services.components.types import Candidates, Query

log = logging.getLogger(__name__)


class TwoTowerSource(CandidateSource):
    artifacts = ("user_tower", "item_index")

    def __init__(self, name: str, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        super().__init__(name)
        self.nprobe = nprobe  # None: the bundle's tuned value
        self.ef_search = ef_search
        self._single_threaded = threading.local()

    def load_artifacts(self, bundle: Bundle) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # one query per call: threads only add wake-up jitter
        index = faiss.read_index(str(bundle.path("item_index")))
        if index.d != bundle.embedding_dim:
            raise BundleError(f"item_index has dimension {index.d}, manifest says {bundle.embedding_dim}")
        meta = bundle.manifest.get("index") or {}
        params = {"nprobe": self.nprobe if self.nprobe is not None else meta.get("nprobe"),
                  "efSearch": self.ef_search if self.ef_search is not None
                  else meta.get("ef_search", meta.get("efSearch"))}
        space = faiss.ParameterSpace()
        for param, value in params.items():
            if value is not None:
                try:
                    space.set_index_parameter(index, param, int(value))
                except RuntimeError:  # not an IVF / HNSW index: the parameter does not apply
                    log.debug("index %s ignores %s", type(index).__name__, param)
        self.index = index
        self.ntotal = int(index.ntotal)
        self._can_reconstruct = _enable_reconstruct(index)
        self.inputs = ModelInputs.from_bundle(bundle)
        self.session = cpu_session(bundle.path("user_tower"))  # one thread: see common.onnx
        self._n_recent = self.inputs.n_recent
        log.info("two_tower: index %s (%d items, d=%d)", type(index).__name__, index.ntotal, index.d)

    def has_signal(self, query: Query) -> bool:
        row = 0 if query.uid is None else int(self.inputs.user_rows(np.array([query.uid]))[0])
        return row > 0 or query.recent.size > 0 or not query.user.all_missing

    def embed(self, query: Query) -> np.ndarray:
        """The query embedding [1, d], computed once per request (kept in ``query.scratch``)."""
        emb = query.scratch.get(self.name)
        if emb is None:
            feed = self.inputs.user_tower_feed(query.uid, query.user.values, query.recent[: self._n_recent])
            emb = query.scratch[self.name] = self.session.run([USER_EMBEDDING], feed)[0]
        return emb

    def score_items(self, query: Query, item_ids: np.ndarray) -> np.ndarray | None:
        """The inner product of the query with each item's stored vector: what the ranker's
        ``retrieval_score`` feature was trained on, whatever source proposed the item."""
        if not self._can_reconstruct or item_ids.size == 0 or not self.has_signal(query):
            return None
        vectors = self.index.reconstruct_batch(np.ascontiguousarray(item_ids, np.int64))
        return (vectors @ self.embed(query)[0]).astype(np.float32, copy=False)

    def fetch(self, query: Query, n: int) -> Candidates:
        if n <= 0 or not self.has_signal(query):
            return Candidates.empty(self.name)
        if not getattr(self._single_threaded, "done", False):
            # OpenMP's thread count is per calling thread: the artifacts load in a worker thread,
            # requests are served on the event loop's. One query per call: extra OpenMP threads
            # only spin and wait (8 ms instead of 0.04 ms on a busy 2-core machine).
            import faiss

            faiss.omp_set_num_threads(1)
            self._single_threaded.done = True
        scores, ids = self.index.search(self.embed(query), min(n, self.ntotal))
        ids, scores = ids[0], scores[0]
        found = ids >= 0  # FAISS pads with -1 when it finds fewer than asked
        return Candidates(ids[found], scores[found].astype(np.float32, copy=False), self.name)


def _enable_reconstruct(index) -> bool:
    """Can the index return an item's vector by id? IDMap2 can; an IVF index needs its direct
    map (a hash table from id to list position, ~16 bytes per item)."""
    import faiss

    if index.ntotal == 0:
        return False
    probe = np.array([faiss.vector_to_array(index.id_map)[0]] if hasattr(index, "id_map") else [], np.int64)
    try:
        if probe.size:
            index.reconstruct_batch(probe)
            return True
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            return False
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return True
    except RuntimeError:
        return False


COMPONENT = TwoTowerSource
