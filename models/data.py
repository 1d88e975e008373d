"""MovieLens-100K: fetch, load, time-aware split, Feast offline sources.

Raw data comes from the ``recbole==1.2.1`` wheel on PyPI (``pip download --no-deps``; recbole
itself is never installed): only ``ml-100k.{inter,user,item}`` are extracted.

Split (per user, by time): all interactions at the user's latest timestamp are the test set,
those at the latest timestamp before it the validation set, the rest train. Ties share a split,
so every test interaction is strictly later than every train/valid interaction of that user.

Feature rows are stamped so that a point-in-time join at time t only sees interactions strictly
before t: a row summarising interactions with ``ts <= tau`` is stamped ``tau + 1s`` (timestamps
are whole seconds).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

RECBOLE = "recbole==1.2.1"
RAW_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
PROFILE_TIME = pd.Timestamp("1995-01-01", tz="UTC")  # static profile rows: before every rating
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M style: 1 = under 18 ... 7 = 56+
ONE_SECOND = pd.Timedelta(seconds=1)


def fetch(raw_dir: Path, log=print) -> dict[str, str]:
    """Extract the three raw files into ``raw_dir`` (no-op when present). Returns sha256s."""
    raw_dir = Path(raw_dir)
    if not all((raw_dir / f).is_file() for f in RAW_FILES):
        raw_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            log(f"downloading {RECBOLE} wheel (data only; recbole is not installed)")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, RECBOLE],
                check=True,
            )
            wheel = next(Path(tmp).glob("recbole-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for name in RAW_FILES:
                    data = zf.read(f"recbole/dataset_example/ml-100k/{name}")
                    part = raw_dir / f".{name}.part"
                    part.write_bytes(data)
                    part.replace(raw_dir / name)
    return checksums(raw_dir)


def checksums(raw_dir: Path) -> dict[str, str]:
    return {f: hashlib.sha256((Path(raw_dir) / f).read_bytes()).hexdigest() for f in RAW_FILES}


@dataclass
class Dataset:
    interactions: pd.DataFrame  # user_id, item_id, rating, ts (int seconds), split
    users: pd.DataFrame  # user_id, age, age_bucket, gender, occupation
    items: pd.DataFrame  # item_id, title, year, genres (list[float] multi-hot)
    genres: list[str]
    occupations: list[str]
    events: dict | None = None  # what ``load(events=...)`` folded in (None: MovieLens alone)

    def split(self, name: str) -> pd.DataFrame:
        return self.interactions[self.interactions["split"] == name]


def age_bucket(age: np.ndarray) -> np.ndarray:
    age = np.asarray(age, dtype=np.float64)
    return np.where(np.isnan(age) | (age <= 0), 0, np.searchsorted(AGE_BUCKETS, age, side="right") + 1)


# Logged events folded into training (``models run --events``) as interactions with this rating:
# explicit ratings keep their value; impressions are not interactions.
EVENT_RATINGS = {"view": 3.0, "click": 4.0, "add_to_cart": 4.0, "purchase": 5.0}


def read_events(path: Path) -> pd.DataFrame:
    """An events export (``python -m services.events export``: parquet or JSON lines with
    event_id, user_id, item_id, type, ts, value) as a frame, one row per event_id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"events file {path} does not exist (write one with `python -m services.events export`)")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True, dtype=False)
    missing = {"event_id", "user_id", "item_id", "type", "ts"} - set(df.columns)
    if missing:
        raise ValueError(f"events file {path} lacks column(s) {', '.join(sorted(missing))}")
    if "value" not in df.columns:
        df["value"] = np.nan
    return df.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def events_as_interactions(events: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Events of known users on known items as ``user_id, item_id, rating, ts`` rows, and what
    was kept and dropped (recorded in the manifest)."""
    uid = pd.to_numeric(events["user_id"], errors="coerce")
    rating = events["type"].map(EVENT_RATINGS)
    is_rating = events["type"] == "rating"
    rating = rating.where(~is_rating, pd.to_numeric(events["value"], errors="coerce").clip(1, 5))
    keep = uid.isin(user_ids) & events["item_id"].isin(item_ids) & rating.notna()
    out = pd.DataFrame({"user_id": uid[keep].astype("int64"), "item_id": events["item_id"][keep].astype("int64"),
                        "rating": rating[keep].astype("float32"),
                        "ts": pd.to_numeric(events["ts"][keep]).astype("float64").astype("int64")})
    info = {"events": int(len(events)), "folded": int(keep.sum()),
            "dropped": {"unknown_user": int((~uid.isin(user_ids)).sum()),
                        "unknown_item": int((uid.isin(user_ids) & ~events["item_id"].isin(item_ids)).sum()),
                        "not_an_interaction": int((uid.isin(user_ids) & events["item_id"].isin(item_ids)
                                                   & rating.isna()).sum())}}
    return out, info


def load(raw_dir: Path, events: Path | None = None) -> Dataset:
    """``events``: an events export folded in as interactions (before the split, so a user's
    latest events become their test interactions)."""
    raw_dir = Path(raw_dir)
    inter = pd.read_csv(raw_dir / "ml-100k.inter", sep="\t")
    inter.columns = ["user_id", "item_id", "rating", "ts"]
    inter = inter.astype({"user_id": "int64", "item_id": "int64", "rating": "float32", "ts": "int64"})
    events_info = None
    if events is not None:
        known_items = pd.read_csv(raw_dir / "ml-100k.item", sep="\t", usecols=[0]).iloc[:, 0].astype("int64")
        known_users = pd.read_csv(raw_dir / "ml-100k.user", sep="\t", usecols=[0]).iloc[:, 0].astype("int64")
        folded, events_info = events_as_interactions(read_events(events), known_users.to_numpy(), known_items.to_numpy())
        events_info["path"] = str(events)
        inter = pd.concat([inter, folded], ignore_index=True)
    inter = inter.sort_values(["user_id", "ts", "item_id"], kind="stable").reset_index(drop=True)
    inter["split"] = split_labels(inter)

    users = pd.read_csv(raw_dir / "ml-100k.user", sep="\t", dtype=str)
    users.columns = ["user_id", "age", "gender", "occupation", "zip_code"]
    occupations = sorted(users["occupation"].dropna().unique())
    u = pd.DataFrame({"user_id": users["user_id"].astype("int64")})
    u["age"] = pd.to_numeric(users["age"], errors="coerce").astype("float32")
    u["age_bucket"] = age_bucket(u["age"].to_numpy()).astype("int64")
    u["gender"] = users["gender"].map({"M": 1, "F": 2}).fillna(0).astype("int64")
    u["occupation"] = users["occupation"].map({o: i + 1 for i, o in enumerate(occupations)}).fillna(0).astype("int64")

    items = pd.read_csv(raw_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = ["item_id", "title", "year", "genres"]
    genres = sorted({g for s in items["genres"] for g in s.split()})
    gidx = {g: i for i, g in enumerate(genres)}
    multi_hot = np.zeros((len(items), len(genres)), np.float32)
    for r, s in enumerate(items["genres"]):
        for g in s.split():
            multi_hot[r, gidx[g]] = 1.0
    it = pd.DataFrame({"item_id": items["item_id"].astype("int64"), "title": items["title"].str.strip()})
    it["year"] = pd.to_numeric(items["year"], errors="coerce").fillna(0).astype("float32")
    it["genres"] = list(multi_hot)
    return Dataset(inter, u, it.sort_values("item_id").reset_index(drop=True), genres, occupations, events_info)


def split_labels(inter: pd.DataFrame) -> np.ndarray:
    """``test`` = the user's latest timestamp, ``valid`` = the latest before it, else ``train``."""
    ts_rank = inter.groupby("user_id")["ts"].rank(method="dense", ascending=False).to_numpy()
    return np.where(ts_rank == 1, "test", np.where(ts_rank == 2, "valid", "train"))


def to_time(ts: np.ndarray | pd.Series) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="s", utc=True))


# ---- point-in-time feature tables (Feast offline sources) -------------------------------------

def user_history_states(ds: Dataset, n_recent: int) -> pd.DataFrame:
    """One row per (user, distinct ts tau): aggregates over the user's interactions with ts <= tau.

    Columns: user_id, tau, n_interactions, mean_rating, genre_affinity, recent_item_ids,
    recent_count_1h, recent_count_24h (the counts are of interactions in the hour/day up to tau).
    """
    inter = ds.interactions
    n_genres = len(ds.genres)
    item_genres = np.stack(ds.items["genres"].to_numpy())
    item_row = {int(i): r for r, i in enumerate(ds.items["item_id"])}
    rows = []
    for uid, g in inter.sort_values(["user_id", "ts", "item_id"], kind="stable").groupby("user_id", sort=True):
        ts = g["ts"].to_numpy()
        items = g["item_id"].to_numpy()
        ratings = g["rating"].to_numpy(np.float64)
        gen = item_genres[[item_row[i] for i in items]]
        cum_gen = np.cumsum(gen, axis=0)
        cum_r = np.cumsum(ratings)
        ends = np.flatnonzero(np.r_[ts[1:] != ts[:-1], True])  # last index of each distinct ts
        for e in ends:
            tau = ts[e]
            n = e + 1
            total = cum_gen[e].sum()
            aff = (cum_gen[e] / total).astype(np.float32) if total > 0 else np.zeros(n_genres, np.float32)
            recent = items[max(0, n - n_recent):n][::-1].astype(np.int64)
            c1h = int(np.searchsorted(ts, tau, side="right") - np.searchsorted(ts, tau - 3600, side="right"))
            c24h = int(np.searchsorted(ts, tau, side="right") - np.searchsorted(ts, tau - 86400, side="right"))
            rows.append((uid, tau, float(n), float(cum_r[e] / n), aff, recent, c1h, c24h))
    return pd.DataFrame(rows, columns=["user_id", "tau", "n_interactions", "mean_rating", "genre_affinity",
                                       "recent_item_ids", "recent_count_1h", "recent_count_24h"])


def popularity_at(inter: pd.DataFrame, at: int, half_life_days: float) -> pd.DataFrame:
    """Recency-weighted count per item over interactions strictly before ``at``, max-normalised."""
    past = inter[inter["ts"] < at]
    w = np.power(0.5, (at - past["ts"].to_numpy()) / (half_life_days * 86400.0))
    agg = pd.DataFrame({"item_id": past["item_id"].to_numpy(), "w": w, "rating": past["rating"].to_numpy()})
    out = agg.groupby("item_id").agg(popularity=("w", "sum"), n_ratings=("w", "size"), mean_rating=("rating", "mean"))
    if len(out):
        out["popularity"] /= out["popularity"].max()
    return out.reset_index()


def item_snapshots(inter: pd.DataFrame, every_days: int, half_life_days: float) -> pd.DataFrame:
    """``item_aggregates`` rows: a snapshot every ``every_days`` (and one after the last rating),
    each stamped at its cut-off and computed from interactions strictly before it."""
    t0, t1 = int(inter["ts"].min()), int(inter["ts"].max())
    step = every_days * 86400
    cuts = list(range(t0 - t0 % 86400 + 86400, t1 + 1, step)) + [t1 + 1]
    frames = []
    for cut in cuts:
        snap = popularity_at(inter, cut, half_life_days)
        snap["cut"] = cut
        frames.append(snap)
    return pd.concat(frames, ignore_index=True)


def write_feature_sources(ds: Dataset, offline_dir: Path, states: pd.DataFrame, every_days: int,
                          half_life_days: float) -> dict[str, Path]:
    """Write the six Feast offline parquet files. ``states``: :func:`user_history_states` over
    all interactions. Returns ``{view: path}``."""
    offline_dir = Path(offline_dir)
    offline_dir.mkdir(parents=True, exist_ok=True)
    inter = ds.interactions
    created = pd.Timestamp.now(tz="UTC").floor("s")

    def stamp(df: pd.DataFrame, ts: pd.Series) -> pd.DataFrame:
        df = df.copy()
        df["event_timestamp"] = pd.DatetimeIndex(ts.to_numpy()).as_unit("ns")
        df["created"] = pd.DatetimeIndex([created] * len(df)).as_unit("ns")
        return df

    out: dict[str, Path] = {}

    def write(view: str, df: pd.DataFrame) -> None:
        path = offline_dir / f"{view}.parquet"
        df.reset_index(drop=True).to_parquet(path, index=False)
        out[view] = path

    n = len(ds.users)
    write("user_profile", stamp(ds.users[["user_id", "age", "age_bucket", "gender", "occupation"]],
                               pd.Series([PROFILE_TIME] * n)))
    items = ds.items[["item_id", "year", "title"]].copy()
    items["genres"] = [g.astype(np.float32) for g in ds.items["genres"]]
    write("item_profile", stamp(items[["item_id", "year", "genres", "title"]], pd.Series([PROFILE_TIME] * len(items))))

    when = to_time(states["tau"]) + ONE_SECOND
    agg = states[["user_id", "n_interactions", "mean_rating", "genre_affinity"]].astype(
        {"n_interactions": "float32", "mean_rating": "float32"})
    write("user_aggregates", stamp(agg, when))
    ctx = states[["user_id", "recent_item_ids", "recent_count_1h", "recent_count_24h"]].astype(
        {"recent_count_1h": "int64", "recent_count_24h": "int64"})
    write("user_context", stamp(ctx, when))

    seen = inter.groupby("user_id", sort=True).agg(last_ts=("ts", "max"), seen_item_ids=("item_id", "unique"))
    seen["seen_item_ids"] = [np.sort(np.asarray(ids, np.int64)) for ids in seen["seen_item_ids"]]
    seen = seen.reset_index()
    write("user_seen", stamp(seen[["user_id", "seen_item_ids"]], to_time(seen["last_ts"]) + ONE_SECOND))

    snaps = item_snapshots(inter, every_days, half_life_days)
    snaps = snaps.astype({"popularity": "float32", "n_ratings": "float32", "mean_rating": "float32"})
    write("item_aggregates", stamp(snaps[["item_id", "popularity", "n_ratings", "mean_rating"]], to_time(snaps["cut"])))
    return out


def save_splits(ds: Dataset, processed_dir: Path) -> None:
    processed_dir = Path(processed_dir)
    processed_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid", "test"):
        ds.split(name).drop(columns="split").to_parquet(processed_dir / f"{name}.parquet", index=False)


def states_before(states: pd.DataFrame, user_ids: np.ndarray, ts: np.ndarray) -> pd.DataFrame:
    """For each query (user, t): the user's history state over interactions strictly before t
    (NaN/None where the user has no earlier interaction). Rows in query order."""
    q = pd.DataFrame({"user_id": np.asarray(user_ids, np.int64), "t": np.asarray(ts, np.int64),
                      "_order": np.arange(len(user_ids))})
    s = states.sort_values("tau")
    out = pd.merge_asof(q.sort_values("t"), s, left_on="t", right_on="tau", by="user_id",
                        direction="backward", allow_exact_matches=False)
    return out.sort_values("_order").reset_index(drop=True)
