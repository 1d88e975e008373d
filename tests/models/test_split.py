"""Split and feature-time correctness on the real MovieLens-100K data: no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.settings import REPO_ROOT
from models import data as D

RAW = REPO_ROOT / "data" / "raw" / "ml-100k"


@pytest.fixture(scope="module")
def ds() -> D.Dataset:
    if not (RAW / "ml-100k.inter").is_file():
        pytest.fail(f"no MovieLens-100K in {RAW}: run `make data`")
    return D.load(RAW)


@pytest.fixture(scope="module")
def states(ds) -> pd.DataFrame:
    return D.user_history_states(ds, 20)


def test_every_user_has_one_test_and_one_valid_timestamp(ds):
    inter = ds.interactions
    assert len(inter) == 100_000
    per_user = inter.groupby(["user_id", "split"])["ts"].nunique().unstack()
    assert (per_user["test"] == 1).all() and (per_user["valid"] == 1).all()
    assert per_user.index.size == 943


def test_test_is_strictly_after_train_and_valid(ds):
    inter = ds.interactions
    g = inter.groupby(["user_id", "split"])["ts"].agg(["min", "max"]).unstack()
    assert (g[("min", "test")] > g[("max", "valid")]).all()
    assert (g[("min", "valid")] > g[("max", "train")]).all()
    # the test timestamp is each user's latest
    assert (g[("min", "test")] == inter.groupby("user_id")["ts"].max()).all()


def test_split_labels_with_ties_on_a_hand_made_case():
    inter = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2], "ts": [5, 9, 9, 7, 1, 2]})
    assert D.split_labels(inter).tolist() == ["train", "test", "test", "valid", "valid", "test"]


def test_history_states_only_use_interactions_up_to_their_time(ds, states):
    inter = ds.interactions
    for uid in (1, 42, 405, 943):
        mine = inter[inter["user_id"] == uid]
        st = states[states["user_id"] == uid]
        for tau, n, rec in zip(st["tau"], st["n_interactions"], st["recent_item_ids"], strict=True):
            past = mine[mine["ts"] <= tau].sort_values(["ts", "item_id"], kind="stable")
            assert n == len(past)
            assert rec.tolist() == past["item_id"].to_numpy()[::-1][:20].tolist()


def test_features_for_a_prediction_come_from_strictly_earlier_interactions(ds, states):
    inter = ds.interactions
    sample = inter.sample(2000, random_state=0)
    st = D.states_before(states, sample["user_id"].to_numpy(), sample["ts"].to_numpy())
    for (_, row), n, rec in zip(sample.iterrows(), st["n_interactions"], st["recent_item_ids"], strict=True):
        earlier = inter[(inter["user_id"] == row["user_id"]) & (inter["ts"] < row["ts"])]
        if earlier.empty:
            assert pd.isna(n)
            continue
        assert n == len(earlier)
        assert set(rec.tolist()) <= set(earlier["item_id"])  # never the item being predicted at t
        assert row["item_id"] not in rec.tolist() or row["item_id"] in set(earlier["item_id"])


def test_offline_rows_are_stamped_after_what_they_summarise(ds, states):
    """A row stamped e summarises only interactions with ts < e (point-in-time safe)."""
    inter = ds.interactions
    cuts = D.item_snapshots(inter, 7, 30.0)
    for cut in np.unique(cuts["cut"])[[0, 5, -1]]:
        snap = cuts[cuts["cut"] == cut].set_index("item_id")["n_ratings"]
        truth = inter[inter["ts"] < cut].groupby("item_id").size()
        assert snap.sort_index().astype(int).tolist() == truth.sort_index().tolist()
        assert snap.index.tolist() == sorted(truth.index.tolist())
    pop = D.popularity_at(inter, int(inter["ts"].max()) + 1, 30.0)
    assert pop["popularity"].max() == pytest.approx(1.0)
