"""The load test's own logic: traffic model, percentiles and the SLO verdict (no stack needed)."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import typer

from loadtest.__main__ import Result, Slo, parse_duration, percentile, summarise, violations
from loadtest.traffic import Population, Tally


def _result(**kw) -> Result:
    base = dict(requests=1000, failures=0, duration_s=60, p50_ms=5, p95_ms=9, p99_ms=20, max_ms=40,
                fallbacks={}, checked=1000, cached=300, rps=16.7)
    base.update(kw)
    return Result(**base)


def test_percentile_is_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_slo_passes_and_each_bound_fails_on_its_own():
    slo = Slo(p99_ms=100, max_error_rate=0.001)
    assert violations(_result(), slo) == []
    assert "p99" in violations(_result(p99_ms=100.5), slo)[0]
    assert "error rate" in violations(_result(failures=2), slo)[0]  # 0.2 % > 0.1 %
    assert violations(_result(failures=1), slo) == []  # exactly 0.1 % is allowed
    assert violations(_result(requests=0, p99_ms=math.nan), slo)  # nothing measured never passes
    with_fb = Slo(max_fallback_rate=0.01)
    assert violations(_result(fallbacks={"ranking_unavailable": 20}), slo) == []  # not checked by default
    assert "fallback" in violations(_result(fallbacks={"ranking_unavailable": 20}), with_fb)[0]


def test_summarise_uses_the_exact_tally():
    lat = [1.0] * 98 + [50.0, 120.0]
    r = summarise({"requests": 100, "failures": 1, "duration_s": 4.0, "latencies_ms": lat,
                   "responses_checked": 99, "fallbacks": {"retrieval_unavailable": 9}, "cached": 33})
    assert (r.p50_ms, r.p99_ms, r.max_ms) == (1.0, 50.0, 120.0)
    assert r.error_rate == 0.01 and r.rps == 25.0
    assert r.fallback_rate == 9 / 99 and r.cache_hit_rate == 33 / 99
    assert json.dumps(r.as_dict())  # serialisable for summary.json


def test_tally_counts_requests_failures_and_response_fields():
    t = Tally()
    t.request(10.0, False, now=100.0)
    t.request(30.0, True, now=101.0)
    t.record({"items": [], "fallback": "ranking_unavailable", "cached": False}, known=True)
    t.record({"items": [], "fallback": None, "cached": True}, known=False)
    d = t.as_dict()
    assert (d["requests"], d["failures"], d["latencies_ms"]) == (2, 1, [10.0, 30.0])
    assert d["duration_s"] == pytest.approx(1.01)
    assert d["fallbacks"] == {"ranking_unavailable": 1} and d["cached"] == 1
    assert d["users"] == {"known": 1, "unknown": 1}


def test_parse_duration():
    assert parse_duration("60s") == 60 and parse_duration("2m") == 120 and parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(typer.BadParameter):
        parse_duration("soon")


def _options(bundle, **kw):
    return SimpleNamespace(bundle=str(bundle), zipf_s=1.07, unknown_ratio=0.1, seed=7, **kw)


def test_population_reads_the_bundle_ids_and_skips_the_padding_row(tmp_path):
    np.save(tmp_path / "user_ids.npy", np.array([-1, 5, 9, 11], dtype=np.int64))
    np.save(tmp_path / "item_ids.npy", np.array([-1, 100, 200], dtype=np.int64))
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {
        "user_ids": {"path": "user_ids.npy"}, "item_ids": {"path": "item_ids.npy"}}}))
    pop = Population.from_options(_options(tmp_path))
    assert sorted(pop.users) == [5, 9, 11] and sorted(pop.items) == [100, 200]


def test_population_falls_back_to_movielens_ids(tmp_path):
    pop = Population.from_options(_options(tmp_path / "missing"))
    assert sorted(pop.users) == list(range(1, 944))


def test_traffic_is_zipf_like_with_a_share_of_unknown_users(tmp_path):
    pop = Population.from_options(_options(tmp_path / "missing"))
    rng = random.Random(1)
    draws = [pop.user_id(rng) for _ in range(20_000)]
    unknown = [u for u, known in draws if not known]
    assert 0.08 < len(unknown) / len(draws) < 0.12
    assert all(not u.isdigit() or int(u) >= 10_000_000 for u in unknown)
    counts = Counter(u for u, known in draws if known)
    top = pop.users[0]
    assert counts[str(top)] > 10 * max(1, counts[str(pop.users[-1])])  # head much hotter than tail
    assert len(counts) > 300  # but the long tail is visited
