"""common.stats.percentile: the nearest-rank definition both load generators report."""

from __future__ import annotations

import math

from common.stats import percentile


def test_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0


def test_unsorted_input_and_edge_cases():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert percentile((x for x in [5.0, 4.0]), 100) == 5.0  # any iterable
    assert math.isnan(percentile([], 50))


def test_always_an_observed_value():
    values = [1.0, 10.0]
    assert percentile(values, 50) == 1.0 and percentile(values, 51) == 10.0
