"""Ranker: a small MLP over (user, candidate) features, trained listwise, exported to ONNX.

Input ``features`` float32 [N, F] in ``manifest["ranker_features"]`` order (assembled by
``common.model_inputs.ModelInputs.ranker_matrix``), output ``score`` float32 [N]. Feature
scaling (log1p of counts, standardisation with training statistics) is part of the exported
graph, so the serving side passes raw feature values.

Training: each example is one event (a user at time t with the retrieval candidates of that
moment); the loss is softmax cross-entropy over the candidate list towards the items the user
actually interacted with at t (the listwise objective matches "order these few hundred").
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.config import RankerConfig

FEATURES, SCORE = "features", "score"
LOG1P_SOURCES = ("item_aggregates:n_ratings", "user_aggregates:n_interactions")


def feature_spec(genres: list[str]) -> list[dict]:
    """The ranker's ordered input columns (manifest ``ranker_features``)."""
    def f(name: str, source: str, **kw) -> dict:
        return {"name": name, "dtype": "float32", "source": source, **kw}

    spec = [
        f("retrieval_score", "cross:retrieval_score"),
        f("item_popularity", "item_aggregates:popularity"),
        f("item_n_ratings", "item_aggregates:n_ratings", transform="log1p"),
        f("item_mean_rating", "item_aggregates:mean_rating"),
        f("item_year", "item_profile:year"),
        f("user_age", "user_profile:age"),
        f("user_gender", "user_profile:gender"),
        f("user_n_interactions", "user_aggregates:n_interactions", transform="log1p"),
        f("user_mean_rating", "user_aggregates:mean_rating"),
        f("user_genre_affinity", "cross:user_genre_affinity"),
        f("user_genre_affinity_max", "cross:user_genre_affinity_max"),
        f("genre_match_count", "cross:genre_match_count"),
    ]
    spec += [f(f"item_genre_{g}", "item_profile:genres", index=i) for i, g in enumerate(genres)]
    spec += [f(f"user_affinity_{g}", "user_aggregates:genre_affinity", index=i) for i, g in enumerate(genres)]
    return spec


class RankerNet(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...], log1p_mask: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("log1p_mask", torch.from_numpy(log1p_mask.astype(bool)))
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log1p_mask, torch.log1p(torch.clamp(x, min=0.0)), x)
        return (x - self.mean) / self.std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.scale(features)).squeeze(-1)


@dataclass
class Ranker:
    net: RankerNet
    train_seconds: float
    final_loss: float
    best_epoch: int = -1  # epoch kept by early stopping on held-out training events
    val_loss: float = float("nan")

    @torch.no_grad()
    def score(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        return self.net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def train(x: np.ndarray, labels: np.ndarray, group: np.ndarray, spec: list[dict], cfg: RankerConfig,
          seed: int, progress=None) -> Ranker:
    """``x`` [N, F] raw features, ``labels`` [N] 0/1, ``group`` [N] event id (rows of one event
    contiguous). Events without a positive carry no signal for a listwise loss and are dropped."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mask = np.array([f.get("transform") == "log1p" for f in spec])
    net = RankerNet(x.shape[1], cfg.hidden, mask)
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        z = torch.where(net.log1p_mask, torch.log1p(torch.clamp(X, min=0.0)), X)
        net.mean.copy_(z.mean(0))
        net.std.copy_(z.std(0).clamp(min=1e-3))
    y = torch.from_numpy(labels.astype(np.float32))
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(group)]
    keep = [i for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if labels[a:b].any()]
    starts, ends = starts[keep], ends[keep]
    width = int((ends - starts).max())
    # padded [events, width] index matrix; -1 = padding
    idx = np.full((len(starts), width), -1, np.int64)
    for r, (a, b) in enumerate(zip(starts, ends, strict=True)):
        idx[r, : b - a] = np.arange(a, b)
    # early stopping on a held-out 10% of the events (never the test set)
    order = torch.randperm(len(idx), generator=gen)
    n_val = max(1, len(idx) // 10) if len(idx) >= 10 else 0
    val_rows, train_rows = torch.from_numpy(idx)[order[:n_val]], torch.from_numpy(idx)[order[n_val:]]
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def listwise_loss(rows: torch.Tensor) -> torch.Tensor:
        valid = rows >= 0
        flat = rows.clamp(min=0)
        logits = net(X[flat.reshape(-1)]).reshape(flat.shape).masked_fill(~valid, float("-inf"))
        target = y[flat] * valid
        target = target / target.sum(1, keepdim=True)
        return -(target * F.log_softmax(logits, dim=1).masked_fill(~valid, 0.0)).sum(1).mean()

    t0 = time.perf_counter()
    loss_value, best = float("nan"), (float("inf"), -1, copy.deepcopy(net.state_dict()))
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(train_rows), generator=gen)
        total, steps = 0.0, 0
        for s in range(0, len(train_rows), cfg.batch_groups):
            loss = listwise_loss(train_rows[perm[s:s + cfg.batch_groups]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        loss_value = total / max(steps, 1)
        if n_val:
            net.eval()
            with torch.no_grad():
                val = listwise_loss(val_rows).item()
            if val < best[0]:
                best = (val, epoch + 1, copy.deepcopy(net.state_dict()))
        if progress is not None:
            progress(loss_value)
    if n_val:
        net.load_state_dict(best[2])
    net.eval()
    return Ranker(net, time.perf_counter() - t0, loss_value, best_epoch=best[1], val_loss=best[0])


def export(ranker: Ranker, n_features: int, path: Path) -> None:
    ranker.net.eval()
    torch.onnx.export(
        ranker.net, (torch.zeros(4, n_features),), str(path), input_names=[FEATURES], output_names=[SCORE],
        dynamic_axes={FEATURES: {0: "n"}, SCORE: {0: "n"}}, opset_version=17, dynamo=False,
    )
