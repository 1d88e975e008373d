"""The validation gate: a two-tower that does not beat popularity on Recall@100 is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from common.settings import REPO_ROOT, FeatureStoreSettings
from models import evaluate as E
from models import pipeline as P
from models import two_tower as TT
from models.config import PipelineConfig


def _metrics(tt: float, pop: float) -> dict:
    return {"retrieval": {"recall@100": tt}, "popularity": {"recall@100": pop}}


def test_gate_thresholds():
    P.gate(_metrics(0.30, 0.20))
    with pytest.raises(P.GateError, match=r"two-tower recall@100 0\.2000 is not above popularity's 0\.2000"):
        P.gate(_metrics(0.20, 0.20))


def test_gate_rejects_a_real_model_worse_than_popularity(tmp_path):
    """An untrained two-tower, evaluated with the pipeline's own protocol on the real test set."""
    if not (REPO_ROOT / "data" / "raw" / "ml-100k" / "ml-100k.inter").is_file():
        pytest.fail("no MovieLens-100K: run `make data`")
    torch.set_num_threads(1)
    cfg = dataclasses.replace(PipelineConfig().tiny(), processed_dir=tmp_path / "processed")
    p = P.prepare(cfg, FeatureStoreSettings(offline_dir=tmp_path / "features", data_dir=tmp_path / "feast"))
    ds = p.ds
    non_test, test = ds.interactions[ds.interactions["split"] != "test"], ds.split("test")
    cards = [int(c) for c in p.inputs.user_cat_cardinality]
    torch.manual_seed(0)
    untrained = TT.TwoTower(TT.UserTower(len(p.user_ids), len(p.item_ids), cards, len(ds.genres), cfg.two_tower),
                            TT.ItemTower(len(p.item_ids), len(ds.genres), cfg.two_tower), 0.1)
    p.item_emb = untrained.item_embeddings(p.item_feed)
    tq = test.groupby("user_id").agg(ts=("ts", "first"), items=("item_id", lambda s: {int(i) for i in s}))
    users, ts, pos = tq.index.to_numpy(), tq["ts"].to_numpy(), list(tq["items"])
    excl = P.seen_before(non_test, users, ts)
    ids, _ = P.candidates(p, untrained.user_embeddings(P.user_feed_at(p, users, ts)), excl, 100)
    pop = P.popular_items(non_test, cfg.popularity_half_life_days)["item_id"].to_numpy()
    metrics = {
        "retrieval": E.summarize(list(ids), pos),
        "popularity": E.summarize([[i for i in pop[: 100 + len(e)] if int(i) not in e][:100] for e in excl], pos),
    }
    assert metrics["retrieval"]["recall@100"] < metrics["popularity"]["recall@100"]
    with pytest.raises(P.GateError, match="not published"):
        P.gate(metrics)


def _untrained(p, inter, cfg, progress=None, init=None):
    """Stands in for ``train_two_tower``: the same architecture, never trained."""
    torch.manual_seed(0)
    cards = [int(c) for c in p.inputs.user_cat_cardinality]
    n_genres = len(p.ds.genres)
    return TT.TwoTower(TT.UserTower(len(p.user_ids), len(p.item_ids), cards, n_genres, cfg.two_tower),
                       TT.ItemTower(len(p.item_ids), n_genres, cfg.two_tower), 0.1)


def test_cli_exits_non_zero_and_publishes_nothing_when_the_gate_fails(monkeypatch, tmp_path):
    """The real `python -m models run` (tiny config, private folders) with an untrained two-tower:
    the real gate refuses it, the CLI exits 2, ``current`` still points at the old bundle and no
    staging folder or new version is left behind."""
    from models import __main__ as cli

    if not (REPO_ROOT / "data" / "raw" / "ml-100k" / "ml-100k.inter").is_file():
        pytest.fail("no MovieLens-100K: run `make data`")
    artifacts = tmp_path / "artifacts"
    (artifacts / "v-old").mkdir(parents=True)
    (artifacts / "current").symlink_to("v-old", target_is_directory=True)
    cfg = dataclasses.replace(PipelineConfig().tiny(), artifacts_dir=artifacts, processed_dir=tmp_path / "processed")
    monkeypatch.setattr(cli, "PipelineConfig", lambda: cfg)
    monkeypatch.setattr(P, "train_two_tower", _untrained)
    for name, value in {"FEAST_DATA_DIR": tmp_path / "feast", "FEAST_OFFLINE_DIR": tmp_path / "features"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("REDIS_URL", raising=False)

    result = CliRunner().invoke(cli.app, ["run", "--no-materialize"])
    assert result.exit_code == 2, result.output
    assert "not above popularity" in result.output
    assert sorted(p.name for p in artifacts.iterdir()) == ["current", "v-old"], "something was staged or published"
    assert (artifacts / "current").readlink() == Path("v-old")
