"""Two-tower retrieval model (PyTorch): user (query) tower and item tower, ONNX export.

User tower inputs (docs/contracts.md): ``user_idx`` [B], ``user_cat`` [B, 3] (age bucket, gender,
occupation), ``user_genre_affinity`` [B, G], ``recent_item_idx`` [B, 20] (0 = padding).
Item tower inputs: ``item_idx`` [B] (0 = unknown item), ``item_genres`` [B, G], ``item_year`` [B].
Both outputs are L2-normalised, so inner product = cosine (FAISS ``METRIC_INNER_PRODUCT``).

Training: in-batch sampled softmax with logQ correction (Yi et al., RecSys 2019): the logit of
each in-batch negative is reduced by the log of its sampling probability (its share of the
training interactions), which removes the popularity bias of in-batch negatives; repeated
items inside a batch are masked out as negatives.
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

from common.model_inputs import RECENT_ITEM_IDX, USER_CAT, USER_EMBEDDING, USER_GENRE_AFFINITY, USER_IDX
from models.config import TwoTowerConfig

ITEM_IDX, ITEM_GENRES, ITEM_YEAR, ITEM_EMBEDDING = "item_idx", "item_genres", "item_year", "item_embedding"
USER_INPUTS = (USER_IDX, USER_CAT, USER_GENRE_AFFINITY, RECENT_ITEM_IDX)
ITEM_INPUTS = (ITEM_IDX, ITEM_GENRES, ITEM_YEAR)
YEAR_CENTER, YEAR_SCALE = 1990.0, 20.0


class UserTower(nn.Module):
    def __init__(self, n_users: int, n_items: int, cat_cardinalities: list[int], n_genres: int,
                 cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.user_emb = nn.Embedding(n_users, cfg.id_dim)
        self.recent_emb = nn.Embedding(n_items, cfg.id_dim, padding_idx=0)
        self.cat_embs = nn.ModuleList(nn.Embedding(c, 16) for c in cat_cardinalities)
        self.genre = nn.Linear(n_genres, 16)
        width = cfg.id_dim * 2 + 16 * len(cat_cardinalities) + 16
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))
        self.id_dropout = cfg.id_dropout

    def forward(self, user_idx, user_cat, user_genre_affinity, recent_item_idx):
        if self.training and self.id_dropout > 0:
            keep = torch.rand(user_idx.shape, device=user_idx.device) >= self.id_dropout
            user_idx = torch.where(keep, user_idx, torch.zeros_like(user_idx))
        mask = (recent_item_idx > 0).unsqueeze(-1).to(torch.float32)
        recent = (self.recent_emb(recent_item_idx) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        cats = [emb(user_cat[:, j]) for j, emb in enumerate(self.cat_embs)]
        x = torch.cat([self.user_emb(user_idx), recent, *cats, self.genre(user_genre_affinity)], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


class ItemTower(nn.Module):
    def __init__(self, n_items: int, n_genres: int, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items, cfg.id_dim)
        self.genre = nn.Linear(n_genres, 16)
        self.year = nn.Linear(1, 8)
        self.mlp = nn.Sequential(nn.Linear(cfg.id_dim + 24, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))

    def forward(self, item_idx, item_genres, item_year):
        year = ((item_year - YEAR_CENTER) / YEAR_SCALE).unsqueeze(-1)
        year = torch.where(item_year.unsqueeze(-1) > 0, year, torch.zeros_like(year))
        x = torch.cat([self.item_emb(item_idx), self.genre(item_genres), self.year(year)], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


@dataclass
class TwoTower:
    user: UserTower
    item: ItemTower
    temperature: float
    train_seconds: float = 0.0
    final_loss: float = float("nan")

    @torch.no_grad()
    def item_embeddings(self, item_feed: dict[str, np.ndarray]) -> np.ndarray:
        self.item.eval()
        return self.item(*(torch.from_numpy(item_feed[k]) for k in ITEM_INPUTS)).numpy()

    @torch.no_grad()
    def user_embeddings(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self.user.eval()
        return self.user(*(torch.from_numpy(feed[k]) for k in USER_INPUTS)).numpy()


def train(user_feed: dict[str, np.ndarray], pos_item_rows: np.ndarray, item_feed: dict[str, np.ndarray],
          n_users: int, cat_cardinalities: list[int], cfg: TwoTowerConfig, seed: int,
          progress=None, init: TwoTower | None = None, epochs: int | None = None,
          lr: float | None = None) -> TwoTower:
    """``user_feed``: one row per training interaction (inputs as of just before it);
    ``pos_item_rows``: the interacted item's row; ``item_feed``: every item row (row 0 = unknown).
    ``init``: continue training a copy of this model (warm start) instead of a fresh one."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_items = item_feed[ITEM_IDX].shape[0]
    n_genres = item_feed[ITEM_GENRES].shape[1]
    if init is not None:
        user, item = copy.deepcopy(init.user), copy.deepcopy(init.item)
    else:
        user = UserTower(n_users, n_items, cat_cardinalities, n_genres, cfg)
        item = ItemTower(n_items, n_genres, cfg)
    params = [*user.parameters(), *item.parameters()]
    opt = torch.optim.Adam(params, lr=lr or cfg.lr, weight_decay=cfg.weight_decay)
    U = {k: torch.from_numpy(np.ascontiguousarray(user_feed[k])) for k in USER_INPUTS}
    It = {k: torch.from_numpy(np.ascontiguousarray(item_feed[k])) for k in ITEM_INPUTS}
    pos = torch.from_numpy(pos_item_rows.astype(np.int64))
    counts = np.bincount(pos_item_rows, minlength=n_items).astype(np.float64)
    logq = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))
    n = pos.shape[0]
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    t0 = time.perf_counter()
    loss_value = float("nan")
    for _epoch in range(cfg.epochs if epochs is None else epochs):
        user.train()
        item.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(steps):
            b = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            p = pos[b]
            u = user(*(U[k][b] for k in USER_INPUTS))
            v = item(*(It[k][p] for k in ITEM_INPUTS))
            logits = u @ v.T / cfg.temperature
            if cfg.logq_correction:
                logits = logits - logq[p].unsqueeze(0)
            same = p.unsqueeze(0) == p.unsqueeze(1)
            eye = torch.eye(len(p), dtype=torch.bool)
            logits = logits.masked_fill(same & ~eye, float("-inf"))
            loss = F.cross_entropy(logits, torch.arange(len(p)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        loss_value = total / steps
        if progress is not None:
            progress(loss_value)
    user.eval()
    item.eval()
    return TwoTower(user, item, cfg.temperature, time.perf_counter() - t0, loss_value)


def export_user_tower(model: TwoTower, example: dict[str, np.ndarray], path: Path) -> None:
    args = tuple(torch.from_numpy(example[k][:2]) for k in USER_INPUTS)
    _export(model.user, args, list(USER_INPUTS), USER_EMBEDDING, path)


def export_item_tower(model: TwoTower, example: dict[str, np.ndarray], path: Path) -> None:
    args = tuple(torch.from_numpy(example[k][:2]) for k in ITEM_INPUTS)
    _export(model.item, args, list(ITEM_INPUTS), ITEM_EMBEDDING, path)


def _export(module: nn.Module, args: tuple, input_names: list[str], output: str, path: Path) -> None:
    module.eval()
    torch.onnx.export(
        module, args, str(path), input_names=input_names, output_names=[output],
        dynamic_axes={**{n: {0: "batch"} for n in input_names}, output: {0: "batch"}},
        opset_version=17, dynamo=False,
    )


def user_tower_spec(cat_sources: list[str], cat_cardinalities: list[int], n_genres: int, n_recent: int,
                    dim: int) -> dict:
    return {
        "file": "user_tower",
        "inputs": [
            {"name": USER_IDX, "dtype": "int64", "shape": ["B"], "source": "row of user_ids.npy (0 = unknown)"},
            {"name": USER_CAT, "dtype": "int64", "shape": ["B", len(cat_sources)], "source": cat_sources},
            {"name": USER_GENRE_AFFINITY, "dtype": "float32", "shape": ["B", n_genres],
             "source": "user_aggregates:genre_affinity"},
            {"name": RECENT_ITEM_IDX, "dtype": "int64", "shape": ["B", n_recent],
             "source": "rows of user_context:recent_item_ids (request context first), 0-padded"},
        ],
        "output": {"name": USER_EMBEDDING, "dtype": "float32", "shape": ["B", dim], "normalized": True},
        "categorical": [{"source": s, "cardinality": int(c)} for s, c in zip(cat_sources, cat_cardinalities, strict=True)],
        "n_recent": n_recent,
    }


def item_tower_spec(n_genres: int, dim: int) -> dict:
    return {
        "file": "item_tower",
        "inputs": [
            {"name": ITEM_IDX, "dtype": "int64", "shape": ["B"], "source": "row of item_ids.npy (0 = unknown/new item)"},
            {"name": ITEM_GENRES, "dtype": "float32", "shape": ["B", n_genres], "source": "item_profile:genres"},
            {"name": ITEM_YEAR, "dtype": "float32", "shape": ["B"], "source": "item_profile:year (0 = unknown)"},
        ],
        "output": {"name": ITEM_EMBEDDING, "dtype": "float32", "shape": ["B", dim], "normalized": True},
    }
