"""ONNX vs PyTorch parity (max abs diff <= 1e-4) for both towers and the ranker (tiny training)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import ranker as RK
from models import two_tower as TT
from models.config import PipelineConfig

G, N_USERS, N_ITEMS, N_RECENT = 19, 60, 80, 20
CARDS = [9, 3, 22]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny():
    return PipelineConfig().tiny()


def _user_feed(rng, n):
    recent = rng.integers(0, N_ITEMS, (n, N_RECENT))
    recent[: n // 4] = 0  # users without history: all padding
    return {
        "user_idx": rng.integers(0, N_USERS, n).astype(np.int64),
        "user_cat": np.stack([rng.integers(0, c, n) for c in CARDS], 1).astype(np.int64),
        "user_genre_affinity": rng.dirichlet(np.ones(G), n).astype(np.float32),
        "recent_item_idx": recent.astype(np.int64),
    }


def _item_feed(rng):
    year = rng.integers(1920, 1999, N_ITEMS).astype(np.float32)
    year[:3] = 0  # unknown year
    return {"item_idx": np.arange(N_ITEMS, dtype=np.int64),
            "item_genres": (rng.random((N_ITEMS, G)) > 0.8).astype(np.float32), "item_year": year}


def test_towers_onnx_match_torch(tiny, tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    feed, items = _user_feed(rng, 512), _item_feed(rng)
    model = TT.train(feed, rng.integers(1, N_ITEMS, 512), items, N_USERS, CARDS, tiny.two_tower, seed=1)
    TT.export_user_tower(model, feed, tmp_path / "user.onnx")
    TT.export_item_tower(model, items, tmp_path / "item.onnx")
    test_feed = _user_feed(np.random.default_rng(1), 300)
    onnx_user = _session(tmp_path / "user.onnx").run(None, test_feed)[0]
    assert np.abs(onnx_user - model.user_embeddings(test_feed)).max() <= 1e-4
    assert np.allclose(np.linalg.norm(onnx_user, axis=1), 1.0, atol=1e-5)
    onnx_item = _session(tmp_path / "item.onnx").run(None, items)[0]
    assert np.abs(onnx_item - model.item_embeddings(items)).max() <= 1e-4
    one = {k: v[:1] for k, v in test_feed.items()}  # batch of one (the serving shape)
    assert np.abs(_session(tmp_path / "user.onnx").run(None, one)[0] - model.user_embeddings(one)).max() <= 1e-4


def test_ranker_onnx_matches_torch(tiny, tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    spec = RK.feature_spec([f"g{i}" for i in range(G)])
    n = 400
    x = rng.random((n, len(spec))).astype(np.float32) * 5
    y = (rng.random(n) > 0.9).astype(np.float32)
    group = np.repeat(np.arange(n // 20), 20)
    ranker = RK.train(x, y, group, spec, tiny.ranker, seed=3)
    RK.export(ranker, len(spec), tmp_path / "ranker.onnx")
    sess = _session(tmp_path / "ranker.onnx")
    assert [i.name for i in sess.get_inputs()] == ["features"] and [o.name for o in sess.get_outputs()] == ["score"]
    for rows in (x, x[:1], np.zeros((500, len(spec)), np.float32)):
        got = sess.run(None, {"features": rows})[0]
        assert got.shape == (len(rows),)
        assert np.abs(got - ranker.score(rows)).max() <= 1e-4
