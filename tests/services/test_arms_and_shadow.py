"""Arm selection (services.arms) and the shadow ranker's agreement measure and queue (no servers)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.arms import ArmKey, ArmNotLoaded, Arms
from services.ranking.pipeline import RankResult
from services.ranking.shadow import ShadowScorer, agreement


@dataclass
class P:
    version: str
    tag: str = ""


def test_select_pinned_arm_else_default_and_strict_refuses_an_unknown_version():
    v1, v2, v2x = P("v1"), P("v2"), P("v2", "x")
    arms = Arms(ArmKey("v1"), {ArmKey("v1"): v1, ArmKey("v2"): v2, ArmKey("v2", "x.toml"): v2x})
    assert arms.select() is v1 and arms.select("v2") is v2 and arms.select("v2", "x.toml") is v2x
    assert arms.select("", "x.toml") is v1  # the default version has no such pipeline arm: the default
    assert arms.select("v9") is v1  # retrieval: not loaded -> the default (its version is in the answer)
    assert arms.select("v2", "y.toml", strict=True) is v2  # ranking: the same version, its own pipeline
    with pytest.raises(ArmNotLoaded, match="v9 is not loaded here"):
        arms.select("v9", strict=True)
    assert Arms.single(v1).describe() == {"default": "v1", "arms": ["v1"], "shadow": None}


def test_agreement_of_orders():
    ids = np.arange(100, dtype=np.int64)
    assert agreement(ids, ids.copy()) == (1.0, 1.0)
    rho, overlap = agreement(ids, ids[::-1].copy())
    assert rho == pytest.approx(-1.0) and overlap == 0.0
    rng = np.random.default_rng(0)
    rho, overlap = agreement(ids, rng.permutation(ids))
    assert abs(rho) < 0.3 and overlap <= 0.3
    swapped = ids.copy()
    swapped[[0, 10]] = swapped[[10, 0]]  # the best one leaves the top 10
    rho, overlap = agreement(ids, swapped)
    assert 0.99 < rho < 1.0 and overlap == 0.9
    with pytest.raises(ValueError, match="different candidates"):
        agreement(ids, ids + 1)


class SlowShadow:
    version = "v2"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def rank(self, user_id, item_ids, retrieval_scores, record=True):
        assert record is False  # shadow calls stay out of the live stage metrics
        self.release.wait(5)
        self.calls += 1
        return RankResult(item_ids[::-1].copy(), retrieval_scores, self.version)


def _value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_a_full_queue_drops_and_counts_never_blocks():
    registry = CollectorRegistry()
    shadow = ShadowScorer(service="ranking", registry=registry, queue_size=2, sample_rate=1.0)
    pipeline = SlowShadow()
    shadow.start()
    ids = np.arange(20, dtype=np.int64)
    live = RankResult(ids, np.zeros(20, np.float32), "v1")
    for _ in range(10):  # the worker holds one, the queue two: the rest dropped at once
        shadow.offer(pipeline, "1", ids, np.zeros(20, np.float32), live)
    labels = {"service": "ranking", "live": "v1", "shadow": "v2"}
    assert _value(registry, "recsys_shadow_total", **labels, outcome="dropped") >= 7
    pipeline.release.set()
    shadow.close()
    scored = _value(registry, "recsys_shadow_total", **labels, outcome="scored")
    assert scored == pipeline.calls >= 1
    # reversed orders: every observation in the lowest bucket (a histogram with negative buckets
    # has no _sum: quantiles from the buckets, as histogram_quantile does)
    assert _value(registry, "recsys_shadow_rank_correlation_bucket", **labels, le="-0.5") == scored
    assert _value(registry, "recsys_shadow_top10_overlap_sum", **labels) == 0.0


def test_sampling():
    registry = CollectorRegistry()
    draws = iter([0.1, 0.9, 0.2, 0.95])
    shadow = ShadowScorer(service="ranking", registry=registry, queue_size=10, sample_rate=0.5,
                          draw=lambda: next(draws))
    ids = np.arange(5, dtype=np.int64)
    for _ in range(4):
        shadow.offer(SlowShadow(), "1", ids, np.zeros(5, np.float32), RankResult(ids, np.zeros(5, np.float32), "v1"))
    labels = {"service": "ranking", "live": "v1", "shadow": "v2"}
    assert _value(registry, "recsys_shadow_total", **labels, outcome="sampled_out") == 2
    assert shadow._queue.qsize() == 2
