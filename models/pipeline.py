"""data -> train -> evaluate -> gate -> publish -> feast apply + materialise.

Stages (each a plain function, runnable in-process from tests):

1. ``prepare``: fetch MovieLens-100K, split per user by time, write the Feast offline parquet.
2. Two two-tower models: ``R`` without each user's last ``label_events`` timestamps before the test
   one (those become the ranker's labelled events), and the served ``F``: R continued for
   ``finetune_epochs`` on train + valid (warm start: a second full training would double the time).
3. Ranker training set: R's top candidates at every labelled event, features from Feast
   ``get_historical_features`` (point-in-time), matrix from ``ModelInputs.ranker_matrix``.
4. Evaluation on the test set (the user's latest timestamp), identical exclusions for every
   method: popularity, two-tower exact, two-tower via HNSW, exact retrieval + ranker; and the
   ``item_to_item`` co-visitation source (built from train + valid only): alone, merged into
   two-tower's candidates (``common.item_neighbors.merge_candidates``) and ranked.
5. Gate: the two-tower must beat popularity on Recall@100, else nothing is published. It runs as
   soon as those two metrics exist, before the HNSW and ranker evaluation of step 4.
6. Bundle -> ``common.bundle.publish``; then Feast apply + materialise.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from common.bundle import MANIFEST, file_entries, metric, publish
from common.item_neighbors import ItemNeighbors, merge_candidates
from common.model_inputs import ModelInputs
from common.onnx import cpu_session
from common.settings import FeatureStoreSettings
from feature_store.repo.definitions import feature_views_schema
from models import data as D
from models import evaluate as E
from models.config import BUNDLE_FILES, PipelineConfig

USER_CAT_SOURCES = ["user_profile:age_bucket", "user_profile:gender", "user_profile:occupation"]
RANKER_REFS = [
    "user_profile:age", "user_profile:gender",
    "user_aggregates:n_interactions", "user_aggregates:mean_rating", "user_aggregates:genre_affinity",
    "item_profile:year", "item_profile:genres",
    "item_aggregates:popularity", "item_aggregates:n_ratings", "item_aggregates:mean_rating",
]


class GateError(RuntimeError):
    """The candidate bundle is worse than the popularity baseline: not published."""


def gate(metrics: dict) -> None:
    """Refuse a bundle whose two-tower Recall@100 is not above popularity's."""
    tt = metric({"metrics": metrics}, "retrieval.recall@100")
    pop = metric({"metrics": metrics}, "popularity.recall@100")
    if not tt > pop:
        raise GateError(
            f"validation gate: two-tower recall@100 {tt:.4f} is not above popularity's {pop:.4f}; "
            "the bundle is not published"
        )


@dataclass
class Prepared:
    ds: D.Dataset
    states: pd.DataFrame
    user_ids: np.ndarray  # row -> id, row 0 = -1
    item_ids: np.ndarray
    inputs: ModelInputs
    item_feed: dict[str, np.ndarray]
    item_year: np.ndarray  # by item row
    item_genres: np.ndarray  # by item row
    raw_sha256: dict[str, str]
    item_emb: np.ndarray | None = None  # by item row, of the model being evaluated
    feed_tables: tuple | None = None


def prepare(cfg: PipelineConfig, fs_settings: FeatureStoreSettings, log: Callable[[str], None] = print) -> Prepared:
    from models.ranker import feature_spec
    from models.two_tower import ITEM_GENRES, ITEM_IDX, ITEM_YEAR, user_tower_spec

    sha = D.fetch(cfg.raw_dir, log=log)
    ds = D.load(cfg.raw_dir, events=cfg.events_path)
    D.save_splits(ds, cfg.processed_dir)
    states = D.user_history_states(ds, cfg.n_recent)
    D.write_feature_sources(ds, fs_settings.offline_dir, states, cfg.item_snapshot_days, cfg.popularity_half_life_days)
    user_ids = np.r_[-1, np.sort(ds.users["user_id"].to_numpy())].astype(np.int64)
    item_ids = np.r_[-1, ds.items["item_id"].to_numpy()].astype(np.int64)  # items sorted by id
    G = len(ds.genres)
    cards = [len(D.AGE_BUCKETS) + 2, 3, len(ds.occupations) + 1]
    spec = user_tower_spec(USER_CAT_SOURCES, cards, G, cfg.n_recent, cfg.two_tower.dim)
    inputs = ModelInputs(user_ids, item_ids, spec, feature_spec(ds.genres), G)
    genres = np.zeros((len(item_ids), G), np.float32)
    genres[1:] = np.stack(ds.items["genres"].to_numpy())
    year = np.zeros(len(item_ids), np.float32)
    year[1:] = ds.items["year"].to_numpy(np.float32)
    item_feed = {ITEM_IDX: np.arange(len(item_ids), dtype=np.int64), ITEM_GENRES: genres, ITEM_YEAR: year}
    return Prepared(ds, states, user_ids, item_ids, inputs, item_feed, year, genres, sha)


def user_feed_at(p: Prepared, user_ids: np.ndarray, ts: np.ndarray) -> dict[str, np.ndarray]:
    """User tower inputs for each (user, t), from history strictly before t (the semantics of the
    Feast rows). The per-state and per-user parts are built once by
    ``ModelInputs.user_tower_feed_batch`` (:func:`_feed_tables`) and gathered here."""
    from common.model_inputs import RECENT_ITEM_IDX, USER_CAT, USER_GENRE_AFFINITY, USER_IDX

    if p.feed_tables is None:
        p.feed_tables = _feed_tables(p)
        p.states = p.states.assign(_sidx=np.arange(len(p.states)))
    per_state, per_user = p.feed_tables
    st = D.states_before(p.states, user_ids, ts)
    sidx = st["_sidx"].fillna(-1).to_numpy(np.int64)
    has = sidx >= 0
    rows = p.inputs.user_rows(np.asarray(user_ids, np.int64))
    aff = np.where(has[:, None], per_state[USER_GENRE_AFFINITY][np.maximum(sidx, 0)], 0.0).astype(np.float32)
    recent = np.where(has[:, None], per_state[RECENT_ITEM_IDX][np.maximum(sidx, 0)], 0).astype(np.int64)
    return {USER_IDX: rows, USER_CAT: per_user[USER_CAT][rows], USER_GENRE_AFFINITY: aff, RECENT_ITEM_IDX: recent}


def _feed_tables(p: Prepared) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(feed per history state row, feed per user row with profile only)."""
    st = p.states
    per_state = p.inputs.user_tower_feed_batch(
        st["user_id"].to_numpy(),
        [{"user_aggregates:genre_affinity": a} for a in st["genre_affinity"]],
        list(st["recent_item_ids"]),
    )
    prof = p.ds.users.set_index("user_id")
    values = [{}]  # row 0: unknown user
    for uid in p.user_ids[1:]:
        values.append({s: int(prof.at[uid, s.split(":")[1]]) for s in USER_CAT_SOURCES} if uid in prof.index else {})
    per_user = p.inputs.user_tower_feed_batch(p.user_ids, values, [()] * len(p.user_ids))
    return per_state, per_user


def label_events(ds: D.Dataset, n_events: int) -> pd.DataFrame:
    """Each user's last ``n_events`` distinct timestamps before the test one (valid included)."""
    inter = ds.interactions[ds.interactions["split"] != "test"]
    rank = inter.groupby("user_id")["ts"].rank(method="dense", ascending=False)
    return inter.assign(event_rank=rank)[rank <= n_events]


def train_two_tower(p: Prepared, inter: pd.DataFrame, cfg: PipelineConfig, progress=None, init=None):
    """Train on ``inter`` (fresh, or continuing ``init`` for ``finetune_epochs``)."""
    from models import two_tower as TT

    feed = user_feed_at(p, inter["user_id"].to_numpy(), inter["ts"].to_numpy())
    pos = p.inputs.item_rows(inter["item_id"].to_numpy())
    cards = [int(c) for c in p.inputs.user_cat_cardinality]
    tt = cfg.two_tower
    if init is None:
        return TT.train(feed, pos, p.item_feed, len(p.user_ids), cards, tt, cfg.seed, progress=progress)
    return TT.train(feed, pos, p.item_feed, len(p.user_ids), cards, tt, cfg.seed + 1, progress=progress,
                    init=init, epochs=tt.finetune_epochs, lr=tt.finetune_lr)


def seen_before(inter: pd.DataFrame, user_ids: np.ndarray, ts: np.ndarray) -> list[set[int]]:
    """Per query: the items the user interacted with strictly before t."""
    by_user = {u: (g["ts"].to_numpy(), g["item_id"].to_numpy()) for u, g in inter.groupby("user_id")}
    out = []
    for u, t in zip(user_ids, ts, strict=True):
        uts, uit = by_user.get(int(u), (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        out.append({int(i) for i in uit[uts < t]})
    return out


def candidates(p: Prepared, user_emb: np.ndarray, exclude: list[set[int]], k: int):
    """Exact top-k item ids and scores per user, skipping excluded items."""
    rows_ex = [p.inputs.item_rows(np.fromiter(e, np.int64, len(e))) for e in exclude]
    item_emb = p.item_emb
    emb = item_emb.copy()
    emb[0] = 0.0  # row 0 is padding, never a candidate
    rows_ex = [np.r_[r, 0] for r in rows_ex]
    return E.topk_exact(user_emb, emb, rows_ex, k, item_ids=p.item_ids)


def historical_features(store, entity: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features for (user_id, item_id, event_timestamp) rows, in the input order.

    One ``get_historical_features`` call per feature view, each with only that view's join key:
    Feast 0.67's file (dask) offline store de-duplicates on the join keys of the views processed
    so far (so a user view collapses rows of different items at the same time) and drops entity
    rows whose entity has only later feature rows, which would also lose the other views'
    values. Rows Feast leaves out get no value (the reader's defaults).
    """
    from feature_store.repo.definitions import ENTITY_JOIN_KEYS, FEATURE_VIEWS

    out = entity[["user_id", "item_id", "event_timestamp"]].copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).dt.as_unit("ns")
    for view in dict.fromkeys(r.split(":")[0] for r in RANKER_REFS):
        key = ENTITY_JOIN_KEYS[FEATURE_VIEWS[view][0]]
        refs = [r for r in RANKER_REFS if r.startswith(view + ":")]
        ent = out[[key, "event_timestamp"]].drop_duplicates()
        df = store.get_historical_features(entity_df=ent, features=refs, full_feature_names=True).to_df()
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True).dt.as_unit("ns")
        out = out.merge(df[[key, "event_timestamp", *(r.replace(":", "__") for r in refs)]],
                        on=[key, "event_timestamp"], how="left", validate="many_to_one")
    if len(out) != len(entity):
        raise RuntimeError("point-in-time join changed the number of rows")
    return out


def feature_dicts(df: pd.DataFrame, n_genres: int) -> tuple[dict, dict]:
    """Feast output columns (``view__feature``) -> (user values per row, item values per row)."""
    def col(ref: str) -> np.ndarray:
        s = df[ref.replace(":", "__")]
        if ref.endswith(("genre_affinity", "genres")):
            z = np.zeros(n_genres, np.float32)
            return np.stack([np.asarray(v, np.float32) if _is_vector(v, n_genres) else z for v in s])
        return s.astype("float64").fillna(0.0).to_numpy(np.float32)

    user = {r: col(r) for r in RANKER_REFS if r.startswith("user_")}
    item = {r: col(r) for r in RANKER_REFS if r.startswith("item_")}
    return user, item


def _is_vector(v, n: int) -> bool:
    return isinstance(v, list | tuple | np.ndarray) and len(v) == n


def ranker_dataset(p: Prepared, store, cand_ids: np.ndarray, cand_scores: np.ndarray, users: np.ndarray,
                   ts: np.ndarray, positives: list[set[int]] | None, keep_negatives: int | None, seed: int):
    """Rows for every (event, candidate): features via Feast + ``ModelInputs.ranker_matrix``."""
    rng = np.random.default_rng(seed)
    rows_u, rows_i, rows_t, rows_s, rows_y, rows_g = [], [], [], [], [], []
    for g, (u, t, ids, sc) in enumerate(zip(users, ts, cand_ids, cand_scores, strict=True)):
        ok = ids >= 0
        ids, sc = ids[ok], sc[ok]
        y = np.zeros(len(ids), np.float32)
        if positives is not None:
            y = np.array([int(i) in positives[g] for i in ids], np.float32)
            if keep_negatives is not None:
                if not y.any():
                    continue
                neg = np.flatnonzero(y == 0)
                sel = np.sort(np.r_[np.flatnonzero(y > 0), rng.choice(neg, min(keep_negatives, len(neg)), replace=False)])
                ids, sc, y = ids[sel], sc[sel], y[sel]
        rows_u.append(np.full(len(ids), u, np.int64))
        rows_i.append(ids)
        rows_t.append(np.full(len(ids), t, np.int64))
        rows_s.append(sc)
        rows_y.append(y)
        rows_g.append(np.full(len(ids), g, np.int64))
    entity = pd.DataFrame({"user_id": np.concatenate(rows_u), "item_id": np.concatenate(rows_i),
                           "event_timestamp": D.to_time(np.concatenate(rows_t)).to_numpy()})
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    feats = historical_features(store, entity)
    user_vals, item_vals = feature_dicts(feats, p.inputs.n_genres)
    x = p.inputs.ranker_matrix(user_vals, item_vals, np.concatenate(rows_s))
    return x, np.concatenate(rows_y), np.concatenate(rows_g), entity, (user_vals, item_vals)


def rank(rank_sess, x: np.ndarray, groups: np.ndarray, entity: pd.DataFrame, n_groups: int) -> list[np.ndarray]:
    """Item ids of every group (request) ordered by the ranker's score, best first."""
    from models.ranker import FEATURES

    scores = rank_sess.run(None, {FEATURES: x})[0]
    ids_all = entity["item_id"].to_numpy()
    out = []
    for g in range(n_groups):
        m = groups == g
        out.append(ids_all[m][np.argsort(-scores[m], kind="stable")])
    return out


def recent_seeds(p: Prepared, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The user tower's recent items as item ids [U, n_recent], most recent first, -1 = padding:
    the item_to_item seeds come from the same history as the user embedding."""
    from common.model_inputs import RECENT_ITEM_IDX

    rows = feed[RECENT_ITEM_IDX]
    return np.where(rows > 0, p.item_ids[rows], -1)


def evaluate_item_to_item(p: Prepared, store, rank_sess, nbrs: ItemNeighbors, u_emb: np.ndarray,
                          feed: dict[str, np.ndarray], tt_ids: np.ndarray, t_users: np.ndarray,
                          t_ts: np.ndarray, t_pos: list[set[int]], excl: list[set[int]], k: int, quota: int,
                          seed: int) -> dict[str, dict]:
    """``metrics.merged``, ``metrics.item_to_item`` and ``metrics.ranked_with_item_to_item``.

    ``tt_ids``: two-tower's exact top (>= k) per user without ``excl``. Candidates per user are
    ``merge_candidates(two-tower, lookup(seeds, k, excl), k, quota)`` -- the serving merge; the
    ranker's ``retrieval_score`` of every candidate is the two-tower inner product u . e_item
    (what serving computes for candidates of any source)."""
    seeds = recent_seeds(p, feed)
    alone, merged = [], []
    for u in range(len(t_users)):
        ex = np.fromiter(excl[u], np.int64, len(excl[u]))
        ids, _ = nbrs.lookup(seeds[u], max(k, 100), ex)  # k: enough left after the two-tower head
        alone.append(ids[:100])
        merged.append(merge_candidates(tt_ids[u, :k], ids, k, quota)[0])
    cand = np.full((len(t_users), k), -1, np.int64)
    for u, m in enumerate(merged):
        cand[u, : m.size] = m
    item_emb = p.item_emb.astype(np.float32)
    rows = p.inputs.item_rows(np.maximum(cand, 0))
    cand_sc = np.einsum("ud,ukd->uk", u_emb.astype(np.float32), item_emb[rows]).astype(np.float32)
    cand_sc = np.where(cand >= 0, cand_sc, -np.inf).astype(np.float32)
    x, _, g, ent, _ = ranker_dataset(p, store, cand, cand_sc, t_users, t_ts, t_pos, None, seed)
    ranked = rank(rank_sess, x, g, ent, len(t_users))
    new = [m[~np.isin(m, tt_ids[u, :k])] for u, m in enumerate(merged)]  # not in two-tower's top k
    ks = (10, 50, 100, 200)
    return {
        "merged": {"two_tower": E.summarize([r[:k] for r in tt_ids], t_pos, ks=ks),
                   "two_tower+item_to_item": E.summarize(merged, t_pos, ks=ks),
                   "n_candidates": k, "quota": quota,
                   "mean_new_candidates": float(np.mean([n.size for n in new]))},
        "item_to_item": E.summarize(alone, t_pos) | {
            "users_with_seeds": float(np.mean((seeds >= 0).any(axis=1))),
            "users_with_candidates": float(np.mean([a.size > 0 for a in alone]))},
        "ranked_with_item_to_item": E.summarize(ranked, t_pos) | {
            # how often the ranker lifts an item only item_to_item brought into the first 10
            "mean_item_to_item_in_top10": float(np.mean([np.isin(r[:10], new[u]).sum() for u, r in enumerate(ranked)]))},
    }


def build_hnsw(item_emb: np.ndarray, item_ids: np.ndarray, m: int = 32, ef_search: int = 128):
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(item_emb.shape[1], m, faiss.METRIC_INNER_PRODUCT))
    faiss.downcast_index(index.index).hnsw.efConstruction = 200
    faiss.downcast_index(index.index).hnsw.efSearch = ef_search
    index.add_with_ids(np.ascontiguousarray(item_emb, np.float32), item_ids.astype(np.int64))
    return index


def build_exact(item_emb: np.ndarray, item_ids: np.ndarray):
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(item_emb.shape[1]))
    index.add_with_ids(np.ascontiguousarray(item_emb, np.float32), item_ids.astype(np.int64))
    return index


def latency_ms(fn, n: int = 300) -> dict[str, float]:
    for _ in range(20):
        fn()
    t = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        t.append((time.perf_counter() - s) * 1e3)
    return {"p50_ms": round(float(np.percentile(t, 50)), 4), "p99_ms": round(float(np.percentile(t, 99)), 4)}


def popular_items(inter: pd.DataFrame, half_life_days: float) -> pd.DataFrame:
    """Recency-weighted popularity as of just after the last interaction given (best first)."""
    pop = D.popularity_at(inter, int(inter["ts"].max()) + 1, half_life_days)
    return pop.sort_values(["popularity", "item_id"], ascending=[False, True]).reset_index(drop=True)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", "numpy", "pandas", "pyarrow", "faiss-cpu", "onnx", "onnxruntime", "feast"]
    return {n: md.version(n) for n in names} | {"python": platform.python_version()}


class Reporter:
    """Stage messages and per-epoch progress; the CLI swaps in rich progress bars."""

    def stage(self, name: str) -> None:
        print(f"== {name}")

    def epochs(self, name: str, total: int):
        def cb(loss: float) -> None:
            print(f"   {name}: loss {loss:.4f}")
        return cb

    def done(self, name: str, seconds: float) -> None:
        print(f"   {name} done in {seconds:.1f}s")


def run(cfg: PipelineConfig, fs_settings: FeatureStoreSettings, reporter: Reporter | None = None,
        materialize: bool = True, make_current: bool = True) -> tuple[Path, dict]:
    """The whole pipeline. Returns (published version folder, manifest). Raises GateError.
    ``make_current=False``: the gated bundle lands beside ``current`` as a candidate (canary it,
    shadow it or publish it later)."""
    import torch

    from feature_store import store as fs
    from models import covisit
    from models import ranker as RK
    from models import two_tower as TT

    rep = reporter or Reporter()
    torch.set_num_threads(cfg.torch_threads)
    np.random.seed(cfg.seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str):
        class _T:
            def __enter__(self):
                rep.stage(name)
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timings[name] = round(time.perf_counter() - self.t, 2)
                if exc[0] is None:
                    rep.done(name, timings[name])
        return _T()

    with timed("data"):
        p = prepare(cfg, fs_settings, log=lambda m: rep.stage(m))
        ds = p.ds
        G = len(ds.genres)
    with timed("feast_apply"):
        store = fs.apply(fs_settings)

    nonTest = ds.interactions[ds.interactions["split"] != "test"]
    test = ds.split("test")
    events_inter = label_events(ds, cfg.ranker.label_events)
    r_train = nonTest.drop(index=events_inter.index)

    with timed("two_tower_for_ranker_labels"):
        model_r = train_two_tower(p, r_train, cfg, rep.epochs("two-tower R", cfg.two_tower.epochs))
    with timed("two_tower"):
        model_f = train_two_tower(p, nonTest, cfg, rep.epochs("two-tower", cfg.two_tower.finetune_epochs), init=model_r)

    with timed("item_to_item"):
        # train + valid only: the test interactions must not shape the candidates evaluated on them
        cv = cfg.item_to_item
        nbrs = covisit.build(nonTest, cv.window_s, cv.top_n, min_count=cv.min_count)

    K = cfg.ranker.n_candidates
    with timed("ranker_training_set"):
        ev = events_inter.groupby(["user_id", "ts"])["item_id"].apply(lambda s: {int(i) for i in s}).reset_index()
        ev_users, ev_ts = ev["user_id"].to_numpy(), ev["ts"].to_numpy()
        p.item_emb = model_r.item_embeddings(p.item_feed)
        u_emb = model_r.user_embeddings(user_feed_at(p, ev_users, ev_ts))
        c_ids, c_sc = candidates(p, u_emb, seen_before(nonTest, ev_users, ev_ts), K)
        x_tr, y_tr, g_tr, _, _ = ranker_dataset(p, store, c_ids, c_sc, ev_users, ev_ts, list(ev["item_id"]),
                                             keep_negatives=K // 4, seed=cfg.seed)
        np.savez_compressed(Path(cfg.processed_dir) / "ranker_train.npz", x=x_tr, y=y_tr, group=g_tr)
        # validation metrics of model R (its held-out events include the validation set)
        val = ev.merge(ds.split("valid")[["user_id", "ts"]].drop_duplicates(), on=["user_id", "ts"])
        vmask = ev.set_index(["user_id", "ts"]).index.isin(val.set_index(["user_id", "ts"]).index)
        valid_metrics = E.summarize(list(c_ids[vmask]), list(ev["item_id"][vmask]), ks=(10, 50, 100))
    spec = p.inputs.ranker_features
    with timed("ranker"):
        ranker = RK.train(x_tr, y_tr, g_tr, spec, cfg.ranker, cfg.seed, rep.epochs("ranker", cfg.ranker.epochs))

    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    staging = Path(cfg.artifacts_dir) / f".staging-{version}"
    staging.mkdir(parents=True)
    with timed("export"):
        p.item_emb = model_f.item_embeddings(p.item_feed)
        example = user_feed_at(p, test["user_id"].to_numpy()[:4], test["ts"].to_numpy()[:4])
        TT.export_user_tower(model_f, example, staging / "user_tower.onnx")
        TT.export_item_tower(model_f, p.item_feed, staging / "item_tower.onnx")
        RK.export(ranker, len(spec), staging / "ranker.onnx")
        np.save(staging / "user_ids.npy", p.user_ids, allow_pickle=False)
        np.save(staging / "item_ids.npy", p.item_ids, allow_pickle=False)
        nbrs.save(staging / "item_neighbors.npz")

    with timed("evaluate"):
        tq = test.groupby("user_id").agg(ts=("ts", "first"), items=("item_id", lambda s: {int(i) for i in s}))
        t_users, t_ts, t_pos = tq.index.to_numpy(), tq["ts"].to_numpy(), list(tq["items"])
        excl = seen_before(nonTest, t_users, t_ts)
        user_sess = cpu_session(staging / "user_tower.onnx")
        feed = user_feed_at(p, t_users, t_ts)
        u_emb = user_sess.run(None, feed)[0]
        metrics: dict[str, dict] = {}
        pop = popular_items(nonTest, cfg.popularity_half_life_days)
        pop_ids = pop["item_id"].to_numpy()
        metrics["popularity"] = E.summarize(
            [[i for i in pop_ids[: 100 + len(ex)] if int(i) not in ex][:100] for ex in excl], t_pos)
        ex_ids, ex_sc = candidates(p, u_emb, excl, max(K, 100))
        metrics["retrieval"] = E.summarize(list(ex_ids), t_pos)

    # The gate needs only the two metrics above: refuse before the ranker's test-set features,
    # the ANN index and the latency probes (~30 s of the tiny test run's ~50 s).
    with timed("gate"):
        try:
            gate(metrics)
        except GateError:
            shutil.rmtree(staging, ignore_errors=True)  # nothing of a refused bundle stays behind
            raise

    with timed("evaluate_index_and_ranker"):
        item_index_emb = p.item_emb[1:]
        hnsw = build_hnsw(item_index_emb, p.item_ids[1:])
        ann_ids, _ = E.search_excluding(hnsw, u_emb, excl, 100)
        metrics["retrieval_ann"] = E.summarize(list(ann_ids), t_pos)
        metrics["ann"] = {"recall@100_vs_exact": E.overlap_at_k(ann_ids, ex_ids, 100)}
        rank_sess = cpu_session(staging / "ranker.onnx")
        x_te, y_te, g_te, ent_te, _test_feature_dicts = ranker_dataset(
            p, store, ex_ids[:, :K], ex_sc[:, :K], t_users, t_ts, t_pos, None, cfg.seed)
        np.savez_compressed(Path(cfg.processed_dir) / "ranker_test.npz", x=x_te, y=y_te, group=g_te)
        metrics["ranked"] = E.summarize(rank(rank_sess, x_te, g_te, ent_te, len(t_users)), t_pos)
        metrics["validation"] = {"two_tower_r": valid_metrics}
        x500 = np.ascontiguousarray(np.resize(x_te, (500, x_te.shape[1])), np.float32)
        rank_lat = latency_ms(lambda: rank_sess.run(None, {RK.FEATURES: x500}))
        tower_lat = latency_ms(lambda: user_sess.run(None, {k: v[:1] for k, v in feed.items()}))
        uv_all, iv_all = _test_feature_dicts
        one_user = {r: v[0] for r, v in uv_all.items()}
        items500 = {r: np.ascontiguousarray(np.resize(v, (500, *v.shape[1:]))) for r, v in iv_all.items()}
        matrix_lat = latency_ms(lambda: p.inputs.ranker_matrix(one_user, items500, x500[:, 0]))

    with timed("evaluate_item_to_item"):
        metrics |= evaluate_item_to_item(p, store, rank_sess, nbrs, u_emb, feed, ex_ids, t_users, t_ts, t_pos,
                                         excl, K, cfg.item_to_item.quota, cfg.seed)
        seeds_1 = recent_seeds(p, {k: v[:1] for k, v in feed.items()})[0]
        excl_1 = np.fromiter(excl[0], np.int64, len(excl[0]))
        lookup_lat = latency_ms(lambda: nbrs.lookup(seeds_1, K, excl_1))

    with timed("bundle"):
        exact = build_exact(item_index_emb, p.item_ids[1:])
        n_items = len(p.item_ids) - 1
        use_ann = n_items >= cfg.ann_min_items
        import faiss

        faiss.write_index(hnsw if use_ann else exact, str(staging / "item_index.faiss"))
        pop_json = [{"item_id": int(i), "score": round(float(s), 6)} for i, s in zip(pop["item_id"], pop["popularity"], strict=True)]
        (staging / "popular_items.json").write_text(json.dumps(pop_json))
        catalog = ds.items[["item_id", "title", "year"]].copy()
        catalog.to_parquet(staging / "item_catalog.parquet", index=False)
        names = dict(BUNDLE_FILES)
        timings["total_before_publish"] = round(time.perf_counter() - t_all, 2)
        manifest = {
            "format_version": 1,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": {"name": "MovieLens-100K", "source": f"PyPI wheel {D.RECBOLE} (recbole/dataset_example/ml-100k)",
                        "sha256": p.raw_sha256, "interactions": int(len(ds.interactions)),
                        "events": ds.events,
                        "users": int(len(ds.users)), "items": n_items,
                        "split": {"train": int((ds.interactions["split"] == "train").sum()),
                                  "valid": int(len(ds.split("valid"))), "test": int(len(test)),
                                  "rule": "per user by time: test = latest timestamp, valid = the one before"}},
            "files": file_entries(staging, names),
            "embedding_dim": cfg.two_tower.dim,
            "genres": ds.genres,
            "user_tower": _user_tower_manifest(p, cfg),
            "item_tower": TT.item_tower_spec(G, cfg.two_tower.dim),
            "ranker_features": spec,
            "feature_views": feature_views_schema(),
            "ranker": {"file": "ranker", "input": RK.FEATURES, "output": RK.SCORE, "n_features": len(spec),
                       "architecture": f"MLP {len(spec)}->{'->'.join(map(str, cfg.ranker.hidden))}->1 "
                                       "(log1p + standardisation inside the graph)",
                       "n_candidates": K, "training_events": int(len(np.unique(g_tr))),
                       "training_rows": int(len(y_tr)), "final_loss": round(ranker.final_loss, 5),
                       "best_epoch": ranker.best_epoch, "heldout_event_loss": round(ranker.val_loss, 5),
                       "training_data": "R's top candidates at each user's last label_events timestamps before "
                                        "the test one (valid included), positives + K/4 sampled negatives; "
                                        "features by Feast point-in-time join",
                       "latency_500_rows_1_thread": rank_lat,
                       "why": "listwise MLP over retrieval score, popularity, profile and user-genre cross "
                              "features; see metrics.ranked vs metrics.retrieval and the latency here"},
            "index": {"file": "item_index", "type": "IDMap2,HNSW32,Flat" if use_ann else "IDMap2,Flat",
                      "metric": "inner_product", "ntotal": n_items, "ids": "item ids",
                      "reason": (f"{n_items} items < {cfg.ann_min_items}: exact search is cheap and has no recall loss; "
                                 "HNSW32 (efSearch 128) is evaluated alongside (metrics.retrieval_ann, "
                                 "metrics.ann)") if not use_ann else f"{n_items} items: HNSW32, efSearch 128",
                      "ef_search": 128 if use_ann else None,
                      "evaluated_ann": {"type": "IDMap2,HNSW32,Flat", "M": 32, "ef_construction": 200,
                                        "ef_search": 128, "metrics": ["retrieval_ann.*", "ann.recall@100_vs_exact"]}},
            "item_to_item": {"file": "item_neighbors", "window_s": cfg.item_to_item.window_s,
                             "top_n": cfg.item_to_item.top_n, "min_count": cfg.item_to_item.min_count,
                             "quota": cfg.item_to_item.quota, "n_candidates": K,
                             "items_with_neighbors": nbrs.items_with_neighbors,
                             "mean_neighbors": round(nbrs.mean_neighbors, 3),
                             "built_from": "train+valid interactions",
                             "score": "users who interacted with both within window_s / sqrt(n_i * n_j)",
                             "seeds": "user_context:recent_item_ids (the user tower's recent items), most "
                                      "recent first, weight 1 / (1 + position)",
                             "merge": "two-tower top (n_candidates - quota), then item_to_item's top quota "
                                      "not already taken, then two-tower to n_candidates "
                                      "(common.item_neighbors.merge_candidates)",
                             "build_seconds": timings["item_to_item"],
                             "lookup_1_request": lookup_lat},
            "popular_items": {"half_life_days": cfg.popularity_half_life_days,
                              "as_of": D.to_time([int(nonTest["ts"].max()) + 1])[0].isoformat()},
            "metrics": metrics,
            "latency": {"user_tower_1_row": tower_lat, "ranker_500_rows": rank_lat,
                        "ranker_matrix_500_rows": matrix_lat},
            "training": {"config": cfg.to_json(),
                         "two_tower": {"warm_start": "two_tower_for_ranker_labels, continued for "
                                                     "finetune_epochs on train + valid",
                                       "train_seconds": round(model_f.train_seconds, 2),
                                       "final_loss": round(model_f.final_loss, 5),
                                       "interactions": int(len(nonTest))},
                         "two_tower_for_ranker_labels": {"train_seconds": round(model_r.train_seconds, 2),
                                                         "interactions": int(len(r_train))},
                         "ranker_train_seconds": round(ranker.train_seconds, 2),
                         "seed": cfg.seed},
            "libraries": library_versions(),
            "timings_seconds": timings,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
        target = publish(staging, Path(cfg.artifacts_dir), version, make_current=make_current)

    if materialize:
        with timed("feast_materialize"):
            fs.materialize(fs_settings, store=store)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    return target, manifest


def _user_tower_manifest(p: Prepared, cfg: PipelineConfig) -> dict:
    from models.two_tower import user_tower_spec

    cards = [int(c) for c in p.inputs.user_cat_cardinality]
    return user_tower_spec(USER_CAT_SOURCES, cards, p.inputs.n_genres, cfg.n_recent, cfg.two_tower.dim)
